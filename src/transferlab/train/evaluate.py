"""Predictions and metrics of a model on an encoded split (no training, no store).

    preds = predict(model, enc, task, batch_size=64, device=torch.device("cpu"))   # row order
    metrics = evaluate(model, enc, task, 64, device)                                # {"accuracy": ...}
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from transferlab.data.metrics import baseline, compute, constant_baselines, higher_is_better
from transferlab.data.task import Task
from transferlab.models.artifacts import save_predictions, task_meta
from transferlab.records import data_sizes
from transferlab.train.batches import Encoded, collate, eval_batches
from transferlab.train.extra_evals import extra_splits
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
    if task.problem == "regression":
        return compute(task.metrics, preds, enc.labels), preds
    return compute(task.metrics, preds, enc.labels, task.num_labels, task.label_names), preds


class TaskEvaluator:
    """The ``Evaluator`` (train/engine.py) of a single-task run: the task's metrics on its encoded splits;
    the test predictions are kept with the run (churn); every split beyond dev and test (MNLI's
    mismatched dev set, train/extra_evals.py) is scored at the end."""

    def __init__(self, task: Task, data: dict[str, Encoded], batch_size: int, device, amp, desc: str | None):
        self.task, self.data, self.batch_size, self.device, self.amp, self.desc = (
            task, data, batch_size, device, amp, desc)
        self.main_metric = task.main_metric
        self.higher_is_better = higher_is_better(task.main_metric)

    def evaluate(self, model, split: str, keep=None) -> dict[str, float]:
        desc = f"{self.desc} {split}" if self.desc else None
        metrics, preds = evaluate_with_predictions(model, self.data[split], self.task, self.batch_size,
                                                   self.device, self.amp, desc)
        if keep is not None and preds is not None:
            save_predictions(keep, split, preds)
        return metrics

    def splits(self) -> list[str]:
        return (["test"] if "test" in self.data else []) + list(extra_splits(self.task))

    def summary(self, step: int, dev: dict, test: dict) -> dict:
        return {"baseline": baseline(self.task, "dev"), "baselines": constant_baselines(self.task),
                "data_sizes": data_sizes(self.task.splits)}

    def meta(self) -> dict:
        return task_meta(self.task)
