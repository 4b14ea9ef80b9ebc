"""The same study through every executor stores the same run ids, metrics and curves (CPU, one thread)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import tiny_study_dict, write_sentiment_csv

from transferlab.errors import SpecError, UserError
from transferlab.spec import to_dict
from transferlab.store import Store
from transferlab.study.executors import EXECUTORS
from transferlab.study.expand import expand
from transferlab.study.runner import run_study
from transferlab.study.spec import load_study


def _fingerprint(store: Store) -> dict:
    """run id -> (status, final metrics, every evaluation, the training curve)."""
    out = {}
    for r in store.runs():
        evals = [(s, split, m, v) for s, split, m, v in store.evals(r.uid)]
        out[r.run_id] = (r.status, r.summary["dev"], r.summary.get("test"), evals, store.curve(r.uid))
    return out


@pytest.fixture(scope="module")
def study_and_inline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("executors")
    data = write_sentiment_csv(tmp / "toy", n_train=64, n_dev=32)
    study = load_study(tiny_study_dict(data, epochs=2))
    store = Store(tmp / "inline.db")
    result = run_study(study, store, threads=1, out=lambda _: None)
    assert result.executed == 10 and result.failed == 0
    return study, _fingerprint(store), tmp


def _check_same(study, inline: dict, store: Store) -> None:
    got = _fingerprint(store)
    assert sorted(got) == sorted(inline) == sorted(p.run_id for p in expand(study))
    for rid, expected in inline.items():
        assert got[rid] == expected, rid
    assert len({str(v[3]) for v in got.values()}) > 1  # the runs differ from each other: not a trivial match


def test_processes_executor_matches_inline(study_and_inline):
    study, inline, tmp = study_and_inline
    store = Store(tmp / "processes.db")
    lines = []
    result = run_study(study, store, executor="processes", workers=2, threads=1, out=lines.append)
    assert result.executed == 10 and result.failed == 0
    _check_same(study, inline, store)
    assert len({r.provenance["worker"]["pid"] for r in store.runs()}) == 2  # two workers ran them
    assert {pid for (pid,) in store._db.execute("SELECT DISTINCT pid FROM runs")} == {os.getpid()}  # one writer
    assert sum("/10]" in line for line in lines) == 10  # progress: done/total per run


def test_ray_executor_matches_inline(study_and_inline):
    ray = pytest.importorskip("ray")
    study, inline, tmp = study_and_inline
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        store = Store(tmp / "ray.db")
        result = run_study(study, store, executor="ray", threads=1, out=lambda _: None)
        assert result.executed == 10 and result.failed == 0
        _check_same(study, inline, store)
    finally:
        ray.shutdown()


def test_unknown_executor_and_bad_workers(tmp_path):
    with pytest.raises(SpecError, match="unknown executor 'threads'; known: inline, processes, ray"):
        EXECUTORS.get("threads", field="--executor")
    with pytest.raises(UserError, match="--workers: must be at least 1"):
        EXECUTORS.get("processes")(workers=0)


def test_ctrl_c_stops_workers_cleanly_and_the_rerun_resumes(study_and_inline):
    study, inline, tmp = study_and_inline
    path, db = tmp / "ctrl_c.yaml", tmp / "ctrl_c.db"
    path.write_text(yaml.safe_dump(to_dict(study)))
    proc = subprocess.Popen([sys.executable, "-m", "transferlab.cli", "run", str(path), "--store", str(db),
                             "--executor", "processes", "--workers", "2", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (db.exists() and any(r.status == "finished" for r in Store(db).runs())):
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Run the same command again to resume" in out
    rows = Store(db).runs()
    assert all(r.status in ("finished", "unfinished") for r in rows) and len(rows) < 10
    result = run_study(study, Store(db), threads=1, out=lambda _: None)
    assert result.executed == 10 - sum(r.status == "finished" for r in rows)
    store = Store(db)
    finished = [r for r in store.runs() if r.status == "finished"]
    assert sorted(r.run_id for r in finished) == sorted(inline)  # each once, the same as inline
    for r in finished:
        assert (r.summary["dev"], store.curve(r.uid)) == (inline[r.run_id][1], inline[r.run_id][4])
