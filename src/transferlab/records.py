"""Typed records of a run: what the engine writes once and the store, report, runner and CLI read.

    summary = RunSummary(steps=120, total_steps=120, main_metric="accuracy", dev={"accuracy": 0.71})
    store.finish_run(uid, "finished", summary=summary)        # stored as JSON (``to_dict``)
    row.summary.test.get("accuracy"); row.summary.engine.kind # read back typed (``from_dict``)

``RunSummary`` is also a read-only mapping over its JSON field names (``summary["dev"]``,
``summary.get("test")``), so plain-data consumers (JSON export, tracking) need no second form.
Keys written by older releases that are not fields here land in ``transfer`` (the transplant and
init report was merged into the top level of the old untyped summary).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


def data_sizes(splits: Mapping[str, Any], prefix: str = "") -> dict[str, int]:
    """{split: number of examples} of a task's loaded splits (``task.splits``), train first."""
    order = sorted(splits, key=lambda n: (n != "train", n != "dev", n != "test", n))
    return {f"{prefix}{name}": len(splits[name]) for name in order}


def format_sizes(sizes: Mapping[str, int]) -> str:
    """``train 2490  dev 277  test 3000`` (the run output, --dry-run); ``""`` when unknown."""
    return "  ".join(f"{name} {n:,}" for name, n in sizes.items())


@dataclass
class EngineInfo:
    """Which engine trained a run: ``single`` (one model) or ``stacked`` (``seeds`` models stacked)."""

    kind: str = "single"
    seeds: int = 1
    compiled: bool = False
    device: str = "cpu"
    precision: str = "fp32"
    reason: str | None = None  # why a requested faster engine was not used

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> EngineInfo:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in names})

    def label(self) -> str:
        """Short form for tables: ``single``, ``stacked x4``, ``+compile``."""
        text = self.kind if self.seeds == 1 else f"{self.kind} x{self.seeds}"
        return text + (" +compile" if self.compiled else "")


@dataclass
class RunSummary(Mapping):
    steps: int = 0
    total_steps: int = 0
    main_metric: str = ""
    dev: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    extra_evals: dict[str, dict[str, float]] = field(default_factory=dict)  # splits beyond dev/test (MNLI's dev_mm)
    best_step: int | None = None
    baseline: dict[str, float] = field(default_factory=dict)  # the task's chance level on dev
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)  # constant predictors, per split
    n_params: int = 0
    n_trainable: int = 0
    n_trainable_start: int | None = None  # set when a policy unfroze parameters during training
    trainable_share: float = 0.0
    error: str | None = None
    error_step: int | None = None
    engine: EngineInfo = field(default_factory=EngineInfo)
    samples_per_s: float | None = None  # training examples per second of this run's share of the time
    transfer: dict[str, Any] = field(default_factory=dict)  # init and transplant report
    # multi-task runs (train/multitask.py): each task's dev, test, baseline and main metric; the sampler;
    # the optimizer steps each task took
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    sampler: str | None = None
    task_steps: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # what other commands add (surgery, ...)
    # examples loaded per split, after max_*_samples and few-shot draws: {"train": 2490, "dev": 277}
    # (a multi-task run: "rte.train", ...); :func:`data_sizes`
    data_sizes: dict[str, int] = field(default_factory=dict)

    # ------------------------------------------------------------------ JSON form
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RunSummary:
        data = dict(data or {})
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: data.pop(k) for k in list(data) if k in names}
        known["engine"] = EngineInfo.from_dict(known.get("engine"))
        known["transfer"] = {**data, **(known.get("transfer") or {})}  # an old summary's top-level extras
        for key in ("tasks", "sampler", "task_steps"):  # a multi-task run stored before these were fields
            if key in known["transfer"] and not known.get(key):
                known[key] = known["transfer"].pop(key)
        for key in ("dev", "test", "extra_evals", "baseline", "baselines", "extra", "tasks", "task_steps", "data_sizes"):
            known[key] = known.get(key) or {}
        return cls(**known)

    # ------------------------------------------------------------------ read-only mapping
    def __getitem__(self, key: str) -> Any:
        if key in self._names():
            value = getattr(self, key)
            return value.__dict__ if isinstance(value, EngineInfo) else value
        if key in self.transfer:
            return self.transfer[key]
        if key in self.extra:
            return self.extra[key]
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter([*self._names(), *self.transfer, *self.extra])

    def __len__(self) -> int:
        return len(list(iter(self)))

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


@dataclass
class RunResult:
    """What ``run`` returns for one run (``skipped``: an earlier finished attempt was reused)."""

    run_id: str
    uid: str
    status: str  # finished | diverged | failed | skipped
    dev: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    best_step: int | None = None
    steps: int = 0
    duration_s: float = 0.0
    summary: RunSummary = field(default_factory=RunSummary)

    @classmethod
    def reused(cls, run_id: str, uid: str, summary: RunSummary, duration_s: float | None) -> RunResult:
        return cls(run_id, uid, "skipped", summary.dev, summary.test, summary.best_step, summary.steps,
                   duration_s or 0.0, summary)


@dataclass
class RunRecord:
    """A run's complete record as a worker made it (``transferlab.recorder.Recorder``), written by the
    driver in one transaction (``Store.write_record``): the run row's fields, every evaluation, the
    curve, and (when the worker shares no artifact location with the driver) its files."""

    uid: str
    run_id: str
    row: dict[str, Any] = field(default_factory=dict)  # column -> value (summary/provenance/spec as data)
    evals: list[tuple[int, str, str, float]] = field(default_factory=list)  # step, split, metric, value
    curve: list[tuple[int, float, float, float | None]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # name -> content, for the driver's artifact location

    @property
    def status(self) -> str:
        return self.row.get("status", "running")
