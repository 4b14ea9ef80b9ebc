"""Studies: spec checks, expansion, few-sample protocol, resume after SIGKILL, divergence,
degenerate runs, LR selection, the CLI, and TensorBoard/MLflow logging."""

import time

import numpy as np
import pytest
import torch
import yaml
from conftest import SHARED_DATA, needs_shared_data, sigkill_when, tiny_study_dict, write_sentiment_csv

from transferlab.cli import main
from transferlab.data.build import build_task
from transferlab.data.degenerate import is_degenerate
from transferlab.data.fewshot import balanced_indices
from transferlab.errors import DataError, SpecError, UserError
from transferlab.recipes.hooks import Hook
from transferlab.spec import TaskSpec, load_spec
from transferlab.store import Store
from transferlab.study.expand import expand, expand_lr_search
from transferlab.study.runner import run_study
from transferlab.study.spec import load_study


@pytest.fixture
def data(tmp_path):
    return write_sentiment_csv(tmp_path / "toy", n_train=64, n_dev=32)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


# ------------------------------------------------------------------ spec and expansion


def test_expansion_gives_stable_ids_in_seed_order(data):
    d = tiny_study_dict(data, seeds=[0, 1, 2])
    d["grid"] = {"train.max_steps": [None, 3], "head.dropout": [0.0, 0.1]}
    study = load_study(d)
    runs = expand(study)
    assert len(runs) == 2 * 2 * 2 * 3
    assert len({p.run_id for p in runs}) == len(runs)
    assert [p.run_id for p in runs] == [p.run_id for p in expand(load_study(d))]  # stable
    assert [p.seed for p in runs] == sorted(p.seed for p in runs)  # every cell's seed 0 first
    cells = {p.cell for p in runs}
    assert "bertadam max_steps=3 dropout=0.1" in cells and "adamw max_steps=none dropout=0" in cells
    p = next(p for p in runs if p.cell == "bertadam max_steps=3 dropout=0.1" and p.seed == 2)
    assert (p.spec.optim.name, p.spec.train.max_steps, p.spec.head.dropout, p.spec.seed) == ("bertadam", 3, 0.1, 2)
    assert p.spec.name == p.cell and p.run_id.endswith("-s2")
    # the same recipe keeps its run id whatever the cell is called
    same = [q for q in runs if q.spec.optim.name == "adamw" and q.spec.train.max_steps is None
            and q.spec.head.dropout == 0.0 and q.seed == 0]
    assert same[0].run_id == expand(load_study({**d, "study": "renamed"}))[0].run_id


def test_tasks_few_sample_sizes_and_seed_ranges(data):
    d = tiny_study_dict(data)
    d.update(seeds={"start": 3, "stop": 6}, tasks=["csv", {"name": "csv", "max_eval_samples": 16}],
             few_sample=[8, 16])
    study = load_study(d)
    assert study.seeds == [3, 4, 5]
    runs = expand(study)
    assert {p.task for p in runs} == {"csv#1@8", "csv#1@16", "csv#2@8", "csv#2@16"}
    assert {p.spec.task.few_sample for p in runs} == {8, 16}
    assert len(runs) == 2 * 2 * 2 * 3


