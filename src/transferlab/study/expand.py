"""Expand a study into planned runs, each with a stable run id (the recipe hash and the seed).

A *cell* is one task (and few-sample size) x one arm x one point of the grid; a cell
runs once per seed. Overrides apply in this order: the base spec, the task entry, the
few-sample size, the arm, the grid point, the chosen learning rate, then seed and name.
Runs are ordered seed by seed (every cell's seed 0 first), so a study stopped early
still has balanced cells.

With ``lr_search`` a study has two phases: ``lr`` (every cell x every grid LR x the
search seeds, selected on validation) and ``main`` (every cell at its chosen LR x all
seeds). A main run whose LR and seed were already tried in the search has the same
run id, so it is reused, not run twice.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from transferlab.errors import SpecError
from transferlab.spec import RunSpec, apply_overrides, run_id, spec_from_dict
from transferlab.study.spec import StudySpec, flatten


@dataclass(frozen=True)
class CellDef:
    task: str  # task label: the task name, plus @N for a few-sample size
    arm: str
    cell: str  # the arm plus the grid point, e.g. "bertadam max_steps=400"
    overrides: tuple[tuple[str, Any], ...]  # dotted overrides of the base spec


@dataclass(frozen=True)
class StudyPlan:
    """A study's runs, expanded once and validated once (``plan_study``), then handed on as they are."""

    study: str
    search: list[Planned]  # the LR-search phase ([] without lr_search)
    main: list[Planned]  # the main phase (with lr_search: empty until the LRs are chosen)
    trials: list = field(default_factory=list)  # with a search section: the space's first point per cell (checked)


@dataclass(frozen=True)
class Planned:
    phase: str  # "lr", "search" or "main"
    task: str
    arm: str
    cell: str
    seed: int
    lr: float | None  # the learning rate set by the study (None: the spec's own)
    spec: RunSpec
    run_id: str = field(init=False)  # computed once here, then carried: claim, job, recorder, loop

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_id", run_id(self.spec))

    def plan_row(self) -> tuple:
        return (self.phase, self.run_id, self.task, self.arm, self.cell, self.seed, self.lr)


