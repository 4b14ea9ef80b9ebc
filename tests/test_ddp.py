"""Data-parallel training of one run (train/distributed.py): 2 gloo processes on the CPU."""

import os
import sqlite3

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import tiny_spec_dict, write_sentiment_csv
from transferlab.cli import main
from transferlab.spec import spec_from_dict
from transferlab.store import Store
from transferlab.train.ddp_launch import launch
from transferlab.train.loop import run

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without torch.distributed")


def float64_one_thread() -> None:
    """Each rank's set-up: float64 weights and one thread, as the single-process run below."""
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)


def ddp_spec(data_dir, **train) -> dict:
    spec = tiny_spec_dict(data_dir, **{"max_steps": 6, "batch_size": 16, "num_evals": 2, "log_every": 1,
                                       "device": "cpu", "save_model": True, **train})
    spec["model"]["dropout"] = 0.0  # each rank draws its own dropout masks: bitwise checks need none
    spec["head"]["dropout"] = 0.0
    return spec


def test_two_gloo_ranks_with_batch_b_equal_one_process_with_batch_2b(tmp_path, float64):
    torch.set_num_threads(1)
    data = write_sentiment_csv(tmp_path / "toy", n_train=41, n_dev=32)  # 2 batches of 16 and one of 9 per epoch
    # the global batch: 8 per rank under --nproc 2; the epoch's last batch splits 5 + 4 (share-weighted losses)
    spec = spec_from_dict(ddp_spec(data, batch_size=16))
    one = run(spec, Store(tmp_path / "one.db"), progress=False)
    assert next(iter(load_file(Store(tmp_path / "one.db").artifact_dir(one.uid) / "model.safetensors").values())
                ).dtype == torch.float64

    store = Store(tmp_path / "two.db")
    two = launch(spec, store, nproc=2, progress=False, init=float64_one_thread)
    rows = store.runs()
    assert len(rows) == 1 and rows[0].status == "finished" and two.run_id == one.run_id  # rank 0 alone wrote
    assert rows[0].provenance["ddp"] == {"world_size": 2, "backend": "gloo", "rank": 0}
    with sqlite3.connect(tmp_path / "two.db") as db:  # written by rank 0's process, not by the launcher
        assert db.execute("SELECT pid FROM runs").fetchall() != [(os.getpid(),)]
    curve_one, curve_two = Store(tmp_path / "one.db").curve(one.uid), store.curve(two.uid)
    assert len(curve_one) == len(curve_two) == 6
    for a, b in zip(curve_one, curve_two):  # the global batch's loss (cross entropy is computed in float32)
        assert a[0] == b[0] and a[1] == pytest.approx(b[1], rel=1e-6, abs=1e-7)
    for k, v in one.dev.items():
        assert two.dev[k] == pytest.approx(v, abs=1e-9)
    w_one = load_file(Store(tmp_path / "one.db").artifact_dir(one.uid) / "model.safetensors")
    w_two = load_file(store.artifact_dir(two.uid) / "model.safetensors")
    assert w_one.keys() == w_two.keys()
    gap = max(float((w_one[k] - w_two[k]).abs().max()) for k in w_one)
    print(f"largest weight difference {gap:.3g}, loss differences "
          f"{max(abs(a[1] - b[1]) for a, b in zip(curve_one, curve_two)):.3g}")
    for k in w_one:
        torch.testing.assert_close(w_two[k], w_one[k], rtol=1e-7, atol=1e-8)  # measured: 1.2e-9


def test_ddp_refuses_what_it_does_not_run_in_one_line_before_any_row(tmp_path, toy_task_dir, capsys):
    for change, message in [({"train": {"engine": "fused"}}, "train.engine is not supported under data-parallel"),
                            ({"train": {"batch_size": 15}}, "must be a multiple of the process count"),
                            ({"stabilisers": [{"name": "r3f"}]}, "stabilisers is not supported"),
                            ({"train": {"dropout_rng": "run"}}, "train.dropout_rng is not supported")]:
        data = ddp_spec(toy_task_dir)
        for key, value in change.items():
            data[key] = {**data[key], **value} if isinstance(value, dict) else value
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump(data))
        db = tmp_path / "refused.db"
        assert main(["run", str(path), "--store", str(db), "--nproc", "2"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not db.exists()
