"""The ``search:`` section's space and its checks (called by StudySpec.validate, before anything runs):
dimensions, grid values, the trial budget, and Optuna's pruners by name. The search itself (Optuna's
studies, trials, resume) is study/search.py, above the study's plan."""

from __future__ import annotations

import math
from typing import Any

from transferlab.errors import SpecError, UserError

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median", "halving")
OBJECTIVES = ("mean", "lcb")
DIM_KEYS = ("low", "high", "log", "step", "type")


# --------------------------------------------------------------------------- the section's checks
def _dimension(key: str, value: Any) -> Any:
    """A checked dimension: a list of choices, or {low, high, log, step, type}."""
    where = f"search.space.{key}"
    if isinstance(value, list):
        if not value:
            raise SpecError(f"{where}: the list of choices is empty; give at least one value")
        if any(not (v is None or isinstance(v, (bool, int, float, str))) for v in value):
            raise SpecError(f"{where}: choices must be plain values (numbers, strings, booleans, null), got {value!r}")
        return value
    if not isinstance(value, dict):
        raise SpecError(f"{where}: expected a list of choices or {{low, high, log, step, type}}, got {value!r}")
    unknown = [k for k in value if k not in DIM_KEYS]
    if unknown or "low" not in value or "high" not in value:
        raise SpecError(f"{where}: a range is {{low, high, log: false, step: null, type: float|int}}, got {value!r}")
    low, high, kind = value["low"], value["high"], value.get("type", "float")
    if kind not in ("float", "int"):
        raise SpecError(f"{where}.type: {kind!r} is not one of float, int")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in (low, high)):
        raise SpecError(f"{where}: low and high must be numbers, got {low!r} and {high!r}")
    if not low < high:
        raise SpecError(f"{where}: low must be below high, got low {low} and high {high}")
    if value.get("log") and low <= 0:
        raise SpecError(f"{where}: a log range needs low > 0, got {low}")
    step = value.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise SpecError(f"{where}.step: expected a positive number, got {step!r}")
    if value.get("log") and step is not None:
        raise SpecError(f"{where}: Optuna takes either log or step, not both")
    if kind == "int" and any(float(v) != int(v) for v in (low, high, step or 1)):
        raise SpecError(f"{where}: an int range needs integer low, high and step, got {value!r}")
    return {"low": low, "high": high, "log": bool(value.get("log")), "step": step, "type": kind}


def grid_values(key: str, dim: Any) -> list:
    """The grid sampler's values of a dimension: its choices, or an int range / float range with a step."""
    if isinstance(dim, list):
        return dim
    if dim["type"] == "int" and not dim["log"]:
        return list(range(int(dim["low"]), int(dim["high"]) + 1, int(dim["step"] or 1)))
    if dim["step"] is not None:
        n = int(math.floor((dim["high"] - dim["low"]) / dim["step"] + 1e-9))
        return [dim["low"] + i * dim["step"] for i in range(n + 1)]
    raise SpecError(f"search.space.{key}: the grid sampler needs a list of choices or a range with a step")


def check_search(study) -> None:
    """Every key of ``search`` (called by StudySpec.validate, before anything runs)."""
    from transferlab.study.fields import check_field, resolve_seeds

    s = study.search
    if study.lr_search is not None:
        raise SpecError("search: a study takes lr_search or search, not both (put optim.lr in search.space)")
    if not isinstance(s.space, dict) or not s.space:
        raise SpecError("search.space: the space is empty; give at least one field, e.g. "
                        "{optim.lr: {low: 1e-5, high: 1e-3, log: true}}")
    if s.sampler not in SAMPLERS:
        raise SpecError(f"search.sampler: {s.sampler!r} is not one of {', '.join(SAMPLERS)}")
    if s.pruner not in PRUNERS:
        raise SpecError(f"search.pruner: {s.pruner!r} is not one of {', '.join(PRUNERS)}")
    if s.objective not in OBJECTIVES:
        raise SpecError(f"search.objective: {s.objective!r} is not one of {', '.join(OBJECTIVES)}")
    if isinstance(s.trials, bool) or not isinstance(s.trials, int) or s.trials < 1:
        raise SpecError(f"search.trials: expected a number of trials >= 1, got {s.trials!r}")
    if not s.lcb_k >= 0:
        raise SpecError(f"search.lcb_k: expected a number >= 0, got {s.lcb_k!r}")
    s.seeds = resolve_seeds(s.seeds, "search.seeds")
    s.space = _flat_space(s.space)
    for key in list(s.space):
        check_field(key, "search.space")
        if key in ("seed", "name"):
            raise SpecError(f"search.space: {key!r} cannot be searched; seeds go in search.seeds")
        if key in study.grid:
            raise SpecError(f"search.space.{key}: also a grid axis; drop one of the two")
        for arm, flat in study.arms.items():
            if key in flat:
                raise SpecError(f"arms.{arm}: sets {key} but search.space searches it; drop one of the two")
        s.space[key] = _dimension(key, s.space[key])
    if s.sampler == "grid":
        for key, dim in s.space.items():
            grid_values(key, dim)
    if not isinstance(s.pruner_options, dict) or (s.pruner_options and s.pruner == "none"):
        raise SpecError(f"search.pruner_options: options of a pruner (median, halving), got {s.pruner_options!r}"
                        f" with pruner {s.pruner}")
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise SpecError("search: needs Optuna: pip install 'transferlab[search]'") from None
    make_pruner(s.pruner, s.pruner_options)
    if s.metric is not None:
        from transferlab.data.metrics import higher_is_better

        higher_is_better(s.metric)  # an unknown metric name: one line


def _flat_space(space: dict, prefix: str = "") -> dict:
    """``{optim: {lr: {low, high}}}`` (as ``--set search.space.optim.lr=...`` writes it) and
    ``{optim.lr: {low, high}}`` alike; a mapping with a range key is a dimension, not a section."""
    out = {}
    for key, value in space.items():
        if isinstance(value, dict) and value and not set(value) & set(DIM_KEYS):
            out.update(_flat_space(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def grid_size(search) -> int:
    return math.prod(len(grid_values(k, d)) for k, d in search.space.items())


def budget(search) -> int:
    """Trials per cell: ``trials``, at most the grid's size under the grid sampler."""
    return min(search.trials, grid_size(search)) if search.sampler == "grid" else search.trials


def _optuna():
    try:
        import optuna
    except ImportError:
        raise UserError("search: needs Optuna: pip install 'transferlab[search]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def make_pruner(name: str, options: dict | None = None):
    """Optuna's pruner: median (MedianPruner) or halving (SuccessiveHalvingPruner), with ``options``."""
    optuna = _optuna()
    cls = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
           "halving": optuna.pruners.SuccessiveHalvingPruner}[name]
    try:
        return cls(**(options or {}))
    except (TypeError, ValueError) as e:
        raise SpecError(f"search.pruner_options: {cls.__name__} refuses {options!r}: {e}") from None
