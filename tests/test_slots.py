"""Slots: runs that differ in more than their seed (arms) trained as one stacked group (issue 24).

Each slot must store what its run stores alone (float64, CPU, rel. 1e-8): curve (loss, LR, gradient norm),
evaluations, summary and final weights, for every kind of per-slot difference the parts declare
(train/support.py: slot_difference; recipes/slots.py: the per-slot optimizer and schedule).
"""

from __future__ import annotations

import pytest
from conftest import tiny_spec_dict, write_sentiment_csv
from test_parallel import assert_same_runs

from transferlab.spec import load_spec
from transferlab.store import Store
from transferlab.train.loop import Unsupported, run, run_seeds
from transferlab.train.support import per_slot_optim, slot_difference, stack_key, unsupported

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_sentiment_csv(tmp_path_factory.mktemp("slots") / "toy", n_train=40, n_dev=16)


def slot_specs(data, slots: list[tuple[int, dict]], **common):
    d = tiny_spec_dict(data, epochs=1, batch_size=16, num_evals=2, log_every=1)
    d["model"].update(init="random", dropout=0.0, max_length=16)
    d["head"]["dropout"] = 0.0
    d["train"].update(max_steps=4, device="cpu")
    return [load_spec(d, {**common, **over, "seed": seed, "name": f"slot{i}"}) for i, (seed, over) in enumerate(slots)]


def check_slots(data, tmp_path, slots, engine="general", **common):
    runs = slot_specs(data, slots, **{"train.engine": engine, **common})
    assert unsupported(runs) is None, unsupported(runs)
    seq, par = Store(tmp_path / "seq.db"), Store(tmp_path / "par.db")
    for spec in runs:
        run(spec, seq, progress=False)
    results = run_seeds(runs, par, progress=False)
    assert all(r.status == "finished" for r in results)
    assert_same_runs(seq, par, [r.run_id for r in results])
    assert len({r.run_id for r in results}) == len(runs)
    return seq, par, results


HYPER = [
    (0, {"optim.lr": 3e-3}),
    (0, {"optim.lr": 1e-2, "optim.weight_decay": 0.0}),
    (1, {"optim.name": "bertadam", "optim.head_lr": 5e-2, "optim.layer_decay": 0.7}),
    (2, {"schedule.name": "cosine", "schedule.warmup_steps": 2, "optim.weight_decay": 0.1}),
    (3, {"schedule.name": "constant", "schedule.warmup_ratio": 0.0, "optim.name": "bertadam"}),
]


@pytest.mark.parametrize("engine", ["general", "auto"])
def test_per_slot_hyper_parameters_equal_their_runs_alone(engine, data, tmp_path, float64):
    """lr, head LR, layer decay, weight decay (0 beside > 0), warmup and schedule, BERTAdam beside AdamW."""
    runs = slot_specs(data, HYPER)
    assert per_slot_optim(runs) and len({stack_key(s) for s in runs}) == 1
    _, par, results = check_slots(data, tmp_path, HYPER, engine)
    lrs = [[p[2] for p in par.curve(r.uid)] for r in results]
    assert len({tuple(x) for x in lrs}) == len(results)  # each slot logged its own LRs
    assert {r.summary.engine.kind for r in results} == {"stacked" if engine == "general" else "fused"}  # auto: the fused encoder


def test_adabelief_slots_with_their_own_lrs(data, tmp_path, float64):
    slots = [(0, {"optim.lr": 1e-3}), (1, {"optim.lr": 1e-2, "optim.weight_decay": 0.0})]
    check_slots(data, tmp_path, slots, **{"optim.name": "adabelief", "optim.eps": 1e-16})


def test_a_slot_leaving_early_keeps_the_others_exact(data, tmp_path, float64):
    """Per-slot early stopping with per-slot LRs and freezing: a slot leaves, the others' LR columns, masks and
    step counts stay theirs."""
    slots = [(0, {"optim.lr": 1e-3}), (1, {"optim.lr": 3e-2, "freeze.name": "backbone_for_steps", "freeze.steps": 3}),
             (2, {"optim.name": "bertadam", "optim.lr": 1e-2})]
    over = {"train.max_steps": 10, "train.num_evals": 10, "train.early_stopping_patience": 1,
            "task.problem": "regression"}
    _, _, results = check_slots(data, tmp_path, slots, **over)
    assert len({r.steps for r in results}) >= 2


