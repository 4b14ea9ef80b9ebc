"""The report's unit: a cell, the runs of one task x arm (and grid point) over seeds, read from the store.

    all_cells = cells(Store("runs/transferlab.db"), study="few-sample-rte")
    all_cells[0].values("accuracy")    # one value per finished seed, on the cell's split

Every table and figure of the report (document.py, tables.py, analysis.py, plots.py) is computed
from these cells. A study's cells follow its stored plan; runs outside a plan pool by (study,
task, run name), and only seeds of one recipe pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from transferlab.store import RunRow, Store


@dataclass
class Cell:
    study: str
    task: str
    arm: str  # the label shown: the arm, plus the grid point in a study
    runs: list[RunRow] = field(default_factory=list)
    study_arm: str = ""  # a study's arm without the grid point (pairs cells with the baseline arm)
    lr: float | None = None  # the learning rate the study chose for the cell
    excluded: list[RunRow] = field(default_factory=list)  # runs of LR-search seeds, left out of the statistics

    @property
    def split(self) -> str:
        return "test" if all(r.summary.get("test") for r in self.finished) and self.finished else "dev"

    @property
    def finished(self) -> list[RunRow]:
        return [r for r in self.runs if r.status == "finished"]

    def values(self, metric: str, split: str | None = None) -> np.ndarray:
        split = split or self.split
        return np.array([r.summary[split][metric] for r in self.finished if metric in r.summary.get(split, {})])

    @property
    def main_metric(self) -> str:
        """The runs' main metric: from the first run that has one (a run still training has no summary)."""
        return next((m for r in self.runs if (m := r.summary.get("main_metric"))), "")


def search_seeds(store: Store, study: str, include: bool | None = None) -> set[int]:
    """The LR-search seeds a study's reported cells leave out: none when the study has no LR search or
    its ``report.exclude_search_seeds`` is false; ``include`` (the report's flag) overrides the spec."""
    meta = store.study_spec(study) or {}
    exclude = (meta.get("report") or {}).get("exclude_search_seeds", True) if include is None else not include
    searched = (meta.get("lr_search") or {}).get("seeds") or (meta.get("search") or {}).get("seeds") or []
    return set(searched) if exclude else set()


def cells(store: Store, study: str | None = None, include_search_seeds: bool | None = None) -> list[Cell]:
    groups: dict[tuple, Cell] = {}
    planned = [s for s, _, _ in store.studies() if study in (None, s) and store.study_plan(s, "main")]
    for s in planned:
        left_out = search_seeds(store, s, include_search_seeds)
        for _, rid, task, arm, label, seed, lr in store.study_plan(s, "main"):
            cell = groups.setdefault((s, task, label), Cell(s, task, label, study_arm=arm, lr=lr))
            rows = store.runs(run_id=rid)
            done = [r for r in rows if r.status == "finished"]
            if rows:
                (cell.excluded if seed in left_out else cell.runs).append(done[-1] if done else rows[-1])
    # runs outside a study plan: seeds of one recipe pool, never runs that differ in anything but the seed
    adhoc = [r for r in store.runs(study=study, latest=True) if r.study not in planned]
    recipes: dict[tuple, set] = {}
    for r in adhoc:
        recipes.setdefault((r.study or "", r.spec.get("task", {}).get("name", ""), r.name or "run"), set()).add(
            recipe_of(r))
    for r in adhoc:
        key = (r.study or "", r.spec.get("task", {}).get("name", ""), r.name or "run")
        label = key[2] if len(recipes[key]) == 1 else f"{key[2]} [{recipe_of(r)[:6]}]"  # same name, other recipe
        groups.setdefault((*key[:2], label), Cell(key[0], key[1], label)).runs.append(r)
    return list(groups.values())


def recipe_of(r: RunRow) -> str:
    """The recipe hash of a run (its spec without seed and name): the run id before ``-s<seed>``."""
    return r.run_id.rsplit("-s", 1)[0]
