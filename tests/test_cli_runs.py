"""`transferlab runs`: metrics (dev and test), status and error, the fields that differ, --study, formats."""

import csv
import io
import json

import pytest
import torch
from conftest import tiny_spec_dict, write_sentiment_csv

from transferlab.cli import main
from transferlab.recipes.hooks import Hook
from transferlab.spec import load_spec
from transferlab.store import Store
from transferlab.train.loop import run

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


class _Boom(Hook):
    def on_train_start(self, model, optimizer, total_steps):
        raise RuntimeError("out of memory (simulated)")


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    """Two finished runs that differ only in the learning rate (one in study 'lrs'), and a failed run."""
    tmp = tmp_path_factory.mktemp("runs")
    data = write_sentiment_csv(tmp / "toy", n_train=32, n_dev=32)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    store = Store(tmp / "s.db")
    try:
        for lr, study in ((1e-3, None), (3e-3, "lrs")):
            d = tiny_spec_dict(data, max_steps=2, num_evals=1, save_model=False)
            d["optim"]["lr"] = lr
            d["task"]["split_dev"] = True  # dev halves: validation and a labelled test split
            run(load_spec(d), store, study=study, progress=False)
        with pytest.raises(RuntimeError):
            d = tiny_spec_dict(data, max_steps=2, num_evals=1, save_model=False)
            d["task"]["split_dev"] = True
            d["optim"]["lr"] = 2e-5
            run(load_spec({**d, "name": "doomed"}), store, progress=False, hooks=[_Boom()])
    finally:
        torch.set_num_threads(before)
    return str(tmp / "s.db")


def test_table_shows_test_metrics_status_error_and_the_differing_field(store_path, capsys):
    assert main(["runs", "--store", store_path]) == 0
    out = capsys.readouterr().out.splitlines()
    header = out[0].split()
    assert header[:2] == ["uid", "name"] and {"dev", "test", "differs", "error"} <= set(header)
    body = out[2:]
    assert len(body) == 3
    assert "optim.lr=0.001" in body[0] and "optim.lr=0.003" in body[1]  # the only field that differs
    assert "test" in out[0] and "accuracy=" in body[0].split("optim.lr")[0]
    assert "failed" in body[2] and "out of memory (simulated)" in body[2]


def test_csv_and_json_hold_every_metric_and_field(store_path, capsys):
    assert main(["runs", "--store", store_path, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["status"] for r in rows] == ["finished", "finished", "failed"]
    assert [r["optim.lr"] for r in rows] == ["0.001", "0.003", "2e-05"]
    assert float(rows[0]["test_accuracy"]) >= 0 and float(rows[1]["dev_accuracy"]) >= 0
    assert rows[2]["test_accuracy"] == "" and "out of memory" in rows[2]["error"]
    assert main(["runs", "--store", store_path, "--format", "json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert runs[1]["optim.lr"] == 0.003 and runs[1]["study"] == "lrs" and runs[0]["error"] == ""
    assert isinstance(runs[0]["test_accuracy"], float) and runs[2]["status"] == "failed"


def test_study_filter(store_path, capsys):
    assert main(["runs", "--store", store_path, "--study", "lrs", "--format", "json"]) == 0
    (only,) = json.loads(capsys.readouterr().out)
    assert only["study"] == "lrs" and "optim.lr" not in only  # one run: nothing differs


def test_loaded_sizes_and_fingerprint_of_a_single_run(tmp_path, capsys):
    """The train/dev sizes the run loaded (after max_train_samples) in --dry-run, the run's output, the
    summary and `runs`; the run row holds the data and model fingerprint (docs/methods/studies.md)."""
    import yaml

    from transferlab.fingerprint import fingerprint

    data = write_sentiment_csv(tmp_path / "d", n_train=96, n_dev=40)
    spec = tiny_spec_dict(data, epochs=1, num_evals=1)
    spec["task"]["max_train_samples"] = 48
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    store = tmp_path / "s.db"
    capsys.readouterr()
    assert main(["run", str(path), "--store", str(store), "--dry-run"]) == 0
    assert "# data train 48  dev 40" in capsys.readouterr().out.splitlines()
    assert main(["run", str(path), "--store", str(store), "--quiet"]) == 0
    assert "  data: train 48  dev 40" in capsys.readouterr().out.splitlines()
    row = Store(store).runs()[-1]
    assert row.summary.data_sizes == {"train": 48, "dev": 40} and row.summary["data_sizes"]["train"] == 48
    assert row.fingerprint == fingerprint(load_spec(spec)) and row.fingerprint["data"]
    assert main(["runs", "--store", str(store), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["data"] == "train=48 dev=40"
    assert main(["runs", "--store", str(store)]) == 0
    assert "train=48 dev=40" in capsys.readouterr().out
    # a row started directly (not claimed) keeps the fingerprint it is given
    s = Store(store)
    uid = s.start_run("direct-s0", "abc", 0, {}, fingerprint={"data": "d1", "model": "m1"})
    assert s.get(uid).fingerprint == {"data": "d1", "model": "m1"}