@pytest.mark.parametrize("change, needle", [
    ({"grid": {"optim.lrr": [1, 2]}}, "grid: unknown field 'optim.lrr'; known fields of optim: name, lr"),
    ({"grid": {"bogus": [1]}}, "grid: unknown field 'bogus'; known fields of the run spec: name, seed"),
    ({"grid": {"optim.lr.x": [1]}}, "'optim.lr' is a value, not a section"),
    ({"grid": {"optim.lr": []}}, "grid.optim.lr: expected a non-empty list"),
    ({"grid": {"seed": [1, 2]}}, "seeds go in `seeds`"),
    ({"arms": {"a": {}, "b": {"optim.name": "sgd"}}}, "arms.a: the arm overrides nothing"),
    ({"arms": {"a": None}}, "arms.a: the arm overrides nothing"),
    ({"arms": {"a": {"optim": {"nme": "x"}}}}, "arms.a: unknown field 'optim.nme'"),
    ({"seeds": []}, "seeds: the seed list is empty"),
    ({"seeds": {"start": 4, "stop": 4}}, "seeds: the seed list is empty"),
    ({"seeds": [0, 0]}, "seeds: seeds repeat"),
    ({"seeds": "many"}, "seeds: expected a list of integer seeds"),
    ({"baseline": "nope"}, "baseline: 'nope' is not an arm"),
    ({"study": ""}, "study: a study needs a name"),
    ({"colour": 1}, "unknown key 'colour'"),
    ({"base": {"optim": {"lrr": 1}}}, "base: optim: unknown key 'lrr'"),
    ({"lr_search": {"grid": [1e-5], "seeds": []}}, "lr_search.seeds: the seed list is empty"),
    ({"lr_search": {"grid": []}}, "lr_search.grid: expected a non-empty list"),
    ({"lr_search": {"grid": [1e-5]}, "grid": {"optim.lr": [1e-5, 2e-5]}}, "chosen by lr_search"),
    ({"few_sample": [0]}, "few_sample: expected a non-empty list of sizes"),
])
def test_bad_study_specs_name_the_field(data, change, needle):
    with pytest.raises(SpecError) as err:
        load_study({**tiny_study_dict(data), **change})
    assert needle in str(err.value)


def test_identical_arms_are_refused(data):
    d = tiny_study_dict(data)
    d["arms"]["same"] = {"optim.name": "adamw"}
    with pytest.raises(SpecError, match="expand to the same run"):
        expand(load_study(d))


def test_store_of_a_newer_schema_is_refused(tmp_path):
    db = tmp_path / "s.db"
    store = Store(db)
    store._db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    store.close()
    with pytest.raises(UserError, match="newer transferlab .*schema 99"):
        Store(db)


# ------------------------------------------------------------------ few-sample protocol


def test_balanced_downsampling_is_seeded_and_balanced():
    labels = np.array([0] * 70 + [1] * 25 + [2] * 5)
    idx = balanced_indices(labels, 12, seed=1)
    assert len(idx) == 12 and len(set(idx)) == 12
    assert np.bincount(labels[idx]).tolist() == [4, 4, 4]
    idx = balanced_indices(labels, 40, seed=1)  # class 2 has 5: its share goes to the others
    assert sorted(np.bincount(labels[idx]).tolist()) == [5, 17, 18]
    assert (balanced_indices(labels, 30, 1) == balanced_indices(labels, 30, 1)).all()
    assert (balanced_indices(labels, 30, 1) != balanced_indices(labels, 30, 2)).any()


def test_few_sample_and_dev_halves_through_build_task(tmp_path):
    d = write_sentiment_csv(tmp_path / "toy", n_train=100, n_dev=41)
    spec = TaskSpec(name="csv", path=str(d), few_sample=20, split_dev=True)
    a, b = build_task(spec, seed=0), build_task(spec, seed=1)
    assert np.bincount(a.splits["train"].labels).tolist() == [10, 10]
    assert a.splits["train"].texts != b.splits["train"].texts  # the run seed draws the sample
    for task in (a, b):  # the halves do not depend on the run seed, are disjoint and cover dev
        val, test = task.splits["dev"], task.splits["test"]
        assert val.texts == a.splits["dev"].texts and test.texts == a.splits["test"].texts
        assert len(val) + len(test) == 41 and not set(val.texts) & set(test.texts)
        assert abs(np.bincount(val.labels) - np.bincount(test.labels)).max() <= 1  # per class
    with pytest.raises(DataError, match="few_sample: 500 exceeds the 100 training examples"):
        build_task(TaskSpec(name="csv", path=str(d), few_sample=500), seed=0)


