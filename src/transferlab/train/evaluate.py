"""Predictions and metrics of a model on an encoded split (no training, no store).

    preds = predict(model, enc, task, batch_size=64, device=torch.device("cpu"))   # row order
    metrics = evaluate(model, enc, task, 64, device)                                # {"accuracy": ...}
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from transferlab.data.metrics import compute
from transferlab.data.task import Task
from transferlab.train.batches import Encoded, collate, eval_batches
from transferlab.train.fast import to_device
from transferlab.train.shapes import shape_of


@torch.no_grad()
def predict(model, enc: Encoded, task: Task, batch_size: int, device: torch.device,
            amp: torch.dtype | None = None, desc: str | None = None) -> np.ndarray:
    """Predictions in row order: class ids, or floats for regression. ``desc``: show a progress bar."""
    was_training = model.training
    model.eval()
    regression = task.problem == "regression"
    out = np.zeros(enc.labels.shape, dtype=np.float32 if regression else np.int64)  # (N, L) for per-token tasks
    batches = eval_batches(enc, batch_size)
    for index in tqdm(batches, desc=desc, unit="batch", leave=False, disable=desc is None, dynamic_ncols=True):
        batch = to_device(collate(enc, index, regression), device)  # pinned and non-blocking on CUDA
        batch.pop("labels")
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(**batch)
        pred = logits.squeeze(-1).float() if regression else logits.argmax(-1)
        out[index] = pred.cpu().numpy()
    model.train(was_training)
    return out


def evaluate(model, enc: Encoded, task: Task, batch_size: int, device, amp=None,
             desc: str | None = None) -> dict[str, float]:
    return evaluate_with_predictions(model, enc, task, batch_size, device, amp, desc)[0]


def evaluate_with_predictions(model, enc: Encoded, task: Task, batch_size: int, device, amp=None,
                              desc: str | None = None) -> tuple[dict[str, float], np.ndarray | None]:
    """Metrics and the row-order predictions (None for token and span tasks, which decode and score
    their own way)."""
    if (shape := shape_of(task)) is not None:
        return shape.evaluate(model, enc, task, batch_size, device, amp, desc), None
    preds = predict(model, enc, task, batch_size, device, amp, desc)
    return compute(task.metrics, preds, enc.labels, task.num_labels if task.problem != "regression" else None), preds
