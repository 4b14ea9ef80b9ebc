"""LR schedules: formulas at chosen steps, and equality with transformers' schedules."""

from __future__ import annotations

import math

import pytest
import torch
import transformers

from transferlab.errors import SpecError
from transferlab.recipes.schedules import SCHEDULES, build_schedule, lr_factor, resolve_warmup
from transferlab.spec import ScheduleSpec


def lrs_over_training(scheduler, optimizer, total: int) -> list[float]:
    """The LRs of every group used at steps 0..total-1 (what each optimizer step sees), flat."""
    out = []
    for _ in range(total):
        out.extend(g["lr"] for g in optimizer.param_groups)
        optimizer.step()
        scheduler.step()
    return out


def optimizer(lrs=(1.0,)) -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs])


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_schedule_is_a_bounded_factor(name):
    spec = ScheduleSpec(name=name, warmup_steps=5)
    factors = [lr_factor(spec, t, 50) for t in range(51)]
    assert all(0.0 <= f <= 1.0 and math.isfinite(f) for f in factors)
    assert max(factors) == pytest.approx(1.0)


@pytest.mark.parametrize("total, warmup", [(100, 10), (37, 0), (20, 20), (5, 1)])
def test_linear_matches_transformers(total, warmup):
    ref_opt, our_opt = optimizer(), optimizer()
    ref = lrs_over_training(transformers.get_linear_schedule_with_warmup(ref_opt, warmup, total), ref_opt, total)
    ours = lrs_over_training(build_schedule(our_opt, ScheduleSpec("linear", warmup_steps=warmup, warmup_ratio=0.0),
                                            total), our_opt, total)
    assert ours == pytest.approx(ref, abs=1e-15)


@pytest.mark.parametrize("total, warmup, cycles", [(100, 10, 0.5), (60, 0, 0.5), (80, 8, 1.5)])
def test_cosine_matches_transformers(total, warmup, cycles):
    ref_opt, our_opt = optimizer(), optimizer()
    ref_sched = transformers.get_cosine_schedule_with_warmup(ref_opt, warmup, total, num_cycles=cycles)
    ref = lrs_over_training(ref_sched, ref_opt, total)
    spec = ScheduleSpec("cosine", warmup_steps=warmup, warmup_ratio=0.0, num_cycles=cycles)
    ours = lrs_over_training(build_schedule(our_opt, spec, total), our_opt, total)
    assert ours == pytest.approx(ref, abs=1e-15)


def test_formulas_at_chosen_steps():
    assert [lr_factor("constant", t, 100, 10) for t in (0, 5, 10, 99)] == [0.0, 0.5, 1.0, 1.0]  # explicit warmup
    assert [lr_factor("constant_with_warmup", t, 100, 10) for t in (0, 5, 10, 99)] == [0.0, 0.5, 1.0, 1.0]
    assert [lr_factor("linear", t, 100, 10) for t in (0, 5, 10, 55, 100)] == [0.0, 0.5, 1.0, 0.5, 0.0]
    assert lr_factor("cosine", 55, 100, 10) == pytest.approx(0.5)  # half-way through the decay
    assert lr_factor("cosine", 100, 100, 10) == pytest.approx(0.0)
    assert lr_factor("constant", 3, 100, 0) == 1.0


def test_slanted_triangular_follows_ulmfit_eq3():
    spec = ScheduleSpec("slanted_triangular", cut_frac=0.1, ratio=32.0, warmup_steps=50)  # warmup is ignored
    # T = 100: cut = 10; p = t/10 up to the cut, then 1 - (t - 10) / (10 * 9); factor = (1 + 31 p) / 32
    expected = {0: 1 / 32, 5: (1 + 0.5 * 31) / 32, 10: 1.0, 55: (1 + 0.5 * 31) / 32, 100: 1 / 32}
    for t, f in expected.items():
        assert lr_factor(spec, t, 100) == pytest.approx(f, rel=1e-12), t
    assert lr_factor(spec, 130, 100) == pytest.approx(1 / 32)  # never below 1/ratio
    assert lr_factor(ScheduleSpec("stlr"), 10, 100) == 1.0  # alias
    assert lr_factor(ScheduleSpec("slanted_triangular", cut_frac=0.1), 0, 5) == pytest.approx(1 / 32)  # cut >= 1