@needs_shared_data
def test_few_sample_protocol_on_rte():
    spec = TaskSpec(name="rte", path=str(SHARED_DATA / "glue" / "RTE"), few_sample=1000, split_dev=True)
    task = build_task(spec, seed=3)
    assert np.bincount(task.splits["train"].labels).tolist() == [500, 500]
    assert len(task.splits["dev"]) + len(task.splits["test"]) == 277
    assert task.splits["test"].labelled


# ------------------------------------------------------------------ resume after SIGKILL


def test_sigkill_after_three_runs_then_resume_runs_the_other_seven(data, tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tiny_study_dict(data)))
    db = tmp_path / "s.db"
    sigkill_when(["run", str(path), "--store", str(db), "--threads", "1"],
                 lambda: db.exists() and sum(r.status == "finished" for r in Store(db).runs()) >= 3,
                 300, "the study did not get 3 runs done")
    killed_at = time.time()
    before = {r.run_id: r for r in Store(db).runs() if r.status == "finished"}
    assert 3 <= len(before) < 10
    assert main(["run", str(path), "--store", str(db)]) == 0
    store = Store(db)
    rows = store.runs()
    finished = [r for r in rows if r.status == "finished"]
    assert len({r.run_id for r in finished}) == 10 and len(finished) == 10  # no finished run twice
    for rid, old in before.items():  # the runs done before the kill were not repeated
        (row,) = store.runs(run_id=rid)
        assert (row.uid, row.created_at, row.finished_at) == (old.uid, old.created_at, old.finished_at)
    new = [r for r in finished if r.run_id not in before]
    assert len(new) == 10 - len(before) and all(r.created_at > killed_at for r in new)
    assert len(rows) - len(finished) <= 1  # at most the run in flight at the kill, left unfinished
    assert all(r.status == "unfinished" for r in rows if r.status != "finished")
    assert len(store.study_plan("tiny-study", "main")) == 10
    # a third run does nothing
    before_rows = len(rows)
    assert main(["run", str(path), "--store", str(db)]) == 0
    assert len(Store(db).runs()) == before_rows


# ------------------------------------------------------------------ divergence and degenerate runs


class PoisonAt:
    """Writes NaN into the head's weights before step ``at`` (0-based): the loss of step at+1 is NaN."""

    def __init__(self, at: int, value: float = float("nan")):
        self.at, self.value = at, value

    def on_train_start(self, model, optimizer, total):
        self.model = model

    def on_step_start(self, step):
        if step == self.at:
            with torch.no_grad():
                if np.isnan(self.value):
                    self.model.head.out.weight.fill_(self.value)
                else:
                    self.model.head.out.weight.mul_(self.value)


class ConstantHead:
    """Makes the head predict class 1 for every input."""

    def on_train_start(self, model, optimizer, total):
        with torch.no_grad():
            model.head.out.weight.zero_()
            model.head.out.bias.copy_(torch.tensor([-50.0, 50.0]))


def test_nan_run_is_stored_as_diverged_at_its_step_and_the_study_goes_on(data, tmp_path):
    d = tiny_study_dict(data, seeds=[0, 1], epochs=2)  # 8 steps a run
    study = load_study(d)
    store = Store(tmp_path / "s.db")
    lines = []
    hooks = lambda job: [PoisonAt(4)] if job.spec.optim.name == "bertadam" else []
    result = run_study(study, store, hooks=hooks, out=lines.append)
    assert result.executed == 4 and result.diverged == 2 and result.failed == 0
    for p in expand(study):
        (row,) = store.runs(run_id=p.run_id)
        if p.arm == "bertadam":
            assert row.status == "diverged" and row.error_step == 5, (row.status, row.error_step)
            assert "non-finite" in row.error and row.summary["steps"] == 5
        else:
            assert row.status == "finished" and row.summary["steps"] == 8
    assert any("diverged" in line for line in lines)
    # a rerun treats diverged runs as done
    assert run_study(study, store, out=lines.append).executed == 0


