"""Metrics exactly as GLUE reports them, and the majority / mean baseline of a task.

Every metric is registered in ``METRICS`` by name with its direction:

    compute(["accuracy", "f1"], preds, labels)  # -> {"accuracy": 0.81, "f1": 0.87}

Values are fractions (accuracy 0.81, not 81.0). ``preds`` are class ids for
classification metrics and floats for regression metrics; a 2-D ``preds`` is
argmaxed (logits) or squeezed (one regression output). The computations are
scikit-learn's and scipy's; only the glue (names, nan handling) is ours.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from transferlab.errors import DataError
from transferlab.registry import Registry


@dataclass(frozen=True)
class Metric:
    """A metric function ``fn(preds, labels) -> float`` and whether higher values are better."""

    fn: Callable[[np.ndarray, np.ndarray], float]
    higher_is_better: bool = True
    regression: bool = False  # takes float predictions; otherwise class ids


METRICS: Registry[Metric] = Registry("metric")


def _correlation(fn: Callable) -> Callable[[np.ndarray, np.ndarray], float]:
    """Pearson/Spearman; the correlation of a constant vector is undefined (nan) and reported as 0.0."""

    def corr(preds: np.ndarray, labels: np.ndarray) -> float:
        if len(preds) < 2 or np.all(preds == preds[0]) or np.all(labels == labels[0]):
            return 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = float(fn(preds, labels)[0])
        return 0.0 if np.isnan(value) else value

    return corr


METRICS.register("accuracy")(Metric(lambda p, y: float(skm.accuracy_score(y, p))))
METRICS.register("f1")(Metric(lambda p, y: float(skm.f1_score(y, p, pos_label=1, zero_division=0.0))))
METRICS.register("matthews")(Metric(lambda p, y: float(skm.matthews_corrcoef(y, p))))
METRICS.register("pearson")(Metric(_correlation(stats.pearsonr), regression=True))
METRICS.register("spearman")(Metric(_correlation(stats.spearmanr), regression=True))
METRICS.register("mse")(Metric(lambda p, y: float(skm.mean_squared_error(y, p)), False, True))
METRICS.register("rmse")(Metric(lambda p, y: float(np.sqrt(skm.mean_squared_error(y, p))), False, True))



# Scored by a task shape from decoded outputs (tag sequences, answer texts; train/shapes.py), or the mean
# main metric of a multi-task run: not functions of class ids, so not in METRICS; all higher-is-better.
STRUCTURED_METRICS = ("entity_f1", "entity_precision", "entity_recall", "token_accuracy", "exact_match", "span_f1",
                      "joint")


def higher_is_better(name: str) -> bool:
    """True for scores (accuracy, f1, ...), False for errors (mse, rmse)."""
    if name in STRUCTURED_METRICS:
        return True
    return METRICS.get(name, field="metric").higher_is_better


def compute(names: Sequence[str], preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The named metrics of ``preds`` against ``labels``, as plain floats."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    if labels.ndim == 2:  # per-token labels (bit tasks): every position is one prediction
        preds, labels = preds.reshape(-1), labels.reshape(-1)
    if preds.ndim == 2:
        preds = preds[:, 0] if preds.shape[1] == 1 else preds.argmax(axis=1)
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    if len(labels) == 0:
        raise DataError("cannot compute metrics on an empty split")
    out = {}
    for name in names:
        metric = METRICS.get(name, field="metric")
        p = preds.astype(np.float64) if metric.regression else preds.astype(np.int64)
        y = labels.astype(np.float64) if metric.regression else labels.astype(np.int64)
        out[name] = metric.fn(p, y)
    return out


def baseline(task, split: str = "dev") -> dict[str, float]:
    """Metrics of a constant prediction on ``split``: the train split's majority class
    (ties: the smallest class id) for classification, the train mean for regression.

    Pearson/Spearman of a constant prediction are undefined and reported as 0.0.
    """
    if task.kind != "sequence":
        return shape_baseline(task, split)
    for name in ("train", split):
        if name not in task.splits:
            raise DataError(f"task {task.name}: no {name!r} split for the baseline")
        if not task.splits[name].labelled:
            raise DataError(f"task {task.name}: split {name!r} is unlabelled; the baseline needs labels")
    train, target = task.splits["train"].labels, task.splits[split].labels
    if task.problem == "regression":
        preds = np.full(len(target), float(np.mean(train)))
    else:
        counts = np.bincount(train.astype(np.int64).ravel(), minlength=task.num_labels)
        preds = np.full(target.shape, int(counts.argmax()))
    return compute(task.metrics, preds, target)


def shape_baseline(task, split: str = "dev") -> dict[str, float]:
    """The baseline of a token task (every word tagged with the most frequent train tag) or a span
    task (the first sentence of the context as the answer)."""
    if task.kind == "token":
        from transferlab.data.tagging import all_outside_baseline

        return all_outside_baseline(task, split)
    from transferlab.data.squad import first_sentence_baseline

    return first_sentence_baseline(task.splits[split])