def test_resolve_warmup():
    assert resolve_warmup(ScheduleSpec(warmup_steps=7, warmup_ratio=0.5), 100) == 7
    assert resolve_warmup(ScheduleSpec(warmup_steps=0, warmup_ratio=0.06), 250) == 15
    assert resolve_warmup(ScheduleSpec(warmup_steps=0, warmup_ratio=0.0), 250) == 0
    assert lr_factor(ScheduleSpec("linear", warmup_ratio=0.1), 5, 100) == 0.5  # warmup from the ratio


def test_every_group_scales_by_the_same_factor():
    opt = optimizer(lrs=(1e-3, 1e-4, 5e-3))
    spec = ScheduleSpec("cosine", warmup_steps=3)
    sched = build_schedule(opt, spec, 20)
    lrs = lrs_over_training(sched, opt, 20)
    for t in range(20):
        f = lr_factor(spec, t, 20)
        assert lrs[3 * t:3 * t + 3] == pytest.approx([1e-3 * f, 1e-4 * f, 5e-3 * f], rel=1e-12)


def test_scheduler_state_dict_round_trip():
    opt = optimizer()
    sched = build_schedule(opt, ScheduleSpec("linear", warmup_steps=2), 10)
    lrs_over_training(sched, opt, 4)
    opt2 = optimizer()
    sched2 = build_schedule(opt2, ScheduleSpec("linear", warmup_steps=2), 10)
    opt2.load_state_dict(opt.state_dict())  # the groups' current LRs live in the optimizer
    sched2.load_state_dict(sched.state_dict())
    assert lrs_over_training(sched2, opt2, 3) == lrs_over_training(sched, opt, 3)


@pytest.mark.parametrize("kw, total, field", [
    ({"name": "step"}, 10, "schedule.name"),
    ({"warmup_steps": -1}, 10, "schedule.warmup_steps"),
    ({"warmup_ratio": 1.5}, 10, "schedule.warmup_ratio"),
    ({"cut_frac": 0.0}, 10, "schedule.cut_frac"),
    ({"ratio": 0.5}, 10, "schedule.ratio"),
    ({"num_cycles": 0.0}, 10, "schedule.num_cycles"),
    ({}, 0, "training steps"),
])
def test_bad_values_raise_spec_error(kw, total, field):
    with pytest.raises(SpecError, match=field):
        build_schedule(optimizer(), ScheduleSpec(**kw), total)


def test_constant_is_hugging_faces_constant():
    """``constant`` = transformers.get_constant_schedule (no warmup, whatever the default warmup_ratio);
    ``constant_with_warmup`` = get_constant_schedule_with_warmup (warmup from the ratio too)."""
    total = 50
    ref_opt, our_opt = optimizer(), optimizer()
    ref = lrs_over_training(transformers.get_constant_schedule(ref_opt), ref_opt, total)
    ours = lrs_over_training(build_schedule(our_opt, ScheduleSpec("constant"), total), our_opt, total)
    assert ScheduleSpec("constant").warmup_ratio == 0.1 and ours == pytest.approx(ref, abs=1e-15)
    assert lr_factor("constant", 0, total) == 1.0
    ref_opt, our_opt = optimizer(), optimizer()
    ref = lrs_over_training(transformers.get_constant_schedule_with_warmup(ref_opt, 5), ref_opt, total)
    ours = lrs_over_training(build_schedule(our_opt, ScheduleSpec("constant_with_warmup"), total), our_opt, total)
    assert ours == pytest.approx(ref, abs=1e-15)  # 0.1 * 50 = 5 warmup steps