def test_loss_explosion_is_diverged(data, tmp_path):
    spec = load_spec(tiny_study_dict(data)["base"], {"train.divergence_factor": 5.0, "train.epochs": 2})
    from transferlab.train.loop import run

    result = run(spec, Store(tmp_path / "s.db"), progress=False, hooks=[PoisonAt(3, 1e4)])
    assert result.status == "diverged"
    assert result.summary["error_step"] == 4 and "loss exploded" in result.summary["error"]


def test_constant_predictions_are_flagged_degenerate(data, tmp_path):
    from transferlab.train.loop import run

    store = Store(tmp_path / "s.db")
    spec = load_spec(tiny_study_dict(data)["base"])
    result = run(spec, store, progress=False, hooks=[ConstantHead()])
    row = store.get(result.uid)
    assert row.summary["dev"]["accuracy"] == 0.5  # balanced dev, constant class
    assert row.summary["baselines"]["dev"]["accuracy"] == 0.5
    assert is_degenerate(row.summary, "dev", margin=0.01) is True
    better = {**row.summary, "dev": {"accuracy": 0.8, "f1": 0.8}}
    assert is_degenerate(better, "dev", margin=0.01) is False
    assert is_degenerate({**row.summary, "dev": {}}, "dev", 0.01) is None


# ------------------------------------------------------------------ fair learning rates


def test_lr_search_per_arm_then_all_seeds_at_the_chosen_lr(data, tmp_path):
    d = tiny_study_dict(data, seeds=[0, 1], epochs=2)
    d["lr_search"] = {"grid": [1e-6, 3e-3], "seeds": [0]}
    study = load_study(d)
    store = Store(tmp_path / "s.db")
    result = run_study(study, store, out=lambda _: None)
    values = store.study_values("tiny-study")
    assert set(values) == {"lr/csv/adamw", "lr/csv/bertadam"}
    for cell in ("adamw", "bertadam"):
        v = values[f"lr/csv/{cell}"]
        by_lr = {}
        for p in expand_lr_search(study):  # the choice is the best mean validation score
            if p.cell == cell:
                by_lr[p.lr] = store.runs(run_id=p.run_id)[-1].summary["dev"]["accuracy"]
        best = max(by_lr.values())
        assert v["lr"] == next(lr for lr, s in by_lr.items() if s == best)
        assert result.lrs[("csv", cell)] == v["lr"]
    main_runs = expand(study, result.lrs)
    assert {p.spec.optim.lr for p in main_runs if p.arm == "adamw"} == {values["lr/csv/adamw"]["lr"]}
    # seed 0 at the chosen LR was a search run: reused, not run twice
    assert result.executed == 4 + 2
    assert all(len(store.runs(run_id=p.run_id)) == 1 for p in main_runs)
    assert len(store.study_plan("tiny-study", "lr")) == 4 and len(store.study_plan("tiny-study", "main")) == 4


# ------------------------------------------------------------------ CLI


