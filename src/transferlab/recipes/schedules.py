"""Learning-rate schedules by name: ``schedule.name`` in the spec picks one from ``SCHEDULES``.

A schedule is a pure function ``(step, total_steps, warmup_steps, spec) -> factor``; the LR of
every parameter group at ``step`` (optimizer steps already taken, from 0) is its own base LR
times that factor, so layer-wise LR ratios hold throughout training.

    constant            1 from the first step, as Hugging Face's ``constant``
                        (= transformers.get_constant_schedule): ``warmup_ratio`` does not apply;
                        an explicit ``warmup_steps`` > 0 still warms up over those steps
                        (= get_constant_schedule_with_warmup), as the FPT examples ask
    constant_with_warmup  linear warmup 0 -> 1 (``warmup_steps`` or ``warmup_ratio``), then 1
                        (= transformers.get_constant_schedule_with_warmup; HF's
                        ``constant_with_warmup``). Before issue 26 ``constant`` meant this.
    linear              linear warmup, then linear decay to 0 at total_steps
                        (= transformers.get_linear_schedule_with_warmup)
    cosine              linear warmup, then cosine with ``num_cycles`` (0.5: one half-wave to 0)
                        (= transformers.get_cosine_schedule_with_warmup)
    slanted_triangular  ULMFiT's STLR (Howard & Ruder 2018, eq. 3): from 1/ratio up to 1 over the
                        first ``cut_frac`` of the steps, then back down to 1/ratio. Its rise is set
                        by ``cut_frac`` alone: warmup_steps / warmup_ratio are ignored.

A new schedule is one function under ``@SCHEDULES.register("name")``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable
from functools import partial

import torch

from transferlab.errors import SpecError
from transferlab.registry import Registry
from transferlab.spec import ScheduleSpec

Schedule = Callable[[int, int, int, ScheduleSpec], float]


@dataclass(frozen=True)
class ScheduleCaps:
    per_slot: bool = False  # a pure function of the step: tabulated per slot of a stacked group (recipes/slots.py)


SCHEDULES: Registry[Schedule] = Registry("schedule", ScheduleCaps)


def _warmup(step: int, warmup: int) -> float:
    return step / max(1, warmup)


@SCHEDULES.register("constant", per_slot=True)
def constant(step: int, total: int, warmup: int, spec: ScheduleSpec) -> float:
    return _warmup(step, warmup) if step < warmup else 1.0  # warmup: warmup_steps only (resolve_warmup)


@SCHEDULES.register("constant_with_warmup", per_slot=True)
def constant_with_warmup(step: int, total: int, warmup: int, spec: ScheduleSpec) -> float:
    return _warmup(step, warmup) if step < warmup else 1.0


@SCHEDULES.register("linear", per_slot=True)
def linear(step: int, total: int, warmup: int, spec: ScheduleSpec) -> float:
    if step < warmup:
        return _warmup(step, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


@SCHEDULES.register("cosine", per_slot=True)
def cosine(step: int, total: int, warmup: int, spec: ScheduleSpec) -> float:
    if step < warmup:
        return _warmup(step, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * spec.num_cycles * 2.0 * progress)))


@SCHEDULES.register("slanted_triangular", "stlr", per_slot=True)
def slanted_triangular(step: int, total: int, warmup: int, spec: ScheduleSpec) -> float:
    """ULMFiT eq. 3 with t = step, T = total: cut = floor(T * cut_frac) (at least 1),
    p = t / cut before the cut, else 1 - (t - cut) / (cut * (1 / cut_frac - 1)); factor = (1 + p (ratio - 1)) / ratio."""
    cut = max(1, math.floor(total * spec.cut_frac))
    if step < cut:
        p = step / cut
    else:
        p = max(0.0, 1 - (step - cut) / max(1e-12, cut * (1 / spec.cut_frac - 1)))
    return (1 + p * (spec.ratio - 1)) / spec.ratio


def _check(spec: ScheduleSpec) -> None:
    if spec.warmup_steps < 0:
        raise SpecError(f"schedule.warmup_steps: {spec.warmup_steps} must be >= 0")
    if not 0 <= spec.warmup_ratio <= 1:
        raise SpecError(f"schedule.warmup_ratio: {spec.warmup_ratio} must be in [0, 1]")
    if not 0 < spec.cut_frac <= 1:
        raise SpecError(f"schedule.cut_frac: {spec.cut_frac} must be in (0, 1]")
    if not spec.ratio >= 1:
        raise SpecError(f"schedule.ratio: {spec.ratio} must be >= 1 (max LR / min LR)")
    if not spec.num_cycles > 0:
        raise SpecError(f"schedule.num_cycles: {spec.num_cycles} must be > 0")


def resolve_warmup(spec: ScheduleSpec, total_steps: int) -> int:
    """Warmup steps: ``warmup_steps`` when > 0, else ``round(warmup_ratio * total_steps)``; ``constant``
    (Hugging Face's: no warmup) reads ``warmup_steps`` only."""
    if spec.warmup_steps > 0 or SCHEDULES.canonical(spec.name) == "constant":
        return spec.warmup_steps
    return round(spec.warmup_ratio * total_steps)


def lr_factor(spec: ScheduleSpec | str, step: int, total_steps: int, warmup_steps: int | None = None) -> float:
    """The LR multiplier at ``step`` of ``total_steps``. ``spec`` may be a schedule name (other fields
    at their defaults); ``warmup_steps`` defaults to :func:`resolve_warmup`."""
    if isinstance(spec, str):
        spec = ScheduleSpec(name=spec)
    fn = SCHEDULES.get(spec.name, field="schedule.name")
    if warmup_steps is None:
        warmup_steps = resolve_warmup(spec, total_steps)
    return fn(step, total_steps, warmup_steps, spec)


def build_schedule(optimizer: torch.optim.Optimizer, spec: ScheduleSpec, total_steps: int
                   ) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR scaling every group's LR by the schedule's factor; call ``.step()`` after each
    optimizer step. Checks the spec (SpecError naming the field)."""
    SCHEDULES.get(spec.name, field="schedule.name")
    _check(spec)
    if total_steps < 1:
        raise SpecError(f"the run has {total_steps} training steps; expected at least 1 (train.max_steps/epochs)")
    warmup = resolve_warmup(spec, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_factor, spec, total_steps=total_steps, warmup_steps=warmup))
