"""A study's ``search:`` section (study/search.py): Optuna trials as stored runs, pruning, resume, executors."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import FILL, NEG, POS, tiny_study_dict

optuna = pytest.importorskip("optuna")  # the `search` extra (in the `test` extra)

from transferlab.cli import main  # noqa: E402
from transferlab.spec import spec_from_dict  # noqa: E402
from transferlab.store import Store  # noqa: E402
from transferlab.study.runner import run_study  # noqa: E402
from transferlab.study.search import PRUNED  # noqa: E402
from transferlab.study.spec import load_study  # noqa: E402
from transferlab.train.loop import run  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


def write_scores_csv(folder: Path, n_train: int = 96, n_dev: int = 32, seed: int = 0) -> Path:
    """A toy regression task (the label counts positive words, plus noise): a continuous dev metric
    (Spearman), so trials differ and the median pruner has something to compare."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        lines = ["text,label"]
        for i in range(n):
            k = i % 3
            words = rng.sample(FILL, 4) + rng.sample(POS, k) + rng.sample(NEG, 2 - k)
            rng.shuffle(words)
            lines.append(f"{' '.join(words)},{k + rng.uniform(-0.4, 0.4):.3f}")
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return folder


def search_study(tmp_path: Path, trials: int = 6, seeds=(0, 1), **search) -> dict:
    data = write_scores_csv(tmp_path / "scores")
    study = tiny_study_dict(data, name="s", seeds=[0, 1, 2], max_steps=12, num_evals=4, batch_size=16)
    del study["arms"], study["baseline"]
    study["search"] = {"space": {"optim.lr": {"low": 1e-4, "high": 1e-1, "log": True}}, "trials": trials,
                       "seeds": list(seeds), "sampler": "random", "pruner": "median",
                       "pruner_options": {"n_startup_trials": 2}, **search}
    return study


def optuna_trials(store_path: Path, cell: str):
    """The trials of the cell's Optuna study (named ``study/task/cell/<study hash>``)."""
    url = f"sqlite:///{store_path.with_name(store_path.stem + '.optuna.db')}"
    names = [n for n in optuna.get_all_study_names(url) if n.startswith(cell + "/")]
    assert len(names) == 1, names
    return optuna.load_study(study_name=names[0], storage=url).get_trials()


KILL_AT = """
import os, signal, sys, json, torch
torch.set_num_threads(1)
from transferlab.store import Store
from transferlab.study.runner import run_study
from transferlab.study.spec import load_study
kill, seen = sys.argv[3], []
def out(line):
    print(line, flush=True)
    seen.append(line)
    if kill == "verdict" and line.startswith("s: trial 2 "):  # trial 2 decided, Optuna not told yet
        os.kill(os.getpid(), signal.SIGKILL)
    if kill == "mid-trial" and sum(x.startswith("[1/2] [search]") for x in seen) == 3:  # a trial's first seed stored
        os.kill(os.getpid(), signal.SIGKILL)
run_study(load_study(json.loads(sys.argv[1])), Store(sys.argv[2]), threads=1, out=out)
"""


def killed_driver(study: dict, db: Path, kill: str) -> str:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-c", KILL_AT, json.dumps(study), str(db), kill], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    return proc.stdout


def test_search_prunes_stores_trials_as_runs_and_resumes_after_a_kill(tmp_path, one_thread):
    study = search_study(tmp_path)
    db = tmp_path / "s.db"
    killed_driver(study, db, "verdict")  # killed between a trial's verdict and Optuna's tell
    assert [t.state.name for t in optuna_trials(db, "s/csv/tiny")][2] == "RUNNING"
    out = killed_driver(study, db, "mid-trial")  # resumed, then killed inside a trial (trial 5's first seed)
    assert "3 of 6 trials done, 3 to run" in out  # trial 2 got its verdict, not a rerun
    first = optuna_trials(db, "s/csv/tiny")
    assert [t.number for t in first] == [0, 1, 2, 3, 4, 5] and first[5].state.name == "RUNNING"
    rows_before = Store(db).runs()
    ran_before = {rid for t in first for rid in t.user_attrs["run_ids"]}

    lines = []
    result = run_study(load_study(study), Store(db), threads=1, out=lines.append)
    assert not result.interrupted and result.failed == 0
    assert any("5 of 6 trials done, 1 to run" in line for line in lines)
    trials = optuna_trials(db, "s/csv/tiny")
    assert trials[5].state.name == "FAIL" and trials[6].user_attrs["retry_of"] == 5  # asked again, same values
    assert trials[6].params == trials[5].params
    trials = [t for t in trials if t.number != 5]
    assert len(trials) == 6 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    store = Store(db)
    rows = store.runs()
    # nothing finished was rerun: every finished run of the killed drivers still has its one row
    for rid in ran_before:
        before = [r.uid for r in rows_before if r.run_id == rid and r.status == "finished"]
        if before:
            assert [r.uid for r in store.runs(run_id=rid)] == before
    # pruning happened, at an evaluation point, and a pruned trial's runs are stored failed with why
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned and all(t.intermediate_values for t in trials)
    pruned_rows = [r for r in rows if r.status == "failed"]
    assert pruned_rows and all(r.error.startswith(PRUNED) for r in pruned_rows)
    # every trial's seeds are ordinary runs whose spec holds the trial's values
    for t in trials:
        assert len(t.user_attrs["run_ids"]) == 2
        for rid in t.user_attrs["run_ids"]:
            row = store.runs(run_id=rid)[-1]
            assert row.spec["optim"]["lr"] == pytest.approx(t.params["optim.lr"])
            assert row.seed in (0, 1) and row.study == "s"
    # the best trial: its value is the mean of its seeds' final dev Spearman; the main phase reused its runs
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    scores = [store.runs(run_id=rid)[-1].summary["dev"]["spearman"] for rid in best.user_attrs["run_ids"]]
    assert best.value == pytest.approx(sum(scores) / 2)
    assert result.chosen == {("csv", "tiny"): best.params}
    main = store.study_plan("s", "main")
    assert {row[1] for row in main if row[5] in (0, 1)} == set(best.user_attrs["run_ids"])
    assert len(main) == 3  # seeds 0, 1 reused from the best trial, seed 2 new

    # the best trial's runs equal a direct run of its values (a store of its own)
    base = study["base"]
    for seed, rid in zip((0, 1), best.user_attrs["run_ids"]):
        spec = spec_from_dict({**base, "seed": seed, "optim": {**base["optim"], "lr": best.params["optim.lr"]}})
        direct = run(spec, Store(tmp_path / "direct.db"), progress=False)
        stored = store.runs(run_id=rid)[-1]
        assert direct.run_id == rid
        assert direct.dev == stored.summary["dev"]
        assert Store(tmp_path / "direct.db").curve(direct.uid) == store.curve(stored.uid)

    # resumed once more: nothing runs
    again = run_study(load_study(study), Store(db), threads=1, out=lambda line: None)
    assert again.executed == 0 and len(optuna_trials(db, "s/csv/tiny")) == 7

    # the report shows the search: the best-trials table and Optuna's importance plot
    from transferlab.report import write_report

    written = write_report(Store(db), tmp_path / "report", study="s")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Hyper-parameter search (Optuna)" in md and f"optim.lr={best.params['optim.lr']:.4g}" in md
    assert any(p.name.startswith("search_importance") for p in written)