def test_cli_dry_run_and_reused_study_name(data, tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tiny_study_dict(data, seeds=[0])))
    db = tmp_path / "s.db"
    assert main(["run", str(path), "--store", str(db), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert not db.exists()  # a dry run writes nothing
    for p in expand(load_study(yaml.safe_load(path.read_text()))):
        assert p.run_id in out
    assert "2 of 2 runs to do" in out
    assert main(["run", str(path), "--store", str(db)]) == 0
    out = capsys.readouterr().out
    assert "[2/2]" in out and "ETA" in out
    assert main(["run", str(path), "--store", str(db), "--dry-run"]) == 0
    assert "0 of 2 runs to do" in capsys.readouterr().out
    # the same name with another definition: refused, unless --new-study (which reuses the finished runs)
    path.write_text(yaml.safe_dump(tiny_study_dict(data, seeds=[0, 1])))
    assert main(["run", str(path), "--store", str(db)]) == 2
    err = capsys.readouterr().err.strip()
    assert "study 'tiny-study' already exists" in err and "--new-study" in err and len(err.splitlines()) == 1
    assert main(["run", str(path), "--store", str(db), "--new-study"]) == 0
    assert "2 planned, 2 done" not in capsys.readouterr().out
    assert len(Store(db).runs()) == 4 and len(Store(db).study_plan("tiny-study", "main")) == 4
    # bad study input through the CLI: one line, exit 2
    path.write_text(yaml.safe_dump({**tiny_study_dict(data), "grid": {"optim.lrr": [1]}}))
    assert main(["run", str(path), "--store", str(db)]) == 2
    assert "unknown field 'optim.lrr'" in capsys.readouterr().err


# ------------------------------------------------------------------ TensorBoard and MLflow


def test_tensorboard_and_mlflow_get_one_logged_run_per_stored_run(data, tmp_path):
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    d = tiny_study_dict(data, seeds=[0])
    d["logging"] = {"tensorboard": str(tmp_path / "tb"), "mlflow": (tmp_path / "mlruns").as_uri()}
    store = Store(tmp_path / "s.db")
    run_study(load_study(d), store, out=lambda _: None)
    rows = store.runs()
    folders = sorted((tmp_path / "tb" / "tiny-study").iterdir())
    assert len(folders) == len(rows) == 2
    for row in rows:
        acc = EventAccumulator(str(tmp_path / "tb" / "tiny-study" / row.uid.replace("/", "_")))
        acc.Reload()
        losses = [e.value for e in acc.Scalars("train/loss")]
        assert losses == pytest.approx([c[1] for c in store.curve(row.uid)])
        assert "dev/accuracy" in acc.Tags()["scalars"]
    client = mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    exp = client.get_experiment_by_name("tiny-study")
    logged = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in logged) == sorted(r.uid for r in rows)
    for r in logged:
        row = store.get(r.info.run_name)
        assert r.data.params["optim.name"] == row.spec["optim"]["name"]
        history = client.get_metric_history(r.info.run_id, "train/loss")
        assert [m.value for m in history] == pytest.approx([c[1] for c in store.curve(row.uid)])


class _Boom(Hook):
    """Fails the run once it has started (a failure that no check before the run can see)."""

    def on_train_start(self, model, optimizer, total_steps):
        raise RuntimeError("boom: broken arm")


def _boom_broken(job):
    return [_Boom()] if job.spec.optim.weight_decay == 0.02 else []


def test_failed_runs_run_again_unless_skip_failed(data, tmp_path):
    d = tiny_study_dict(data, seeds=[0, 1])
    d["arms"]["broken"] = {"optim.weight_decay": 0.02}  # _boom_broken fails these runs during training
    study = load_study(d)
    store = Store(tmp_path / "s.db")
    first = run_study(study, store, out=lambda _: None, hooks=_boom_broken)
    assert (first.executed, first.failed) == (6, 2)  # the other arms still ran
    assert all("boom" in e for e in first.errors)
    assert run_study(study, store, skip_failed=True, out=lambda _: None, hooks=_boom_broken).executed == 0
    again = run_study(study, store, out=lambda _: None, hooks=_boom_broken)
    assert (again.executed, again.failed) == (2, 2)  # only the failed ones, as new attempts
    broken = [p.run_id for p in expand(study) if p.arm == "broken"]
    assert all([r.attempt for r in store.runs(run_id=rid)] == [1, 2] for rid in broken)
    assert all(len(store.runs(run_id=p.run_id)) == 1 for p in expand(study) if p.arm != "broken")


def test_a_mistake_in_one_arm_stops_the_study_before_any_row(data, tmp_path):
    d = tiny_study_dict(data, seeds=[0, 1])
    d["arms"]["broken"] = {"task.path": str(tmp_path / "missing")}
    store = Store(tmp_path / "s.db")
    with pytest.raises(DataError, match="missing"):
        run_study(load_study(d), store, out=lambda _: None)
    assert store.runs() == [] and store.studies() == []