FREEZING = [
    (0, {}),
    (1, {"freeze.name": "backbone_for_steps", "freeze.steps": 2}),
    (2, {"freeze.name": "gradual", "freeze.options": {"every_steps": 1}, "optim.name": "bertadam"}),
    (0, {"freeze.name": "bitfit", "optim.lr": 1e-2}),
    (3, {"freeze.name": "fpt", "optim.weight_decay": 0.0}),
]


@pytest.mark.parametrize("engine", ["general", "auto"])
def test_per_slot_freezing_equals_each_runs_own_policy(engine, data, tmp_path, float64):
    """Frozen for N steps and gradual unfreezing beside full fine-tuning (and BitFit, FPT): per-slot gradient
    masks; each slot's trainable counts, gradient norms, moments and steps are its own run's."""
    runs = slot_specs(data, FREEZING)
    assert len({stack_key(s) for s in runs}) == 1
    _, par, results = check_slots(data, tmp_path, FREEZING, engine, **{"optim.layer_decay": 0.8})
    counts = [par.get(r.uid).summary["n_trainable"] for r in results]
    assert len(set(counts)) >= 3  # the policies train different sets
    assert par.get(results[1].uid).summary.get("n_trainable_start") < counts[1]  # unfrozen at step 2


def test_refusals_name_the_field_and_the_flag(data):
    def why(*slots, **common):
        return unsupported(slot_specs(data, list(slots), **common))

    assert "OptimCaps.slot_update" in why((0, {}), (1, {"optim.name": "adabelief"}))
    assert "freeze.name" in why((0, {}), (1, {"freeze.name": "lora"}))
    assert "FreezerCaps" in why((0, {}), (1, {"freeze.name": "lora"}))
    assert why((0, {}), (1, {"head.name": "mean"})).startswith("head.name")
    assert why((0, {}), (1, {"model.dropout": 0.1})).startswith("model.dropout")
    assert "train.dropout_rng: run" in why((0, {}), (1, {"head.dropout": 0.1}))
    assert why((0, {}), (1, {"model.dropout": 0.1, "head.dropout": 0.2}), **{"train.dropout_rng": "run"}) is None
    assert "'sgd' does not declare 'per_slot'" in why((0, {}), (1, {"optim.lr": 1e-2}), **{"optim.name": "sgd"})
    assert "share a seed" in why((0, {}), (0, {}))
    assert slot_difference(slot_specs(data, [(0, {}), (0, {"optim.lr": 1e-2})])) is None
    with pytest.raises(Unsupported, match="head.name"):
        run_seeds(slot_specs(data, [(0, {}), (1, {"head.name": "mean"})]), Store(":memory:"))


INITS = [
    (0, {}),
    (0, {"init.rules": [{"select": {"layers": "all"}, "scheme": "xavier_uniform"}]}),
    (1, {"init.rules": [{"select": {"layers": "all"}, "scheme": "normal", "options": {"std": 0.02}}]}),
    (2, {"init.reinit_layers": 1, "optim.lr": 1e-2}),
    (3, {"transplant": [{"source": "tiny-roberta", "layers": "1"}]}),
    (4, {"model.init": "pretrained"}),  # the tiny family's fixed checkpoint beside random initialisations
]


def test_per_slot_initial_weights_equal_their_runs_alone(data, tmp_path, float64):
    """Init schemes, re-init of the top layer and a transplant beside each other (the seed-000 design's arms):
    each slot's model is built as its run builds it alone, then stacked."""
    runs = slot_specs(data, INITS)
    assert len({stack_key(s) for s in runs}) == 1
    seq, par, results = check_slots(data, tmp_path, INITS)
    transfers = [par.get(r.uid).summary["transfer"] for r in results]
    assert transfers[0] != transfers[1] and transfers[4].get("transplant")  # each slot kept its own report
    inits = [par.get(r.uid).spec["model"]["init"] for r in results]
    assert inits == ["random"] * 5 + ["pretrained"]


# ---------------------------------------------------------------------------------------------- grouping
def _study(data, tmp_path, arms: dict, seeds=range(10), **extra) -> str:
    import yaml

    base = tiny_spec_dict(data, epochs=1, batch_size=16, num_evals=2, log_every=1, save_model=False)
    base["model"].update(init="random", dropout=0.0, max_length=16)
    base["head"]["dropout"] = 0.0
    base["train"].update(max_steps=3, device="cpu")
    d = {"study": "slots", "base": base, "arms": arms, "baseline": next(iter(arms)), "seeds": list(seeds), **extra}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(d))
    return str(path)


