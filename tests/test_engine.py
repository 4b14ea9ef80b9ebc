"""The one engine (train/engine.py): one loop for S >= 1 seeds, capabilities instead of name lists,
studies that interleave seeds, per-seed durations (issue 12)."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest
import torch
from conftest import sigkill_when, tiny_spec_dict, tiny_study_dict, write_sentiment_csv

from transferlab.recipes.hooks import Hook
from transferlab.recipes.optim import OPTIMIZERS
from transferlab.spec import load_spec
from transferlab.store import Store
from transferlab.train.loop import Unsupported, run, run_seeds
from transferlab.train.support import unsupported

TRAIN = Path(__file__).resolve().parents[1] / "src" / "transferlab" / "train"
pytestmark = pytest.mark.usefixtures("one_thread")


def test_store_lifecycle_lives_in_one_module_and_loop_functions_are_short():
    """Acceptance 1 (#12, #23): start/finish of a run row are written in train/engine.py only; no function
    of train/ is longer than 80 lines."""
    writers = sorted(p.name for p in TRAIN.glob("*.py")
                     if "start_run(" in p.read_text() or "finish_run(" in p.read_text())
    assert writers == ["engine.py"]
    long = []
    for path in TRAIN.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    long.append(f"{path.name}:{node.name} {length}")
    assert long == []


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_sentiment_csv(tmp_path_factory.mktemp("eng") / "toy", n_train=48, n_dev=16)


def seeds_of(data, seeds=(0, 1, 2), **over):
    d = tiny_spec_dict(data, epochs=1, batch_size=8, num_evals=2, log_every=1, save_model=False)
    d["model"].update(init="random", max_length=16)
    d["train"]["device"] = "cpu"
    return [load_spec(d, {**over, "seed": s}) for s in seeds]


def test_a_non_elementwise_optimizer_is_refused_for_stacked_runs(data, tmp_path):
    """Acceptance 4: the refusal names the flag, never a list of names."""

    @OPTIMIZERS.register("toy_lbfgs_like")  # no elementwise flag: its update mixes elements
    def toy(groups, spec, device_type="cpu"):
        return torch.optim.SGD(groups, lr=spec.lr)

    try:
        specs = seeds_of(data, (0, 1), **{"optim.name": "toy_lbfgs_like"})
        why = unsupported(specs)
        assert "elementwise" in why and "toy_lbfgs_like" in why and "\n" not in why
        with pytest.raises(Unsupported, match="elementwise"):
            run_seeds(specs, Store(tmp_path / "s.db"))
        assert Store(tmp_path / "s.db").runs() == []  # refused before anything was stored
        assert run(specs[0], Store(tmp_path / "s.db"), progress=False).status == "finished"  # alone it runs
    finally:
        for table in (OPTIMIZERS._items, OPTIMIZERS._caps, OPTIMIZERS._canonical):
            table.pop("toy_lbfgs_like", None)


def test_hooks_declare_seed_stacked(data, tmp_path):
    class Counter(Hook):
        def __init__(self):
            self.steps = 0

        def on_step_start(self, step):
            self.steps += 1

    class StackedCounter(Counter):
        seed_stacked = True

    specs = seeds_of(data, (0, 1))
    assert "Counter does not declare 'seed_stacked'" in unsupported(specs, [Counter()])
    hook = StackedCounter()
    results = run_seeds(specs, Store(tmp_path / "s.db"), hooks=[hook], progress=False)
    assert [r.status for r in results] == ["finished", "finished"] and hook.steps == results[0].steps


def test_per_seed_durations_sum_to_the_group_wall_time(data, tmp_path):
    """Acceptance 5: each seed is charged its share of the group's time, so a study's ETA is right."""
    store = Store(tmp_path / "s.db")
    start = time.time()
    results = run_seeds(seeds_of(data, (0, 1, 2)), store, progress=False)
    wall = time.time() - start
    stored = [store.get(r.uid).duration_s for r in results]
    assert all(d > 0 for d in stored)
    assert 0.8 * wall <= sum(stored) <= wall * 1.01, (stored, wall)
    assert all(r.summary.engine.kind in ("stacked", "fused") and r.summary.engine.seeds == 3 for r in results)
    assert all(r.summary.samples_per_s and r.summary.samples_per_s > 0 for r in results)


def test_single_run_records_its_engine(data, tmp_path):
    store = Store(tmp_path / "s.db")
    result = run(seeds_of(data, (0,))[0], store, progress=False)
    row = store.get(result.uid)
    assert row.summary.engine.kind == "single" and row.summary.engine.seeds == 1
    assert row.summary.engine.device == "cpu" and row.provenance["engine"]["kind"] == "single"


def _study(tmp_path, seeds=range(4)):
    from transferlab.study.spec import load_study

    return load_study(tiny_study_dict(write_sentiment_csv(tmp_path / "toy", n_train=32, n_dev=16), seeds=seeds))


@pytest.mark.parametrize("mode", ["off", "on"])
def test_dry_run_order_is_the_execution_order(tmp_path, monkeypatch, mode):
    """Acceptance 5: --dry-run lists the runs in the order they execute, seed groups included; groups
    are seed-major (here at most 2 slots a group: adamw and bertadam of seed 0, then of seed 1, ...)."""
    from transferlab.study import seed_groups
    from transferlab.study.runner import describe_plan, run_study

    monkeypatch.setattr(seed_groups, "MAX_SEEDS", 2)
    study = _study(tmp_path)
    planned = [row[5] for row in describe_plan(study, None, mode)]
    store = Store(tmp_path / f"{mode}.db")
    run_study(study, store, seed_parallel=mode, out=lambda line: None)
    executed = [r.run_id for r in sorted(store.runs(study=study.study), key=lambda r: r.created_at)]
    assert executed == planned and len(planned) == 8
    arms = [r.spec["optim"]["name"] for r in sorted(store.runs(study=study.study), key=lambda r: r.created_at)]
    assert arms[:4] == ["adamw", "bertadam"] * 2


def test_a_study_stopped_early_has_runs_of_every_arm(tmp_path):
    """Acceptance 5: 2 arms x 4 seeds, SIGKILL after 3 finished runs: both arms have runs."""
    import yaml

    d = tiny_study_dict(write_sentiment_csv(tmp_path / "toy", n_train=32, n_dev=16), seeds=range(4))
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(d))
    db = tmp_path / "s.db"

    def finished() -> bool:
        return db.is_file() and sum(r.status == "finished" for r in Store(db).runs()) >= 3

    sigkill_when(["run", str(path), "--store", str(db), "--threads", "1"], finished, 240,
                 "3 runs did not finish")
    done = [r for r in Store(db).runs() if r.status == "finished"]
    assert len(done) >= 3 and {r.spec["optim"]["name"] for r in done} == {"adamw", "bertadam"}


def test_seed_parallel_on_with_an_unsupported_part_is_one_line_exit_2(tmp_path, capsys):
    import yaml

    from transferlab.cli import main

    d = tiny_study_dict(write_sentiment_csv(tmp_path / "toy", n_train=32, n_dev=16), seeds=range(2))
    d["base"]["freeze"] = {"name": "lora"}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(d))
    assert main(["run", str(path), "--store", str(tmp_path / "s.db"), "--seed-parallel", "on"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lora" in err[0] and "seed_stacked" in err[0]
    assert not (tmp_path / "s.db").is_file() or Store(tmp_path / "s.db").runs() == []


def test_runs_lists_the_engine_device_and_speed(data, tmp_path, capsys):
    """Each run records which engine ran it; `transferlab runs` shows it."""
    import json

    from transferlab.cli import main

    store = Store(tmp_path / "s.db")
    run_seeds(seeds_of(data, (0, 1)), store, progress=False)
    run(seeds_of(data, (5,))[0], store, progress=False)
    capsys.readouterr()
    assert main(["runs", "--store", str(tmp_path / "s.db"), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["engine"] for r in rows) == ["fused x2", "fused x2", "single"]  # auto: BERT, cls, AdamW fuse
    assert {r["device"] for r in rows} == {"cpu"} and all(r["samples_s"] > 0 for r in rows)


def test_out_of_memory_names_the_ways_out(data, tmp_path, monkeypatch):
    """A run that runs out of device memory is stored failed with the settings that lower memory."""
    import torch

    from transferlab.train import compute

    def oom(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(compute.StackedTrainee, "backward", oom)
    store = Store(tmp_path / "s.db")
    with pytest.raises(torch.OutOfMemoryError):
        run_seeds(seeds_of(data, (0, 1)), store, progress=False)
    runs = store.runs()
    assert len(runs) == 2 and all(r.status == "failed" for r in runs)
    assert all("train.checkpoint_layers: true" in r.error and "2 seed(s) at batch" in r.error for r in runs)
