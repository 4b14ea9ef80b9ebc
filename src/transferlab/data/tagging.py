"""Scoring for token tasks (``kind="token"``): entity-level precision/recall/F1 and token accuracy.

    tag_metrics([["B-PER", "I-PER", "O"]], [["B-PER", "O", "O"]])
    # -> {"entity_f1": 0.0, "entity_precision": 0.0, "entity_recall": 0.0, "token_accuracy": 0.667}

Entities are read as ``seqeval`` reads them in its default, conlleval-compatible mode (``entities``
below follows its ``get_entities``, so the scores equal seqeval's: tests/test_token_classification.py
compares them where seqeval is installed; it is not a dependency): a chunk starts at ``B-`` (or ``S-``),
or at ``I-`` after a different type or ``O``, so IOB1, IOB2 and IOBES tags are all read correctly.
Scores are micro averaged over entities; token accuracy is the share of words whose tag is right. Values
are fractions. Predictions shorter than the gold sentence (words cut by the model's ``max_length``) are
padded with ``O``: every gold entity counts.
"""

from __future__ import annotations

import numpy as np

from transferlab.data.task import IGNORE

TAG_METRICS = ("entity_f1", "entity_precision", "entity_recall", "token_accuracy")


def _ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """A chunk ended before this word (seqeval's ``end_of_chunk``)."""
    return (prev_tag in ("E", "S") or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
            or (prev_tag not in ("O", ".") and prev_type != type_))


def _starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """A chunk starts at this word (seqeval's ``start_of_chunk``)."""
    return (tag in ("B", "S") or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
            or (tag not in ("O", ".") and prev_type != type_))


def entities(sentence: list[str]) -> set[tuple[str, int, int]]:
    """The (type, first word, last word) chunks of one sentence's tags."""
    found, prev_tag, prev_type, begin = set(), "O", "", 0
    for i, chunk in enumerate([*sentence, "O"]):
        tag, type_ = chunk[:1], chunk[1:].split("-", maxsplit=1)[-1] or "_"
        if _ends(prev_tag, tag, prev_type, type_):
            found.add((prev_type, begin, i - 1))
        if _starts(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return found


def tag_metrics(gold: list[list[str]], pred: list[list[str]], outside: str = "O") -> dict[str, float]:
    """Entity P/R/F1 (micro, seqeval's reading of the tags) and token accuracy of ``pred`` against ``gold``."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(pred)} predicted sentences for {len(gold)} gold sentences")
    pred = [list(p[: len(g)]) + [outside] * (len(g) - len(p)) for g, p in zip(gold, pred)]
    right = n_gold = n_pred = 0
    for g, p in zip(gold, pred):
        g_chunks, p_chunks = entities(list(g)), entities(p)
        right, n_gold, n_pred = right + len(g_chunks & p_chunks), n_gold + len(g_chunks), n_pred + len(p_chunks)
    precision = right / n_pred if n_pred else 0.0
    recall = right / n_gold if n_gold else 0.0
    words = sum(len(g) for g in gold)
    return {
        "entity_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "entity_precision": precision,
        "entity_recall": recall,
        "token_accuracy": sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p)) / words if words else 0.0,
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