SEED_000 = {  # the seed-000 design's arms: pretrained weights, Xavier, normal, a transplant
    "pretrained": {"model.init": "pretrained"},
    "xavier": {"init.rules": [{"select": {"layers": "all"}, "scheme": "xavier_uniform"}]},
    "normal": {"init.rules": [{"select": {"layers": "all"}, "scheme": "normal", "options": {"std": 0.02}}]},
    "transplant": {"transplant": [{"source": "tiny-roberta", "layers": "all"}]},
}


def _dry(capsys, path, *args) -> list[list[str]]:
    from transferlab.cli import main

    assert main(["run", path, "--dry-run", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:2] == ["phase", "task"])
    return [line.split(None, 7) for line in lines[head + 2:] if line.split()[:1] in (["main"], ["lr"])]


def test_the_seed_000_design_dry_runs_as_one_group(data, tmp_path, capsys):
    path = _study(data, tmp_path, SEED_000)
    rows = _dry(capsys, path, "--seed-parallel", "on", "--max-slots", "40")
    assert len(rows) == 40 and {r[7] for r in rows} == {"1: 40 slots, fused"}
    assert [r[3] for r in rows[:8]] == ["0"] * 4 + ["1"] * 4  # seed-major: every arm of seed 0 first
    rows = _dry(capsys, path, "--seed-parallel", "on", "--max-slots", "16")
    assert [r[7] for r in rows] == ["1: 16 slots, fused"] * 16 + ["2: 16 slots, fused"] * 16 + ["3: 8 slots, fused"] * 8
    rows = _dry(capsys, path, "--seed-parallel", "on")  # the default on the CPU: MAX_SEEDS (20) a group
    assert {r[7] for r in rows} == {"1: 20 slots, fused", "2: 20 slots, fused"}


def test_the_lr_search_phase_is_one_group(data, tmp_path, capsys):
    arms = {"adamw": {"optim.name": "adamw"}, "bertadam": {"optim.name": "bertadam"}}
    path = _study(data, tmp_path, arms, seeds=range(2), lr_search={"grid": [1e-3, 3e-3, 1e-2], "seeds": [0, 1]})
    rows = _dry(capsys, path, "--seed-parallel", "on")
    search = [r for r in rows if r[0] == "lr"]
    assert len(search) == 12 and {r[7] for r in search} == {"1: 12 slots, fused"}


