"""Evaluation splits a task declares beyond ``dev`` and ``test`` (``task.extra["eval_splits"]``).

MNLI declares its mismatched dev set (split ``dev_mm``): a run selects and reports on ``dev``
(matched accuracy, the main metric, as GLUE's leaderboard lists MNLI-m first) and, at the end,
also evaluates ``dev_mm`` with the final weights, so both figures are stored with the run:
``summary["extra_evals"]["dev_mm"]`` and eval rows of split ``dev_mm``.
"""

from __future__ import annotations


def extra_splits(task) -> list[str]:
    """The labelled splits the task wants evaluated at the end besides dev and test."""
    return [name for name in task.extra.get("eval_splits", ()) if name in task.splits and task.splits[name].labelled]

