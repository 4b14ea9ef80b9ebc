"""The few-sample protocol (Zhang et al. 2021, "Revisiting Few-sample BERT Fine-tuning").

    task: {name: rte, few_sample: 1000, split_dev: true}

``few_sample: N`` keeps N training examples, class-balanced (the same count per class,
the remainder spread over the classes in a seeded order; a class with too few examples
gives its share to the others) and drawn with the run seed, or with
``task.options.sample_seed`` when set. Regression tasks draw N examples at random.

``split_dev: true`` splits the dev set per class into two halves: the first becomes the
``dev`` split the loop selects on (validation), the second the ``test`` split the study
reports on, so model selection never touches test. The halves do not depend on the run
seed (they use ``sample_seed`` or 0), so every run of a study is scored on the same
examples. A task's own test split is replaced (GLUE's is unlabelled anyway).
"""

from __future__ import annotations

import numpy as np

from transferlab.data.task import Task
from transferlab.errors import DataError, SpecError


def balanced_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` sorted indices with (as nearly as the data allows) the same count per class."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, inverse = np.unique(labels, return_inverse=True)
    pools = [rng.permutation(np.flatnonzero(inverse == c)) for c in range(len(classes))]
    take = np.zeros(len(classes), dtype=int)
    left = n
    open_ = list(range(len(classes)))
    while left > 0 and open_:  # water-filling: equal shares, capped by each class's size
        share, extra = divmod(left, len(open_))
        order = rng.permutation(open_)
        for i, c in enumerate(order):
            take[c] += min(share + (i < extra), len(pools[c]) - take[c])
        left = n - int(take.sum())
        open_ = [c for c in open_ if take[c] < len(pools[c])]
    return np.sort(np.concatenate([p[:k] for p, k in zip(pools, take)]))


def half_split(labels: np.ndarray, seed: int, stratify: bool) -> tuple[np.ndarray, np.ndarray]:
    """(first, second) halves of ``range(len(labels))``, per class when ``stratify``."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)] if stratify else [np.arange(len(labels))]
    first, second = [], []
    for g in groups:
        g = rng.permutation(g)
        cut = (len(g) + 1) // 2
        first.append(g[:cut])
        second.append(g[cut:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def apply_protocol(task: Task, spec, seed: int) -> Task:
    """Apply ``spec.split_dev`` and ``spec.few_sample`` (a TaskSpec) to a freshly built task."""
    sample_seed = spec.options.get("sample_seed")
    classification = task.problem == "classification" and task.kind == "sequence"  # tagging, QA: N at random
    if spec.split_dev:
        dev = task.splits["dev"]
        if not dev.labelled:
            raise DataError(f"task {task.name}: task.split_dev needs a labelled dev split")
        if len(dev) < 2:
            raise DataError(f"task {task.name}: task.split_dev needs at least 2 dev examples, got {len(dev)}")
        first, second = half_split(dev.labels, 0 if sample_seed is None else sample_seed, classification)
        task.splits["dev"], task.splits["test"] = dev.subset(first), dev.subset(second)
        task.extra["split_dev"] = {"validation": len(first), "test": len(second)}
    if spec.few_sample is not None:
        n = spec.few_sample
        train = task.splits["train"]
        if n < 1:
            raise SpecError(f"task.few_sample: must be at least 1, got {n}")
        if n > len(train):
            raise DataError(f"task.few_sample: {n} exceeds the {len(train)} training examples of {task.name}")
        s = seed if sample_seed is None else sample_seed
        if classification:
            index = balanced_indices(train.labels, n, s)
        else:
            index = np.sort(np.random.default_rng(s).choice(len(train), size=n, replace=False))
        task.splits["train"] = train.subset(index)
        task.extra["few_sample"] = n
    return task

