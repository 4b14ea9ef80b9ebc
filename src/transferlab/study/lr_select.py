"""Per-cell learning rates chosen on validation (Rothermel et al. 2021: one LR for all arms
changes conclusions; each arm deserves its own, picked without touching test).

Each LR of the grid is scored by the mean over the search seeds of the run's final
``dev`` metric (the validation half under ``task.split_dev``). A diverged run scores as
the constant-prediction baseline on dev (it learned nothing usable); a failed or missing
run is left out. Ties go to the LR listed first. The choice, with every LR's score, is
stored in the store (``study_values``, key ``lr/<task>/<cell>``) and shown in the report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from transferlab.data.metrics import higher_is_better
from transferlab.errors import UserError
from transferlab.store import RunRow, Store
from transferlab.study.expand import Planned


@dataclass
class LRChoice:
    task: str
    cell: str
    lr: float
    metric: str
    scores: list[tuple[float, float, int]] = field(default_factory=list)  # (lr, mean score, runs scored)

    @property
    def key(self) -> str:
        return f"lr/{self.task}/{self.cell}"


def score(row: RunRow, metric: str | None) -> tuple[str, float] | None:
    """(metric, validation score) of a stored run, or None when it cannot be scored."""
    metric = metric or row.summary.get("main_metric")
    if row.status == "finished":
        value = row.summary.get("dev", {}).get(metric)
    elif row.status == "diverged":
        value = row.summary.get("baselines", {}).get("dev", {}).get(metric)
    else:
        value = None
    return None if value is None or metric is None else (metric, float(value))


def latest(store: Store, rid: str) -> RunRow | None:
    rows = store.runs(run_id=rid)
    return rows[-1] if rows else None


def choose(store: Store, planned: list[Planned], metric: str | None = None) -> dict[tuple[str, str], LRChoice]:
    """The best LR per (task, cell) from the stored LR-search runs in ``planned``."""
    values: dict[tuple[str, str], dict[float, list[float]]] = {}
    metrics: dict[tuple[str, str], str] = {}
    for p in planned:
        lrs = values.setdefault((p.task, p.cell), {})
        lrs.setdefault(p.lr, [])
        row = latest(store, p.run_id)
        scored = score(row, metric) if row is not None else None
        if scored is not None:
            metrics[(p.task, p.cell)] = scored[0]
            lrs[p.lr].append(scored[1])
    choices = {}
    for key, lrs in values.items():
        scores = [(lr, float(np.mean(v)), len(v)) for lr, v in lrs.items() if v]
        if not scores:
            raise UserError(f"LR search for {key[0]} / {key[1]}: no run could be scored (all failed?); "
                            f"see `transferlab runs --study ...`")
        m = metrics[key]
        best = (max if higher_is_better(m) else min)(scores, key=lambda s: s[1])  # first of equals wins
        choices[key] = LRChoice(key[0], key[1], best[0], m, scores)
    return choices


def record(store: Store, study: str, choices: dict[tuple[str, str], LRChoice]) -> None:
    for choice in choices.values():
        store.set_study_value(study, choice.key, asdict(choice))


def stored_choices(store: Store, study: str) -> dict[tuple[str, str], float]:
    """(task, cell) -> chosen LR, as recorded by an earlier run of the study."""
    return {(v["task"], v["cell"]): v["lr"] for k, v in store.study_values(study).items() if k.startswith("lr/")}
