"""Study specs: one YAML file for many seeds, recipes and tasks.

    study: few-sample-rte            # the study's name in the store (this key marks a study file)
    base: {model: {name: minilm}, task: {name: rte, split_dev: true}, ...}   # a run spec
    arms:                            # name -> overrides of the base (dotted keys or nested mappings)
      bertadam: {optim.name: bertadam}
      debiased-adam: {optim.name: adamw}
    baseline: debiased-adam          # the arm every other arm is tested against
    grid: {train.max_steps: [null, 400]}   # axes over any run spec field: every combination runs
    seeds: {start: 0, stop: 10}      # or a list: [0, 1, 2]
    tasks: [rte, {name: mrpc}]       # task names or task sections; default: the base task
    few_sample: [1000]               # values of task.few_sample
    lr_search: {grid: [1e-5, 2e-5, 5e-5], seeds: [0, 1, 2]}   # per cell, chosen on validation
    search: {space: {optim.lr: {low: 1e-5, high: 1e-3, log: true}}, trials: 20, seeds: [100, 101],
             sampler: tpe, pruner: median, objective: mean}   # per cell, Optuna (study/search.py)
    degenerate_margin: 0.01          # a run is degenerate unless it beats the constant baseline by this
    threshold: 0.6                   # steps to reach this dev value of the main metric
    logging: {tensorboard: runs/tb}  # optional: log every run live to TensorBoard / MLflow / W&B (train/track.py)
    report: {tost_margin: 0.01, exclude_search_seeds: true}   # how the report analyses (not what runs)
    profiles: {cpu: {base.train.epochs: 2, seeds: [0, 1, 2]}, gpu: {...}}   # sizes: `--profile cpu` (profiles.py)

``--set`` reaches any key of the file: ``--set base.task.path=DIR``, ``--set 'seeds=[0, 1]'``,
``--set 'grid.train.max_steps=[400]'`` (nested and dotted grid keys are the same axis).

Every key is checked: an unknown key, a grid axis or arm override naming an unknown run
spec field, an arm that overrides nothing and an empty seed list are errors naming the
field and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferlab.errors import SpecError
from transferlab.spec import apply_overrides, check_plain, flatten, read_yaml, spec_from_dict, to_dict  # noqa: F401
from transferlab.study.fields import MAX_SEEDS, check_field, resolve_seeds  # noqa: F401  (re-exported)
from transferlab.train.track import TrackingSpec


@dataclass
class LRSearch:
    """Fair learning rates (Rothermel et al. 2021): each cell tries ``grid`` with ``seeds``, on validation."""

    grid: list[float] = field(default_factory=list)
    seeds: Any = field(default_factory=lambda: [0, 1, 2])  # a list or {start, stop}
    metric: str | None = None  # default: the task's main metric, on the dev (validation) split


@dataclass
class SearchSpec:
    """A hyper-parameter search per cell with Optuna (the ``search`` extra; study/search.py).

    space: dotted run spec field -> a list of choices, or {low, high, log, step, type: float|int}.
    trials: trials per cell (the budget; not part of the study's identity, so raising it extends
        a finished search). sampler: tpe | random | grid. seeds: each trial's runs (list or range).
    objective: mean (of the seeds' final dev scores) or lcb (mean - lcb_k * sd / sqrt(n): a
        pessimistic bound; mean + for lower-is-better metrics). pruner: none | median | halving, at
        the dev evaluations of the runs. storage: Optuna's storage URL (default: an SQLite file
        beside the store, ``<store stem>.optuna.db``)."""

    space: dict[str, Any] = field(default_factory=dict)
    trials: int = 20
    sampler: str = "tpe"
    seeds: Any = field(default_factory=lambda: [0, 1])
    objective: str = "mean"
    lcb_k: float = 1.0
    pruner: str = "none"
    pruner_options: dict[str, Any] = field(default_factory=dict)  # e.g. {n_startup_trials: 2} (Optuna's arguments)
    metric: str | None = None  # default: the task's main metric, on the dev (validation) split
    sampler_seed: int = 0
    storage: str | None = None


LoggingSpec = TrackingSpec  # logging: {tensorboard, mlflow, mlflow_experiment, wandb, wandb_mode, wandb_dir}


@dataclass
class ReportSpec:
    """How the report analyses the study; not part of the study's identity (changing it reruns nothing).

    tost_margin: the equivalence margin of TOST, in units of the main metric (e.g. 0.01 = one point of
        accuracy): "no meaningful difference" is |difference| < margin. Stated here, before the runs,
        as a pre-registered design choice; ``transferlab report --tost-margin`` overrides it.
    exclude_search_seeds: runs of the LR-search seeds chose the LR, so they are biased upward in the
        reported cells (on by default; ``transferlab report --include-search-seeds`` keeps them).
    """

    tost_margin: float | None = None
    exclude_search_seeds: bool = True


@dataclass
class StudySpec:
    study: str = ""
    description: str = ""
    base: dict[str, Any] = field(default_factory=dict)
    arms: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None
    grid: dict[str, Any] = field(default_factory=dict)
    seeds: Any = field(default_factory=lambda: [0])
    tasks: list[Any] | None = None
    few_sample: list[int] | None = None
    lr_search: LRSearch | None = None
    search: SearchSpec | None = None
    degenerate_margin: float = 0.01
    threshold: float | None = None
    logging: LoggingSpec = field(default_factory=LoggingSpec)
    report: ReportSpec = field(default_factory=ReportSpec)

    def validate(self) -> None:
        if not self.study.strip():
            raise SpecError("study: a study needs a name (the top-level key `study`)")
        if self.report.tost_margin is not None and not self.report.tost_margin > 0:
            raise SpecError(f"report.tost_margin: the equivalence margin must be > 0, got {self.report.tost_margin}")
        self.seeds = resolve_seeds(self.seeds, "seeds")
        try:
            spec_from_dict(self.base)
        except SpecError as e:
            raise SpecError(f"base: {e}") from None
        for name, overrides in self.arms.items():
            overrides = {} if overrides is None else overrides
            if not isinstance(overrides, dict):
                raise SpecError(f"arms.{name}: expected a mapping of overrides, got {overrides!r}")
            flat = flatten(overrides)
            if not flat:
                raise SpecError(f"arms.{name}: the arm overrides nothing; give at least one field, "
                                "e.g. {optim.name: bertadam}")
            for key in flat:
                check_field(key, f"arms.{name}")
            self.arms[name] = flat
        if self.baseline is not None and self.baseline not in self.arms:
            raise SpecError(f"baseline: {self.baseline!r} is not an arm; arms: {', '.join(self.arms) or '(none)'}")
        self.grid = flatten(self.grid)  # {optim: {lr: [..]}} and {optim.lr: [..]} alike (--set grid.optim.lr=..)
        for key, values in self.grid.items():
            check_field(key, "grid")
            if key in ("seed", "name"):
                raise SpecError(f"grid: {key!r} cannot be a grid axis; seeds go in `seeds`, names come from arms")
            if not isinstance(values, list) or not values:
                raise SpecError(f"grid.{key}: expected a non-empty list of values, got {values!r}")
        if self.few_sample is not None and (not self.few_sample or any(n < 1 for n in self.few_sample)):
            raise SpecError(f"few_sample: expected a non-empty list of sizes >= 1, got {self.few_sample!r}")
        for i, task in enumerate(self.tasks or []):
            if not isinstance(task, (str, dict)):
                raise SpecError(f"tasks[{i}]: expected a task name or a task section, got {task!r}")
        if self.tasks is not None and not self.tasks:
            raise SpecError("tasks: the list is empty; leave it out to use the base task")
        if self.lr_search is not None:
            self._check_lr_search()
        if self.search is not None:
            from transferlab.study.search_space import check_search  # the space's checks live with the search

            check_search(self)

    def _check_lr_search(self) -> None:
        search = self.lr_search
        if not search.grid or any(lr <= 0 for lr in search.grid):
            raise SpecError(f"lr_search.grid: expected a non-empty list of positive learning rates, got {search.grid}")
        search.seeds = resolve_seeds(search.seeds, "lr_search.seeds")
        if "optim.lr" in self.grid:
            raise SpecError("grid.optim.lr: the learning rate is chosen by lr_search; drop one of the two")
        for name, flat in self.arms.items():
            if "optim.lr" in flat:
                raise SpecError(f"arms.{name}: sets optim.lr but lr_search chooses each arm's learning rate; "
                                "drop one of the two")

    @property
    def arm_names(self) -> list[str]:
        return list(self.arms) or [self.base.get("name", "base")]


def load_study(source: str | Path | dict[str, Any], overrides: list[str] | dict[str, Any] = (),
               profile: str | None = None) -> StudySpec:
    """A checked StudySpec from a YAML file or plain data; ``overrides`` as in ``--set base.optim.lr=1e-5``;
    ``profile``: one of the file's ``profiles`` applied first (study/profiles.py; stored as ``<study>@<profile>``)."""
    from transferlab.study.profiles import apply_profile

    if not isinstance(source, (str, Path, dict)):
        raise SpecError(f"load_study: expected a YAML file path or a dict, got {type(source).__name__}")
    if isinstance(source, dict):
        check_plain(source, "load_study")
    data = source if isinstance(source, dict) else read_yaml(source)
    data = apply_profile(data, profile, StudySpec)
    data = apply_overrides(data, overrides or [])
    return spec_from_dict(data, StudySpec)


def is_study(data: dict[str, Any]) -> bool:
    """A YAML mapping is a study (not a run spec) when it has a top-level ``study`` or ``arms`` key."""
    return "study" in data or "arms" in data


def study_hash(study: StudySpec) -> str:
    """The study's identity in the store: its resolved definition, without the description, logging, report."""
    data = {k: v for k, v in to_dict(study).items() if k not in ("description", "logging", "report")}
    if data.get("search"):  # the budget is not the identity: more trials extend a search
        data["search"] = {k: v for k, v in data["search"].items() if k != "trials"}
    else:
        data.pop("search", None)  # a study without a search keeps the hash it had before the section existed
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