def _value_label(value: Any) -> str:
    if isinstance(value, dict):  # a whole section, e.g. {name: backbone_for_steps, steps: 300}
        return "/".join(_value_label(v) for v in value.values()) or "{}"
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _axis_names(keys: list[str]) -> list[str]:
    """The last part of each dotted key, or the whole key where last parts collide."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return [k if last.count(s) > 1 else s for k, s in zip(keys, last)]


def _task_entries(study: StudySpec) -> list[tuple[str | None, dict[str, Any]]]:
    """(label or None, dotted task overrides) per task entry; None label: decided from the spec."""
    if not study.tasks:
        return [(None, {})]
    entries = []
    for task in study.tasks:
        overrides = {"task.name": task} if isinstance(task, str) else flatten(task, "task.")
        entries.append((overrides.get("task.name"), overrides))
    names = [n for n, _ in entries]
    return [(f"{n}#{i + 1}" if n is not None and names.count(n) > 1 else None, o) for i, (n, o) in enumerate(entries)]


def cell_defs(study: StudySpec) -> list[CellDef]:
    keys = list(study.grid)
    axis_names = _axis_names(keys)
    base_task = study.base.get("task", {}).get("name", RunSpec().task.name)
    if isinstance(study.base.get("multitask"), dict):  # a multi-task run: named by its tasks
        base_task = "+".join(str(t.get("name")) for t in study.base["multitask"].get("tasks", []))
    out = []
    for label, task_overrides in _task_entries(study):
        name = label or task_overrides.get("task.name", base_task)
        for size in study.few_sample or [None]:
            task = name if size is None else f"{name}@{size}"
            for arm in study.arm_names:
                for combo in itertools.product(*study.grid.values()):
                    overrides = dict(task_overrides)
                    if size is not None:
                        overrides["task.few_sample"] = size
                    overrides.update(study.arms.get(arm, {}))
                    overrides.update(zip(keys, combo))
                    cell = " ".join([arm, *(f"{a}={_value_label(v)}" for a, v in zip(axis_names, combo))])
                    out.append(CellDef(task, arm, cell, tuple(overrides.items())))
    return out


MAX_RUNS = 10_000  # a larger study is refused unless confirmed (`transferlab run --yes`)


def count_runs(study: StudySpec) -> int:
    """How many runs the study plans (LR-search runs included), without expanding it: O(axes)."""
    cells = len(_task_entries(study)) * len(study.few_sample or [None]) * len(study.arm_names)
    for values in study.grid.values():
        cells *= len(values)
    search = len(study.lr_search.grid) * len(study.lr_search.seeds) if study.lr_search is not None else 0
    return cells * (len(study.seeds) + search)


def first_cells(study: StudySpec) -> list[CellDef]:
    """One cell per arm (the first task, few-sample size and grid point): what a dry run of a study too
    large to list checks."""
    keys = list(study.grid)
    label, task_overrides = _task_entries(study)[0]
    out = []
    for arm in study.arm_names:
        overrides = dict(task_overrides)
        if study.few_sample:
            overrides["task.few_sample"] = study.few_sample[0]
        overrides.update(study.arms.get(arm, {}))
        combo = [values[0] for values in study.grid.values()]
        overrides.update(zip(keys, combo))
        out.append(CellDef(label or str(task_overrides.get("task.name", "task")), arm, arm, tuple(overrides.items())))
    return out


def first_runs(study: StudySpec) -> list[RunSpec]:
    return [_build(study, c, study.seeds[0], None, c.cell) for c in first_cells(study)]


def _build(study: StudySpec, cell: CellDef, seed: int, lr: float | None, name: str) -> RunSpec:
    return build_spec(study, cell, seed, {} if lr is None else {"optim.lr": lr}, name)


def build_spec(study: StudySpec, cell: CellDef, seed: int, values: dict[str, Any], name: str) -> RunSpec:
    """The cell's run spec with ``values`` (a chosen LR, a search trial's values) set, then seed and name."""
    overrides = {**dict(cell.overrides), **values}
    overrides.update(seed=seed, name=name)
    try:
        return spec_from_dict(apply_overrides(study.base, overrides))
    except SpecError as e:
        raise SpecError(f"study {study.study}, task {cell.task}, cell {cell.cell!r}: {e}") from None


def _check_unique(planned: list[Planned]) -> list[Planned]:
    seen: dict[str, Planned] = {}
    for p in planned:
        other = seen.setdefault(p.run_id, p)
        if other is not p:
            raise SpecError(
                f"cells {other.cell!r} ({other.task}) and {p.cell!r} ({p.task}) expand to the same run (seed "
                f"{p.seed}): their overrides leave the spec identical; make the tasks, arms or grid values differ"
            )
    return planned


def expand_lr_search(study: StudySpec) -> list[Planned]:
    """The LR-search phase: every cell x every grid learning rate x the search seeds."""
    if study.lr_search is None:
        return []
    cells = cell_defs(study)
    planned = [Planned("lr", c.task, c.arm, c.cell, seed, lr, _build(study, c, seed, lr, f"{c.cell} lr={lr:g}"))
               for seed in study.lr_search.seeds for lr in study.lr_search.grid for c in cells]
    return _check_unique(planned)


def expand(study: StudySpec, lrs: dict[tuple[str, str], float] | None = None,
           chosen: dict[tuple[str, str], dict[str, Any]] | None = None) -> list[Planned]:
    """The main phase: every cell x every seed, at the chosen LR of the cell when ``lr_search`` is set,
    at the best trial's values when ``search`` is set (study/search.py).

    ``lrs`` maps (task, cell) to the chosen LR, ``chosen`` to the chosen values; cells without
    one are left out (not chosen yet).
    """
    cells = cell_defs(study)
    planned = []
    for seed in study.seeds:
        for c in cells:
            values: dict[str, Any] = {}
            if study.lr_search is not None:
                if lrs is None or (c.task, c.cell) not in lrs:
                    continue
                values = {"optim.lr": lrs[(c.task, c.cell)]}
            if study.search is not None:
                if chosen is None or (c.task, c.cell) not in chosen:
                    continue
                values = dict(chosen[(c.task, c.cell)])
            planned.append(Planned("main", c.task, c.arm, c.cell, seed, values.get("optim.lr"),
                                   build_spec(study, c, seed, values, c.cell)))
    return _check_unique(planned)


def plan_study(study: StudySpec, validate: bool = True, store=None) -> StudyPlan:
    """Expand both phases once and check every spec (values, files, models) before a row exists.
    ``store``: where stored runs named by transplant and distill steps are looked up."""
    trials = sample_specs(study) if study.search is not None else []
    plan = StudyPlan(study.study, expand_lr_search(study), expand(study), trials)
    if validate:
        from transferlab.train.validate import validate_runs

        validate_runs([p.spec for p in plan.search + plan.main] + plan.trials, store)
    return plan


def search_point(search) -> dict[str, Any]:
    """A point of the space (each first choice, each range's low end): the runs' values are checked there."""
    return {k: d[0] if isinstance(d, list) else (int(d["low"]) if d["type"] == "int" else d["low"])
            for k, d in search.space.items()}


def sample_specs(study) -> list:
    """One run spec per cell at a point of the space: validate_runs checks them before any row."""
    point = search_point(study.search)
    return [build_spec(study, c, study.search.seeds[0], point, c.cell) for c in cell_defs(study)]