def test_lora_beside_full_fine_tuning_is_refused_under_on_and_split_under_auto(data, tmp_path, capsys, caplog,
                                                                              monkeypatch):
    from transferlab.cli import main
    from transferlab.study import seed_groups

    path = _study(data, tmp_path, {"full": {"freeze.name": "none"}, "lora": {"freeze.name": "lora"}}, seeds=range(2))
    db = tmp_path / "s.db"
    assert main(["run", path, "--store", str(db), "--seed-parallel", "on"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "freeze.name" in err[0] and "FreezerCaps" in err[0], err
    assert not db.is_file() or Store(db).runs() == []
    monkeypatch.setattr(seed_groups, "_cuda_run", lambda spec: True)  # auto stacks where the runs train on CUDA
    with caplog.at_level("WARNING"):
        rows = _dry(capsys, path, "--seed-parallel", "auto")
    assert "freeze.name" in caplog.text and "FreezerCaps" in caplog.text  # the logged split names field and flag
    full = [r[7] for r in rows if r[2] == "full"]
    assert full == ["1: 2 slots, fused"] * 2 and all(r[7].endswith("1 run, single") for r in rows if r[2] == "lora")


def test_arms_of_different_structure_form_their_own_groups_under_on(data, tmp_path, capsys):
    """A head or a backbone no flag could share: separate groups, no refusal (AdaBelief beside Adam is refused)."""
    arms = {"cls": {"head.name": "cls"}, "mean": {"head.name": "mean", "optim.lr": 1e-2},
            "roberta": {"model.name": "tiny-roberta"}}
    rows = _dry(capsys, _study(data, tmp_path, arms, seeds=range(3)), "--seed-parallel", "on")
    assert {r[2]: r[7] for r in rows} == {"cls": "1: 3 slots, fused", "mean": "2: 3 slots, fused",
                                          "roberta": "3: 3 slots, fused"}
    from transferlab.cli import main

    path = _study(data, tmp_path, {"adamw": {"optim.name": "adamw"}, "belief": {"optim.name": "adabelief"}})
    assert main(["run", path, "--dry-run", "--seed-parallel", "on"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.name" in err[0] and "OptimCaps.slot_update" in err[0], err


@pytest.mark.parametrize("value", ["0", "-3"])
def test_max_slots_below_one_is_one_line_exit_2_before_any_row(value, data, tmp_path, capsys):
    from transferlab.cli import main

    path = _study(data, tmp_path, {"a": {"optim.lr": 1e-3}}, seeds=range(2))
    db = tmp_path / "s.db"
    assert main(["run", path, "--store", str(db), "--seed-parallel", "on", "--max-slots", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-slots" in err[0], err
    assert not db.is_file() or (Store(db).runs() == [] and Store(db).studies() == [])


def test_max_slots_beyond_memory_is_one_line_exit_2(data, tmp_path, capsys, monkeypatch):
    from transferlab.cli import main
    from transferlab.train import memory

    path = _study(data, tmp_path, {"a": {"optim.lr": 1e-3}}, seeds=range(4))
    per = memory.slot_bytes(slot_specs(data, [(0, {})])[0], "cuda")
    assert per and per > 16 * 4e5  # tiny-bert: weights, gradients, moments and activations
    monkeypatch.setattr(memory, "device_memory", lambda spec: ("cuda", int(2.5 * per / memory.MARGIN)))
    db = tmp_path / "s.db"
    assert main(["run", path, "--store", str(db), "--seed-parallel", "on", "--max-slots", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-slots: 3 slots" in err[0] and "at most 2" in err[0], err
    assert not db.is_file() or Store(db).runs() == []
    rows = _dry(capsys, path, "--seed-parallel", "on")  # the default: what fits
    assert [r[7] for r in rows] == ["1: 2 slots, fused"] * 2 + ["2: 2 slots, fused"] * 2


def test_a_study_killed_mid_group_reruns_only_its_unfinished_slots(data, tmp_path, monkeypatch, float64):
    """Ctrl-C after two of six slots ended: those two are stored as they left the group; the rerun trains the
    other four (one group) and every run equals the uninterrupted study's, each finished once."""
    from test_parallel import close

    from transferlab.study.runner import run_study
    from transferlab.study.spec import load_study
    from transferlab.train.engine import Engine

    arms = {"lo": {"optim.lr": 1e-3}, "bert": {"optim.name": "bertadam", "schedule.name": "cosine"}}
    study = load_study(_study(data, tmp_path, arms, seeds=range(3)))
    reference = Store(tmp_path / "ref.db")
    run_study(study, reference, seed_parallel="off", out=lambda line: None)
    store = Store(tmp_path / "s.db")
    record, calls = Engine._record, []

    def killed_after_two(self, seed, summary):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(seed.run_id)
        record(self, seed, summary)

    monkeypatch.setattr(Engine, "_record", killed_after_two)
    first = run_study(study, store, seed_parallel="on", out=lambda line: None)
    assert first.interrupted and {r.run_id for r in store.runs() if r.status == "finished"} == set(calls)
    monkeypatch.setattr(Engine, "_record", record)
    again = run_study(study, store, seed_parallel="on", out=lambda line: None)
    assert (again.executed, again.skipped, again.failed) == (4, 2, 0)
    for ref in reference.runs():
        rows = store.runs(run_id=ref.run_id)
        done = [r for r in rows if r.status == "finished"]
        assert len(done) == 1, ref.run_id  # each slot finished once
        assert len(rows) == (1 if ref.run_id in calls else 2)  # the stored slots were never trained again
        assert done[0].provenance["engine"]["seeds"] == (6 if ref.run_id in calls else 4)
        close(reference.curve(ref.uid), store.curve(done[0].uid), "curve")
        close(reference.evals(ref.uid), store.evals(done[0].uid), "evals")


@pytest.mark.slow  # about 50 s (spawned workers, groups long enough to kill mid-way); the inline kill test is fast
def test_a_worker_killed_mid_group_reruns_its_slots_once_equal_to_an_uninterrupted_study(data, tmp_path):
    """The processes executor: one worker, groups of 3 slots; the worker is SIGKILLed while it trains the second
    group. The first group's runs stay stored; the rerun trains only the killed group's slots (again as one group)
    and every run equals the uninterrupted study's (same executor, same groups: bit for bit)."""
    import multiprocessing
    import os
    import signal
    import threading
    from pathlib import Path

    import yaml

    from transferlab.study.runner import run_study
    from transferlab.study.spec import load_study

    arms = {"lo": {"optim.lr": 1e-3}, "bert": {"optim.name": "bertadam", "schedule.name": "cosine"}}
    path = Path(_study(data, tmp_path, arms, seeds=range(3)))
    d = yaml.safe_load(path.read_text())
    d["base"]["train"].update(epochs=100, max_steps=250)  # the second group trains for seconds: killed mid-way
    path.write_text(yaml.safe_dump(d))
    study = load_study(str(path))
    options = {"executor": "processes", "workers": 1, "threads": 1, "seed_parallel": "on", "max_slots": 3}
    reference = Store(tmp_path / "ref.db")
    assert run_study(study, reference, out=lambda line: None, **options).executed == 6

    store, ended = Store(tmp_path / "s.db"), []

    def kill(children):
        for child in children:
            os.kill(child.pid, signal.SIGKILL)

    def kill_after_the_first_group(line: str) -> None:
        if "finished" in line:
            ended.append(line)
            if len(ended) == 3:  # the first group's slots are in; the driver hands the worker the second group
                # after this line (the worker is idle now): kill it half a second into that group's training
                threading.Timer(0.5, kill, [multiprocessing.active_children()]).start()

    first = run_study(study, store, out=kill_after_the_first_group, **options)
    assert (first.executed, first.failed) == (6, 3), (first, ended)  # executed counts the failed runs
    finished = {r.run_id for r in store.runs() if r.status == "finished"}
    assert len(finished) == 3
    again = run_study(study, store, out=lambda line: None, **options)
    assert (again.executed, again.skipped, again.failed) == (3, 3, 0)
    for ref in reference.runs():
        done = [r for r in store.runs(run_id=ref.run_id) if r.status == "finished"]
        assert len(done) == 1, ref.run_id  # each slot finished once, the first group's never retrained
        assert done[0].provenance["engine"]["seeds"] == 3  # trained in a group of three, as uninterrupted
        assert store.curve(done[0].uid) == reference.curve(ref.uid), ref.run_id
        assert store.evals(done[0].uid) == reference.evals(ref.uid), ref.run_id


def test_bench_has_a_mixed_slots_row(capsys):
    from transferlab.bench import SLOT_ARMS, bench

    result = bench("tiny-bert", batch=4, seq=16, steps=1, warmup=1, seeds=(1, 3), rows=("slots", "slots-dropout"),
                   device="cpu", compile="off", out=lambda line: None)
    rows = result["rows"]  # S = 1 is not a group of slots
    assert [r["name"] for r in rows] == ["slots S=3", "slots-dropout S=3"] and not result["failed"]
    assert all(r["seeds"] == 3 and r["samples_s"] > 0 for r in rows)
    assert len(SLOT_ARMS) >= 3


DROPOUT = [
    (0, {"model.dropout": 0.0, "head.dropout": 0.0}),
    (1, {"model.dropout": 0.1, "head.dropout": 0.1}),
    (2, {"model.dropout": 0.3, "head.dropout": 0.0, "optim.lr": 1e-2}),
]


def test_per_slot_dropout_draws_what_each_run_draws_alone(data, tmp_path, float64):
    """train.dropout_rng: run: each slot's dropout masks come from its run's own stream at its own probability
    (dropout 0 beside 0.1 beside 0.3, in the backbone, the attention probabilities and the head), so the stacked
    runs store what they store alone."""
    runs = slot_specs(data, DROPOUT, **{"train.dropout_rng": "run"})
    assert len({stack_key(s) for s in runs}) == 1
    seq, par, results = check_slots(data, tmp_path, DROPOUT, **{"train.dropout_rng": "run"})
    losses = [[p[1] for p in par.curve(r.uid)] for r in results]
    assert len({tuple(x) for x in losses}) == 3
    assert {r.summary.engine.kind for r in results} == {"stacked"}
    assert [par.get(r.uid).provenance["engine"]["seeds"] for r in results] == [3, 3, 3]  # one group of three


def test_dropout_arms_stack_under_the_stream_flag_and_are_refused_without_it(data, tmp_path, capsys):
    from transferlab.cli import main

    arms = {"none": {"model.dropout": 0.0}, "bert": {"model.dropout": 0.1, "head.dropout": 0.1}}
    path = _study(data, tmp_path, arms, seeds=range(3))
    db = tmp_path / "s.db"
    assert main(["run", path, "--store", str(db), "--seed-parallel", "on"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.dropout" in err[0] and "train.dropout_rng: run" in err[0], err
    assert not db.is_file() or Store(db).runs() == []
    path = _study(data, tmp_path, {k: {**v, "train.dropout_rng": "run"} for k, v in arms.items()}, seeds=range(3))
    rows = _dry(capsys, path, "--seed-parallel", "on")
    assert len(rows) == 6 and {r[7] for r in rows} == {"1: 6 slots, stacked"}  # the fused encoder draws one stream
