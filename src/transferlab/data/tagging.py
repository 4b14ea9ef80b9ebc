"""Scoring for token tasks (``kind="token"``): entity-level precision/recall/F1 and token accuracy.

    tag_metrics([["B-PER", "I-PER", "O"]], [["B-PER", "O", "O"]])
    # -> {"entity_f1": 0.0, "entity_precision": 0.0, "entity_recall": 0.0, "token_accuracy": 0.667}

Entities are scored by ``seqeval`` (its default, conlleval-compatible mode: a chunk starts at ``B-``,
or at ``I-`` after a different type or ``O``, so IOB1 and IOB2 tags are both read correctly), micro
averaged over entities; token accuracy is the share of words whose tag is right (``seqeval``'s
``accuracy_score``). Values are fractions. Predictions shorter than the gold sentence (words cut by
the model's ``max_length``) are padded with ``O``: every gold entity counts.
"""

from __future__ import annotations

import numpy as np
from seqeval import metrics as sq

from transferlab.data.task import IGNORE

TAG_METRICS = ("entity_f1", "entity_precision", "entity_recall", "token_accuracy")


def tag_metrics(gold: list[list[str]], pred: list[list[str]], outside: str = "O") -> dict[str, float]:
    """Entity P/R/F1 (seqeval, micro) and token accuracy of tag sequences ``pred`` against ``gold``."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(pred)} predicted sentences for {len(gold)} gold sentences")
    pred = [list(p[: len(g)]) + [outside] * (len(g) - len(p)) for g, p in zip(gold, pred)]
    return {
        "entity_f1": float(sq.f1_score(gold, pred, zero_division=0)),
        "entity_precision": float(sq.precision_score(gold, pred, zero_division=0)),
        "entity_recall": float(sq.recall_score(gold, pred, zero_division=0)),
        "token_accuracy": float(sq.accuracy_score(gold, pred)),
    }


def tags_of(labels: np.ndarray, names: list[str]) -> list[list[str]]:
    """IGNORE-padded (N, W) tag ids -> N tag-name lists."""
    return [[names[int(t)] for t in row if t != IGNORE] for row in np.asarray(labels)]


def all_outside_baseline(task, split: str = "dev") -> dict[str, float]:
    """The metrics of tagging every word with the train split's most frequent tag (``O`` in NER)."""
    train = task.splits["train"].labels
    counts = np.bincount(train[train >= 0].astype(np.int64), minlength=task.num_labels)
    gold = tags_of(task.splits[split].labels, task.label_names)
    tag = task.label_names[int(counts.argmax())]
    return tag_metrics(gold, [[tag] * len(g) for g in gold])