@pytest.mark.slow  # spawned workers: about 35 s on a loaded 2-core machine
def test_search_through_the_process_executor_prunes_in_the_worker(tmp_path, one_thread):
    study = search_study(tmp_path, trials=5, seeds=(0,), sampler="grid",
                         space={"optim.lr": [3e-3, 1e-1]}, pruner_options={"n_startup_trials": 1})
    study["base"]["train"].update(max_steps=6, num_evals=2)
    db = tmp_path / "p.db"
    result = run_study(load_study(study), Store(db), executor="processes", workers=1, threads=1,
                       out=lambda line: None)
    assert result.failed == 0
    trials = optuna_trials(db, "s/csv/tiny")
    assert sorted(t.params["optim.lr"] for t in trials) == [3e-3, 1e-1]  # the grid, each point once (5 > its size)
    assert all(t.intermediate_values for t in trials)  # reported by the hook inside the worker process
    inline = run_study(load_study({**study, "study": "s2"}), Store(tmp_path / "i.db"), threads=1,
                       out=lambda line: None)
    assert inline.chosen == result.chosen  # the same choice through either executor


@pytest.mark.parametrize("change, message", [
    ({"sampler": "bayes"}, "search.sampler: 'bayes' is not one of tpe, random, grid"),
    ({"space": {}}, "search.space: the space is empty"),
    ({"space": {"optim.lr": {"low": 1e-2, "high": 1e-3}}}, "search.space.optim.lr: low must be below high"),
    ({"space": {"optim.lr": {"low": 0, "high": 1e-3, "log": True}}}, "a log range needs low > 0"),
    ({"space": {"optim.nope": [1, 2]}}, "search.space: unknown field 'optim.nope'"),
    ({"sampler": "grid", "space": {"optim.lr": {"low": 1e-4, "high": 1e-3}}}, "the grid sampler needs"),
    ({"pruner": "hyperband"}, "search.pruner: 'hyperband' is not one of none, median, halving"),
    ({"objective": "max"}, "search.objective: 'max' is not one of mean, lcb"),
])
def test_bad_search_sections_exit_2_in_one_line_before_any_row(tmp_path, capsys, change, message):
    study = search_study(tmp_path)
    study["search"].update(change)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    db = tmp_path / "bad.db"
    assert main(["run", str(path), "--store", str(db)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not db.exists() and not db.with_name("bad.optuna.db").exists()


def test_dry_run_prints_the_search_plan(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(search_study(tmp_path, sampler="tpe", objective="lcb")))
    assert main(["run", str(path), "--store", str(tmp_path / "s.db"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "search: 6 trials per cell (tpe sampler, seed 0; pruner median), each over seeds [0, 1]" in out
    assert "objective lcb (k 1)" in out and "optim.lr: float [0.0001, 0.1] log" in out
    assert "(6 trials x 2 seeds)" in out and "(at the best trial's values)" in out
    assert not (tmp_path / "s.db").exists()


def test_nested_and_dotted_space_keys_are_one_dimension(tmp_path):
    study = search_study(tmp_path)
    study["search"]["space"] = {"optim": {"lr": {"low": 1e-4, "high": 1e-2}}, "train.batch_size": [8, 16]}
    spec = load_study(study, ["search.space.schedule.warmup_ratio=[0.0, 0.1]"])
    assert list(spec.search.space) == ["optim.lr", "train.batch_size", "schedule.warmup_ratio"]
    assert spec.search.space["optim.lr"]["low"] == 1e-4 and spec.search.space["schedule.warmup_ratio"] == [0.0, 0.1]


def test_objective_lcb_is_a_pessimistic_bound():
    from transferlab.study.search import objective

    assert objective([0.5, 0.7], "mean", 1.0, True) == pytest.approx(0.6)
    sd = 0.1414213562373095
    assert objective([0.5, 0.7], "lcb", 1.0, True) == pytest.approx(0.6 - sd / 2 ** 0.5)
    assert objective([0.5, 0.7], "lcb", 1.0, False) == pytest.approx(0.6 + sd / 2 ** 0.5)  # an error metric
