"""Degenerate runs: a final score not above what a constant prediction gets.

Zhang et al. (2021) and Mosbach et al. (2021) count fine-tuning runs that end at the
majority-class baseline. The baseline here is the best constant prediction on the
split being scored (for classification: the best single class for each metric; for
regression: the split's mean), so a run whose train set was balanced by the few-sample
protocol is still compared with the majority class of the split it is scored on.
The loop stores these baselines with every run (``summary["baselines"]``); the study
and the report flag a run as degenerate when its main metric is not better than the
baseline by at least ``degenerate_margin``.
"""

from __future__ import annotations

from transferlab.data.metrics import higher_is_better


def is_degenerate(summary: dict, split: str, margin: float) -> bool | None:
    """True when the run's main metric on ``split`` is not beyond the constant baseline by ``margin``.

    None when the run has no such metric or baseline (a diverged or failed run).
    """
    metric = summary.get("main_metric")
    value = (summary.get(split) or {}).get(metric)
    base = (summary.get("baselines") or {}).get(split, {}).get(metric)
    if metric is None or value is None or base is None:
        return None
    if higher_is_better(metric):
        return not value > base + margin
    return not value < base - margin
