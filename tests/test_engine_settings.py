"""Every part reaches multi-task runs and MLM pretraining through the Engine, or is refused there by its
declared flag in one line, exit 2, nothing stored (issue 23, acceptance 2). Tiny random models, few steps."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import write_sentiment_csv

from transferlab.cli import main
from transferlab.pretrain import load_pretrain_spec, pretrain
from transferlab.recipes.freeze import FREEZERS
from transferlab.recipes.hooks import Event, Hook
from transferlab.recipes.stabilisers import STABILISERS
from transferlab.spec import load_spec
from transferlab.store import Store
from transferlab.train.engine import Engine
from transferlab.train.loop import run

pytestmark = pytest.mark.usefixtures("one_thread")
STABILISER_OPTIONS = {"mixout": {"p": 0.1}, "swa": {"start": 0.3}}
FREEZE = {"backbone_for_steps": {"steps": 2}, "gradual": {"options": {"every_steps": 2}}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("settings")
    a = write_sentiment_csv(root / "a", n_train=32, n_dev=16, seed=0)
    b = write_sentiment_csv(root / "b", n_train=24, n_dev=16, seed=1)
    for split in ("train", "dev"):
        (b / f"{split}.tsv").write_text((b / f"{split}.csv").read_text().replace(",", "\t"))
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(r.rsplit(",", 1)[0] for r in (a / "train.csv").read_text().splitlines()[1:]) + "\n")
    return {"a": a, "b": b, "corpus": corpus, "root": root}


def mt_spec(world, **over) -> dict:
    d = {"name": "mt", "model": {"name": "tiny-bert", "max_length": 16, "init": "random"}, "head": {"name": "cls"},
         "multitask": {"tasks": [{"name": "csv", "path": str(world["a"])}, {"name": "tsv", "path": str(world["b"])}],
                       "sampler": "round_robin"},
         "optim": {"lr": 3e-3}, "train": {"max_steps": 6, "batch_size": 8, "num_evals": 3, "log_every": 2,
                                           "device": "cpu", "save_model": False}}
    return {**d, **over}


def pt_spec(world, out, **over) -> dict:
    d = {"name": "pt", "model": {"name": "tiny-bert", "max_length": 16},
         "corpus": {"files": [str(world["corpus"])], "heldout": 0.25},
         "train": {"max_steps": 6, "batch_size": 8, "num_evals": 1, "log_every": 2, "device": "cpu"},
         "optim": {"lr": 3e-3}, "out": str(out)}
    return {**d, **over}


class Spy(Hook):
    """Records every event it receives."""

    def __init__(self):
        self.seen: set[str] = set()

    def __getattribute__(self, name):
        if name.startswith("on_") and name != "on_loss":
            object.__getattribute__(self, "seen").add(name)
        return object.__getattribute__(self, name)

    def on_log(self, step, metrics):
        pass

    def on_loss(self, batch, labels, logits, loss):
        self.seen.add("on_loss")
        return loss


@pytest.fixture
def handled(monkeypatch):
    """(event, hook class) pairs the engine ran a handler for."""
    pairs: set[tuple[str, str]] = set()
    real = Engine.run_event

    def spy(self, event, *args):
        pairs.update((event.name, type(h).__name__) for h in self.hooks if hasattr(h, event.value))
        return real(self, event, *args)

    monkeypatch.setattr(Engine, "run_event", spy)
    return pairs


def refused(capsys, argv: list[str], needle: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def run_mt(world, tmp_path, d, hooks=()):
    store = Store(tmp_path / "mt.db")
    return run(load_spec(d), store, progress=False, hooks=hooks), store


def run_pt(d, hooks=()) -> dict:
    return pretrain(load_pretrain_spec(d), progress=False, hooks=hooks)


def own_events(cls) -> set[str]:
    return {e.name for e in Event if e is not Event.LOSS and any(e.value in vars(c) for c in cls.__mro__[:-2])}


@pytest.mark.parametrize("name", STABILISERS.primary_names())
def test_each_stabiliser_in_multitask_and_pretraining(world, tmp_path, capsys, handled, name):
    cls, caps = STABILISERS.get(name), STABILISERS.caps(name)
    entry = [{"name": name, "options": STABILISER_OPTIONS.get(name, {})}]
    result, _ = run_mt(world, tmp_path, mt_spec(world, stabilisers=entry))
    assert result.status == "finished" and result.summary.tasks and result.summary.task_steps == {"csv": 3, "tsv": 3}
    assert {(e, cls.__name__) for e in own_events(cls)} <= handled  # its hooks ran in the multi-task run
    handled.clear()
    out = tmp_path / "pt"
    d = pt_spec(world, out, stabilisers=entry)
    if "mlm" in caps.problems:
        summary = run_pt(d)
        assert summary["steps"] == 6 and summary["status"] == "finished"
        assert {(e, cls.__name__) for e in own_events(cls)} <= handled
    else:  # refused by its declared problems, before the folder exists
        path = tmp_path / "pt.yaml"
        path.write_text(yaml.safe_dump(d))
        refused(capsys, ["pretrain", str(path), "--quiet"], f"stabilisers: {name} does not support mlm")
        assert not out.exists()


@pytest.mark.parametrize("name", FREEZERS.primary_names())
def test_each_freezer_in_multitask_and_pretraining(world, tmp_path, capsys, name):
    caps = FREEZERS.caps(name)
    freeze = {"name": name, **FREEZE.get(name, {})}
    d = mt_spec(world, freeze=freeze)
    if caps.multitask:
        result, _ = run_mt(world, tmp_path, d)
        s = result.summary
        start = s.n_trainable_start if s.n_trainable_start is not None else s.n_trainable  # unfrozen later
        assert result.status == "finished" and (start < s.n_params) == (name != "none")
    else:
        path = tmp_path / "mt.yaml"
        path.write_text(yaml.safe_dump(d))
        refused(capsys, ["run", str(path), "--store", str(tmp_path / "r.db"), "--quiet"], "does not declare")
        assert Store(tmp_path / "r.db").runs() == []
    out = tmp_path / "pt"
    d = pt_spec(world, out, freeze=freeze)
    if caps.pretrain:
        summary = run_pt(d)
        assert summary["steps"] == 6 and summary["heldout_after"] < summary["heldout_before"]
    else:
        path = tmp_path / "pt.yaml"
        path.write_text(yaml.safe_dump(d))
        refused(capsys, ["pretrain", str(path), "--quiet"], f"freeze.name: policy {name!r} does not declare 'pretrain'")
        assert not out.exists()


def test_every_hook_event_reaches_multitask_and_pretraining(world, tmp_path):
    spy = Spy()
    run_mt(world, tmp_path, mt_spec(world), hooks=(spy,))
    assert spy.seen == {e.value for e in Event}
    spy = Spy()
    run_pt(pt_spec(world, tmp_path / "pt"), hooks=(spy,))
    assert spy.seen == {e.value for e in Event}


def test_patience_stops_multitask_and_pretraining(world, tmp_path, monkeypatch):
    """A vanishing lr: the dev metric never improves, so patience 1 stops at the second evaluation (step 4 of 6)."""
    train = {**mt_spec(world)["train"], "early_stopping_patience": 1}
    result, _ = run_mt(world, tmp_path, mt_spec(world, optim={"lr": 1e-12}, train=train))
    assert result.status == "finished" and result.steps == 4
    from transferlab.pretrain.objective import HeldoutEvaluator

    monkeypatch.setattr(HeldoutEvaluator, "evaluate", lambda self, model, split, keep=None: {"loss": 1.0})
    summary = run_pt(pt_spec(world, tmp_path / "pt",
                             train={**pt_spec(world, None)["train"], "early_stopping_patience": 1, "num_evals": 2}))
    assert summary["steps"] == 4 and len(summary["heldout"]) == 3  # before, step 2, step 4 (a flat held-out loss)


def test_checkpoint_layers_gives_the_same_numbers_in_multitask_and_pretraining(world, tmp_path):
    plain, store = run_mt(world, tmp_path, mt_spec(world))
    train = {**mt_spec(world)["train"], "checkpoint_layers": True}
    ckpt, store2 = run_mt(world, tmp_path / "c", mt_spec(world, name="mt-ckpt", train=train))
    assert [r[1] for r in store.curve(plain.uid)] == [r[1] for r in store2.curve(ckpt.uid)]
    assert plain.dev == ckpt.dev
    a = run_pt(pt_spec(world, tmp_path / "p1"))
    b = run_pt(pt_spec(world, tmp_path / "p2", train={**pt_spec(world, None)["train"], "checkpoint_layers": True}))
    assert a["curve"] == b["curve"] and a["heldout"] == b["heldout"]


@pytest.mark.slow
def test_compile_in_multitask_and_pretraining(world, tmp_path):
    train = {**mt_spec(world)["train"], "compile": True}
    result, _ = run_mt(world, tmp_path, mt_spec(world, train=train))
    assert result.status == "finished" and result.summary.engine.compiled
    summary = run_pt(pt_spec(world, tmp_path / "pt", train={**pt_spec(world, None)["train"], "compile": True}))
    assert summary["status"] == "finished"
    assert json.loads((tmp_path / "pt" / "pretrain.json").read_text())["summary"]["steps"] == 6


def test_multitask_refusals_are_one_line_and_store_nothing(world, tmp_path, capsys):
    path = tmp_path / "mt.yaml"
    path.write_text(yaml.safe_dump(mt_spec(world, train={**mt_spec(world)["train"], "grad_accum": 2})))
    refused(capsys, ["run", str(path), "--store", str(tmp_path / "r.db"), "--quiet"], "train.grad_accum")
    assert Store(tmp_path / "r.db").runs() == []


def test_multitask_applies_the_init_section(world, tmp_path):
    """spec.init reaches a multi-task run as it reaches a single one (it used to be silently skipped)."""
    result, _ = run_mt(world, tmp_path, mt_spec(world, init={"reinit_layers": 1}))
    assert result.status == "finished" and result.summary.transfer["init_values"] > 0
