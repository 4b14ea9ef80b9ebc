"""Rebuild a stored run's model from its spec and saved weights (no training data needed)."""

from __future__ import annotations

from transferlab.data.task import Task
from transferlab.models.model import TransferModel, build_model
from transferlab.spec import spec_from_dict
from transferlab.store import Store
from transferlab.train.checkpoint import load_weights, read_task_meta, task_from_meta


def load_run_model(store: Store, ref: str) -> tuple[TransferModel, Task]:
    row = store.get(ref)
    folder = store.artifact_dir(row.uid)
    task = task_from_meta(read_task_meta(folder))
    spec = spec_from_dict(row.spec)
    model = build_model(spec, task)
    load_weights(model, folder)
    model.eval()
    return model, task
