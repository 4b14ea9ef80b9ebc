"""Multi-task learning (issue 16): sampler proportions, one stored run with per-task metrics, bad specs."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from conftest import write_sentiment_csv

from transferlab.cli import main
from transferlab.errors import SpecError
from transferlab.spec import load_spec
from transferlab.store import Store
from transferlab.train.loop import run
from transferlab.train.samplers import SAMPLERS, expected_shares, probabilities, task_sequence

pytestmark = pytest.mark.usefixtures("one_thread")
SIZES = [2490, 3668, 5749]  # RTE, MRPC, STS-B train sizes


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampler_shares_over_10k_draws(sampler):
    seq = task_sequence(SIZES, 10_000, sampler, seed=0, temperature=2.0, anneal_min=0.2)
    shares = np.bincount(seq, minlength=3) / 10_000
    expected = {
        "proportional": np.array(SIZES) / sum(SIZES),
        "temperature": np.sqrt(SIZES) / np.sqrt(SIZES).sum(),  # T = 2: square-root sampling
        "round_robin": np.full(3, 1 / 3),
        "annealed": expected_shares(SIZES, 10_000, "annealed", anneal_min=0.2),
    }[sampler]
    assert np.abs(shares - expected).max() < 0.015, (shares, expected)  # ~3 standard errors at 10k draws
    assert np.array_equal(seq, task_sequence(SIZES, 10_000, sampler, seed=0))  # seeded


def test_annealed_sampler_moves_from_proportional_towards_uniform():
    seq = task_sequence(SIZES, 10_000, "annealed", seed=1, anneal_min=0.0)
    early, late = np.bincount(seq[:2000], minlength=3) / 2000, np.bincount(seq[-2000:], minlength=3) / 2000
    assert early[0] < late[0] and early[2] > late[2]  # the smallest task gains, the largest loses
    assert np.allclose(probabilities(SIZES, "annealed", alpha=0.0), 1 / 3)
    assert round_robin_is_exact()


def round_robin_is_exact() -> bool:
    return task_sequence(SIZES, 7, "round_robin", seed=0).tolist() == [0, 1, 2, 0, 1, 2, 0]


def two_task_spec(tmp_path, **mt):
    a = write_sentiment_csv(tmp_path / "a", n_train=128, n_dev=32, seed=0)
    b = write_sentiment_csv(tmp_path / "b", n_train=64, n_dev=32, seed=1)
    for split in ("train", "dev"):  # task b as TSV: a second, differently named task
        rows = (b / f"{split}.csv").read_text().replace(",", "\t")
        (b / f"{split}.tsv").write_text(rows)
    return {"name": "mt", "model": {"name": "tiny-bert", "max_length": 16}, "head": {"name": "cls"},
            "multitask": {"tasks": [{"name": "csv", "path": str(a)}, {"name": "tsv", "path": str(b)}], **mt},
            "optim": {"lr": 3e-3}, "train": {"max_steps": 80, "batch_size": 16, "num_evals": 2, "log_every": 5}}


def test_multitask_run_is_one_run_with_per_task_metrics(tmp_path, capsys):
    store = Store(tmp_path / "s.db")
    result = run(load_spec(two_task_spec(tmp_path, sampler="proportional")), store, progress=False)
    assert result.status == "finished"
    assert set(result.dev) == {"csv.accuracy", "csv.f1", "tsv.accuracy", "tsv.f1", "joint"}
    assert result.dev["joint"] == pytest.approx((result.dev["csv.accuracy"] + result.dev["tsv.accuracy"]) / 2)
    assert result.dev["joint"] > 0.75  # both toy tasks learnt (chance 0.5) by one encoder with two heads
    s = result.summary
    assert s["main_metric"] == "joint" and set(s["tasks"]) == {"csv", "tsv"} and s["trainable_share"] == 1.0
    assert sum(s["task_steps"].values()) == 80 and s["task_steps"]["csv"] > s["task_steps"]["tsv"]
    assert len(store.runs()) == 1
    evals = {(split, m) for _, split, m, _ in store.evals(result.uid)}
    assert ("dev", "joint") in evals and ("dev", "tsv.accuracy") in evals
    capsys.readouterr()
    assert main(["runs", "--store", str(tmp_path / "s.db"), "--format", "csv"]) == 0  # the run lists like any other
    listed = capsys.readouterr().out.splitlines()
    assert listed[1].split(",")[3] == "csv+tsv"  # under all its tasks, not the first one
    for task, n in (("csv", 2), ("tsv", 2), ("rte", 1)):  # header + the run, or nothing for another task
        assert main(["runs", "--store", str(tmp_path / "s.db"), "--format", "csv", "--task", task]) == 0
        assert len(capsys.readouterr().out.splitlines()) == n
    # exporting one task's model from it is refused in one line
    assert main(["export", result.uid, "-o", str(tmp_path / "x"), "--store", str(tmp_path / "s.db")]) == 2
    err = capsys.readouterr().err.strip()
    assert "multi-task model (heads for csv, tsv)" in err and len(err.splitlines()) == 1


def test_multitask_curve_is_one_point_per_interval_and_divergence_names_the_task(tmp_path, monkeypatch):
    """The loss stays on the device between log points (one curve point per log_every steps, the mean of
    the interval); a non-finite loss is caught at the next log point and names the task of its step."""
    store = Store(tmp_path / "s.db")
    result = run(load_spec(two_task_spec(tmp_path, sampler="round_robin")), store, progress=False)
    steps = [row[0] for row in store.curve(result.uid)]
    assert steps == list(range(5, 81, 5))  # 80 steps, log_every 5 (the evaluations at 40 and 80 fall on it)
    from transferlab.train import compute  # the engine's trainee computes the loss

    real = compute.loss_fn
    calls = [0]

    def poisoned(logits, labels, regression):
        calls[0] += 1
        loss = real(logits, labels, regression)
        return loss * float("nan") if calls[0] == 7 else loss

    monkeypatch.setattr(compute, "loss_fn", poisoned)
    bad = run(load_spec(two_task_spec(tmp_path, sampler="round_robin"), {"name": "mt-bad"}), Store(tmp_path / "b.db"),
              progress=False)
    assert bad.status == "diverged"
    assert "non-finite loss or gradient at step 7 (task csv)" in bad.summary["error"]  # round robin: step 7 is csv


def test_two_tasks_of_the_same_name_is_one_line_exit_2(tmp_path, capsys):
    spec = two_task_spec(tmp_path)
    spec["multitask"]["tasks"][1]["name"] = "csv"
    with pytest.raises(SpecError, match="task 'csv' appears 2 times"):
        load_spec(spec)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["run", str(path), "--store", str(tmp_path / "s.db"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "appears 2 times" in err and len(err.splitlines()) == 1


def test_multitask_runs_in_a_study_with_a_sampler_axis(tmp_path):
    from transferlab.report import cells
    from transferlab.study.runner import run_study
    from transferlab.study.spec import load_study
    from transferlab.report.tables import stats_table

    base = two_task_spec(tmp_path)
    base["train"].update(max_steps=6, num_evals=1, save_model=False)
    study = load_study({"study": "mt", "base": base, "seeds": [0, 1],
                        "grid": {"multitask.sampler": ["proportional", "round_robin"]}})
    store = Store(tmp_path / "s.db")
    lines = []
    result = run_study(study, store, out=lines.append)
    assert result.executed == 4 and result.failed == 0
    runs = store.runs()
    assert {r.summary["task_steps"]["tsv"] for r in runs if r.spec["multitask"]["sampler"] == "round_robin"} == {3}
    _, rows = stats_table(store, cells(store, "mt"))  # the study tables read the joint metric
    assert len(rows) == 2 and {r[3] for r in rows} == {"joint"} and {r[4] for r in rows} == {"2"}
