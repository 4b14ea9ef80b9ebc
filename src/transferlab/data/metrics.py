"""Metrics exactly as GLUE reports them, and the majority / mean baseline of a task.

Every metric is registered in ``METRICS`` by name with its direction:

    compute(["accuracy", "f1"], preds, labels)  # -> {"accuracy": 0.81, "f1": 0.87}

Values are fractions (accuracy 0.81, not 81.0). ``preds`` are class ids for
classification metrics and floats for regression metrics; a 2-D ``preds`` is
argmaxed (logits) or squeezed (one regression output). The computations are
scikit-learn's and scipy's; only the glue (names, nan handling) is ours.

Classification (any number of classes): ``accuracy``; ``matthews`` (alias ``mcc``);
``precision``, ``recall``, ``f1``: binary with class 1 (the second label) positive on two
classes, and the **macro** average on more (sklearn's binary F1 is undefined there);
``*_macro`` and ``*_weighted`` averages; ``*_per_class``: one value per class, reported under the
class's name, ``f1_per_class[negative]``, ``f1_per_class[positive]`` (by index, ``f1_per_class[0]``,
only when the task has no label names; never a main metric). Regression:
``pearson``, ``spearman``, ``mse``, ``rmse``; on a classification task they compare the
class ids as ordered numbers (e.g. star ratings). :func:`check_metrics` refuses, before
training, a classification metric on a regression task and a per-class main metric.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from transferlab.data.task import Task
from transferlab.errors import DataError, SpecError
from transferlab.registry import Registry


@dataclass(frozen=True)
class Metric:
    """A metric function ``fn(preds, labels) -> float`` and whether higher values are better."""

    fn: Callable[[np.ndarray, np.ndarray], float]
    higher_is_better: bool = True
    regression: bool = False  # takes float predictions; otherwise class ids
    per_class: bool = False  # one value per class, reported as name[i]
    takes_classes: bool = False  # fn(preds, labels, num_classes)


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


def _prf(fn: Callable, average: str | None) -> Callable[[np.ndarray, np.ndarray], float]:
    """sklearn's precision/recall/F1; ``average=None``: binary on two classes, else macro."""

    def score(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
        avg = average or ("binary" if num_classes <= 2 else "macro")
        return float(fn(labels, preds, average=avg, zero_division=0.0, **({"pos_label": 1} if avg == "binary" else {})))

    return score


def _per_class(fn: Callable) -> Callable[[np.ndarray, np.ndarray, int], np.ndarray]:
    def scores(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
        return fn(labels, preds, labels=np.arange(num_classes), average=None, zero_division=0.0)

    return scores


METRICS.register("accuracy")(Metric(lambda p, y: float(skm.accuracy_score(y, p))))
METRICS.register("matthews", "mcc")(Metric(lambda p, y: float(skm.matthews_corrcoef(y, p))))
for _name, _fn in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
    METRICS.register(_name)(Metric(_prf(_fn, None), takes_classes=True))
    METRICS.register(f"{_name}_macro")(Metric(_prf(_fn, "macro"), takes_classes=True))
    METRICS.register(f"{_name}_weighted")(Metric(_prf(_fn, "weighted"), takes_classes=True))
    METRICS.register(f"{_name}_per_class")(Metric(_per_class(_fn), per_class=True, takes_classes=True))
METRICS.register("pearson")(Metric(_correlation(stats.pearsonr), regression=True))
METRICS.register("spearman")(Metric(_correlation(stats.spearmanr), regression=True))
METRICS.register("mse")(Metric(lambda p, y: float(skm.mean_squared_error(y, p)), False, True))
METRICS.register("rmse")(Metric(lambda p, y: float(np.sqrt(skm.mean_squared_error(y, p))), False, True))


def base_name(key: str) -> str:
    """``f1_per_class[2]``, ``f1_per_class[positive]`` -> ``f1_per_class``; other names unchanged."""
    return re.sub(r"_per_class\[[^\]]*\]$", "_per_class", key)

# Scored by a task shape from decoded outputs (tag sequences, answer texts; train/shapes.py), or the mean
# main metric of a multi-task run: not functions of class ids, so not in METRICS; all higher-is-better.
STRUCTURED_METRICS = ("entity_f1", "entity_precision", "entity_recall", "token_accuracy", "exact_match", "span_f1",
                      "joint")


def higher_is_better(name: str) -> bool:
    """True for scores (accuracy, f1, ...), False for errors (mse, rmse)."""
    if name in STRUCTURED_METRICS:
        return True
    return METRICS.get(base_name(name), field="metric").higher_is_better


def check_metrics(metrics: Sequence[str], main: str, problem: str, field: str = "task.options.metrics") -> None:
    """Refuse (SpecError, one line) a metric set that cannot be computed for the task's problem."""
    for name in metrics:
        if name in STRUCTURED_METRICS:  # scored by a task shape (tags, answer spans)
            continue
        metric = METRICS.get(name, field=field)
        if problem == "regression" and not metric.regression:
            raise SpecError(f"{field}: {name!r} needs class predictions but the task is a regression task; "
                            "use pearson, spearman, mse or rmse")
    if main not in metrics:
        raise SpecError(f"task.options.main_metric: {main!r} is not one of the metrics {', '.join(metrics)}")
    if main not in STRUCTURED_METRICS and METRICS.get(main, field="task.options.main_metric").per_class:
        raise SpecError(f"task.options.main_metric: {main!r} gives one value per class; choose one number "
                        f"(e.g. {main.replace('_per_class', '_macro')})")


def compute(names: Sequence[str], preds: np.ndarray, labels: np.ndarray,
            num_classes: int | None = None, label_names: Sequence | None = None) -> dict[str, float]:
    """The named metrics of ``preds`` against ``labels``, as plain floats. ``num_classes`` (default:
    the largest class id seen + 1) sizes the per-class metrics and makes f1/precision/recall binary
    (2 classes) or macro (more); ``label_names`` (one per class) name the per-class values."""
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
        if not metric.takes_classes:
            out[name] = metric.fn(p, y)
            continue
        n = num_classes or int(max(y.max(initial=0), p.max(initial=0))) + 1
        if metric.per_class:
            keys = [str(x) for x in label_names] if label_names is not None and len(label_names) == n else range(n)
            out.update({f"{name}[{k}]": float(v) for k, v in zip(keys, metric.fn(p, y, n))})
        else:
            out[name] = metric.fn(p, y, n)
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
    if task.problem == "regression":
        return compute(task.metrics, preds, target)
    return compute(task.metrics, preds, target, task.num_labels, task.label_names)


def constant_baselines(task: Task) -> dict[str, dict[str, float]]:
    """{split: {metric: best value of a constant prediction}} for every labelled split but train."""
    out = {}
    for name, split in task.splits.items():
        if name == "train" or not split.labelled:
            continue
        labels = split.labels
        if task.kind != "sequence":  # tagging: the most frequent tag everywhere; QA: the first sentence
            out[name] = shape_baseline(task, name)
            continue
        if task.problem == "regression":
            out[name] = compute(task.metrics, np.full(len(labels), float(np.mean(labels))), labels)
            continue
        per_class = [compute(task.metrics, np.full(labels.shape, c), labels, task.num_labels, task.label_names)
                     for c in range(task.num_labels)]
        keys = list(per_class[0])  # the metric names, per-class ones expanded (f1_per_class[0], ...)
        out[name] = {m: (max if higher_is_better(m) else min)(s[m] for s in per_class) for m in keys}
    return out


def shape_baseline(task, split: str = "dev") -> dict[str, float]:
    """The baseline of a token task (every word tagged with the most frequent train tag) or a span
    task (the first sentence of the context as the answer)."""
    if task.kind == "token":
        from transferlab.data.tagging import all_outside_baseline

        return all_outside_baseline(task, split)
    from transferlab.data.squad import first_sentence_baseline

    return first_sentence_baseline(task.splits[split])
