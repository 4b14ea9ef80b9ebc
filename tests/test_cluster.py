"""Studies beyond one process: the driver is the only writer, artifact locations, dead workers,
leases, two drivers, run identity from data and model, exit codes, bad input."""

import os
import sqlite3
import time

import pytest
import yaml
from conftest import tiny_spec_dict, tiny_study_dict, write_sentiment_csv

from transferlab.cli import main
from transferlab.spec import spec_from_dict, spec_hash, to_dict
from transferlab.store import Store
from transferlab.study.expand import expand
from transferlab.study.jobs import Job, execute_jobs
from transferlab.study.runner import run_study
from transferlab.study.spec import load_study

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def data(tmp_path):
    return write_sentiment_csv(tmp_path / "toy", n_train=64, n_dev=32)


def _metrics(store: Store) -> dict:
    return {r.run_id: (r.status, r.summary["dev"], store.curve(r.uid)) for r in store.runs() if r.status == "finished"}


def test_a_worker_never_opens_the_store_and_the_driver_writes_its_record_at_once(data, tmp_path, monkeypatch):
    spec = spec_from_dict(tiny_spec_dict(data, epochs=1, save_model=True))
    store = Store(tmp_path / "s.db")
    uid, earlier = store.claim("rid-s0", spec_hash(spec), spec.seed, to_dict(spec), name=spec.name)
    job = Job(0, to_dict(spec), "s", str(store.path), uid=uid, run_id="rid-s0", earlier=earlier, artifacts=None)
    opened = []
    real = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: opened.append(a) or real(*a, **k))
    (outcome,) = execute_jobs([job])  # what a worker runs
    assert opened == [] and outcome.status == "finished"
    record = outcome.record
    assert record.evals and record.curve and "model.safetensors" in record.files  # weights travel back
    assert store.get(uid).status == "running" and store.evals(uid) == []  # nothing written yet
    store.write_record(record)
    row = store.get(uid)
    assert row.status == "finished" and row.summary["dev"] == outcome.summary["dev"]
    assert len(store.evals(uid)) == len(record.evals) and len(store.curve(uid)) == len(record.curve)
    assert (store.artifact_dir(uid) / "model.safetensors").is_file()  # written by the driver
