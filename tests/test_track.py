"""Live tracking (train/track.py): TensorBoard, MLflow and W&B (offline) hold points while the run trains,
with real wall times; tracking folder names cannot leave the tracking folder."""

import os
import time
from pathlib import Path

import pytest
from conftest import tiny_spec_dict

from transferlab.recipes.hooks import Hook
from transferlab.spec import load_spec
from transferlab.store import Store
from transferlab.train.loop import run
from transferlab.train.track import TrackerHook, TrackingSpec, inside, safe_name

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

tensorboard = pytest.importorskip("tensorboard", reason="the tracking extra is not installed")
mlflow = pytest.importorskip("mlflow", reason="the tracking extra is not installed")
wandb = pytest.importorskip("wandb", reason="the tracking extra is not installed")


def _tb_points(folder: Path, tag: str) -> list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points = []
    for events in {p.parent for p in folder.rglob("events.out.tfevents.*")}:
        acc = EventAccumulator(str(events))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            points += acc.Scalars(tag)
    return points


def _wandb_records(folder: Path, key: bytes) -> int:
    """How often ``key`` occurs in the offline run's transaction log (.wandb): the points written so far."""
    return sum(p.read_bytes().count(key) for p in folder.rglob("run-*.wandb"))


class Probe(Hook):
    """Reads the three backends from inside the run, at step ``at`` (the run is not over)."""

    def __init__(self, tracker: TrackerHook, tmp: Path, at: int):
        self.tracker, self.tmp, self.at, self.seen = tracker, tmp, at, {}

    def on_step_start(self, step: int) -> None:
        if step != self.at:
            return
        self.seen["tensorboard"] = [(p.step, p.wall_time) for p in _tb_points(self.tmp / "tb", "train/loss")]
        history = self.tracker.mlflow.get_metric_history(self.tracker.mlflow_run, "train/loss")
        self.seen["mlflow"] = [(m.step, m.timestamp / 1000) for m in history]
        deadline = time.time() + 30  # W&B writes its log every WANDB_X_TRANSACTION_LOG_FLUSH_INTERVAL seconds
        while time.time() < deadline and not _wandb_records(self.tmp / "wandb", b"grad_norm"):
            time.sleep(0.1)
        self.seen["wandb"] = _wandb_records(self.tmp / "wandb", b"grad_norm")
        self.seen["status"] = Store(self.tracker.store.path).get(self.tracker.uid).status


def test_three_backends_receive_points_during_the_run(toy_task_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_X_TRANSACTION_LOG_FLUSH_INTERVAL", "0.2")
    monkeypatch.setenv("WANDB_SILENT", "true")
    store = Store(tmp_path / "s.db")
    spec = load_spec(tiny_spec_dict(toy_task_dir, max_steps=12, log_every=2, num_evals=2, save_model=False))
    tracking = TrackingSpec(tensorboard=str(tmp_path / "tb"), mlflow=(tmp_path / "mlruns").as_uri(),
                            wandb="transferlab-test", wandb_dir=str(tmp_path / "wandb"))
    tracker = TrackerHook(tracking, spec, store)
    probe = Probe(tracker, tmp_path, at=9)
    start = time.time()
    try:
        result = run(spec, store, progress=False, hooks=[tracker, probe])
    finally:
        tracker.close()
    end = time.time()
    seen = probe.seen
    assert seen["status"] == "running"  # read mid-run
    assert [s for s, _ in seen["tensorboard"]] == [2, 4, 6, 8]
    assert [s for s, _ in seen["mlflow"]] == [2, 4, 6, 8]
    assert seen["wandb"] >= 1
    for backend in ("tensorboard", "mlflow"):  # real, increasing wall times within the run
        times = [t for _, t in seen[backend]]
        assert all(start - 1 <= t <= end + 1 for t in times) and times == sorted(times) and len(set(times)) > 1
    # after the run: every curve point and the evaluations are there, and the same as the store's
    curve = store.curve(result.uid)
    assert [p.value for p in _tb_points(tmp_path / "tb", "train/loss")] == pytest.approx([c[1] for c in curve])
    history = tracker_history(tmp_path, "dev/accuracy")
    assert len(history) == 2
    assert _wandb_records(tmp_path / "wandb", b"grad_norm") >= len(curve)


def tracker_history(tmp: Path, metric: str) -> list:
    client = mlflow.tracking.MlflowClient(tracking_uri=(tmp / "mlruns").as_uri())
    (exp,) = [e for e in client.search_experiments() if e.name == "transferlab"]
    (logged,) = client.search_runs([exp.experiment_id])
    assert logged.info.status == "FINISHED"
    return client.get_metric_history(logged.info.run_id, metric)


def test_tracking_folder_names_stay_inside(toy_task_dir, tmp_path):
    for text in ("../../x", "..", "/etc", "a/b c", ".hidden"):
        name = safe_name(text)
        assert "/" not in name and not name.startswith(".") and name
    assert safe_name("a/b c") == "a_b_c" and safe_name("uid-s0/1") == "uid-s0_1"
    root = tmp_path / "tb"
    assert inside(root, "../../x", "uid-s0/1").parent.parent == root.resolve()
    store = Store(tmp_path / "s.db")
    spec = load_spec(tiny_spec_dict(toy_task_dir, max_steps=2, num_evals=1, save_model=False))
    tracker = TrackerHook(TrackingSpec(tensorboard=str(root)), spec, store, study="../../x")
    try:
        run(spec, store, progress=False, hooks=[tracker])
    finally:
        tracker.close()
    written = [p for p in tmp_path.rglob("events.out.tfevents.*")]
    assert written and all(root.resolve() in p.resolve().parents for p in written)
    assert not (tmp_path.parent / "x").exists() and not os.path.exists(root / ".." / ".." / "x")
