"""Per-slot hyper-parameters of a stacked group: S runs whose optimizer or schedule settings differ, trained as one.

    optimizer, scheduler = build_slot_optimizer(stack, [spec.optim per slot], [spec.schedule per slot],
                                                stack.num_layers, total_steps)
    # stepped by the engine's optimizer_step (train/engine.py), as every optimizer and schedule
    scheduler.slot_lrs()                        # host floats: each slot's LR (the curve's), no device sync
    scheduler.keep([0, 2])                      # slots that stay (their coefficients, table columns)

What may differ per slot: ``optim.lr``, ``optim.head_lr``, ``optim.layer_decay``, ``optim.weight_decay``,
``optim.name`` among optimizers of one ``slot_update`` (AdamW beside BERTAdam: bias correction per slot),
and every ``schedule`` field (warmup, shape, cycles). Each part says so with its capability flag
(``OptimCaps.per_slot`` / ``slot_update``, ``ScheduleCaps.per_slot``); train/support.py reads them.

How: the parameter groups are those of a single run (``build_param_groups``) for the union of the slots'
decay settings; each group carries its per-slot base LRs and weight decays as (S,) tensors. The schedule
is a pure function of the step, so every slot's factor for every step is tabulated on the host once and
moved to the device once: per step the optimizer reads row ``k`` of that table (no host sync, no host
to device copy). Each update is the slot's own run's update, element-wise with (S, 1, ...) coefficients:

    adam       p <- p (1 - lr wd);  m, v as Adam;  p <- p - lr / c1 * m / (sqrt(v) / sqrt(c2) + eps)
               c1 = 1 - b1^t, c2 = 1 - b2^t for slots with bias correction (adamw), 1 for those without (bertadam)
    adabelief  p <- p (1 - lr wd);  m, s as AdaBelief;  p <- p - lr sqrt(c2) / c1 * m / (sqrt(s) + eps sqrt(c2))

which are the formulas of torch's AdamW, recipes/optim.py's AdamW (bias correction off) and AdaBelief.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor, nn

from transferlab.errors import SpecError
from transferlab.recipes.optim import OPTIMIZERS, Scratch, _grads
from transferlab.recipes.param_groups import build_param_groups, group_lr
from transferlab.recipes.schedules import SCHEDULES, lr_factor, resolve_warmup
from transferlab.recipes.schedules import _check as check_schedule
from transferlab.spec import OptimSpec, ScheduleSpec

STATE = {"adam": ("exp_avg", "exp_avg_sq"), "adabelief": ("exp_avg", "exp_avg_var")}


def slot_param_groups(model: nn.Module, specs: list[OptimSpec], num_layers: int) -> list[dict]:
    """The single run's groups (by layer, decay or not) for the union of the slots' weight decay, each with
    ``slot_lr`` and ``slot_wd``: the base LR and weight decay each slot's own run gives that group."""
    union = replace(specs[0], weight_decay=max(s.weight_decay for s in specs))
    groups = build_param_groups(model, union, num_layers)
    for g in groups:
        decayed = g["name"].endswith(".decay")
        g["slot_lr"] = [group_lr(s, g["layer"], num_layers) for s in specs]
        g["slot_wd"] = [s.weight_decay if decayed else 0.0 for s in specs]
    return groups


class SlotOptimizer(torch.optim.Optimizer):
    """Adam(W) or AdaBelief over stacked (S, ...) parameters with per-slot LR, weight decay and (Adam) bias
    correction. ``factor``: the schedule's (S,) factors of the current step, set by :class:`SlotSchedule`."""

    def __init__(self, groups: list[dict], update: str, betas: tuple[float, float], eps: float,
                 bias_correction: list[bool]):
        like = groups[0]["params"][0]
        self.update, self.names = update, STATE[update]
        as_t = lambda xs: torch.tensor(xs, dtype=like.dtype, device=like.device)  # noqa: E731
        for g in groups:  # the host floats kept for the curve's LRs (as exact as the single run's)
            g["slot_base"], g["slot_lr"], g["slot_wd"] = list(g["slot_lr"]), as_t(g["slot_lr"]), as_t(g["slot_wd"])
        super().__init__(groups, {"lr": 0.0, "betas": betas, "eps": eps, "weight_decay": 0.0})
        self.bias = as_t([1.0 if b else 0.0 for b in bias_correction])
        self.factor = torch.ones_like(self.bias)
        self.masks: dict[int, Tensor] | None = None  # per-slot freezing (recipes/freeze.py SlotFreezer): (S,) 1/0
        self.scratch, self.scaled = Scratch(), Scratch()

    def _coefs(self, lr: Tensor, t: int, b1: float, b2: float, eps: float) -> tuple[Tensor, Tensor]:
        """(S,) step sizes and denominators' eps terms at step count ``t`` (see the module docstring)."""
        if self.update == "adam":  # lr / c1 * m / (sqrt(v) / sqrt(c2) + eps) = lr sqrt(c2) / c1 * m / (sqrt(v) + eps sqrt(c2))
            c1, c2 = 1 - self.bias * b1 ** t, (1 - self.bias * b2 ** t).sqrt()
        else:
            c1, c2 = torch.full_like(lr, 1 - b1 ** t), torch.full_like(lr, math.sqrt(1 - b2 ** t))
        return lr * c2 / c1, eps * c2

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, steps, (ms, vs) = _grads(self, group, self.names)
            if not params:
                continue
            (b1, b2), eps = group["betas"], group["eps"]
            lr = group["slot_lr"] * self.factor  # (S,) this step's LR of each slot
            keep, coefs = 1 - lr * group["slot_wd"], {}
            for p, g, m, v, t in zip(params, grads, ms, vs, steps):
                if self.masks is not None:
                    self._masked(p, g, m, v, lr, group["slot_wd"], b1, b2, eps)
                    continue
                if t not in coefs:
                    coefs[t] = self._coefs(lr, t, b1, b2, eps)
                size, floor = coefs[t]
                shape = (-1, *[1] * (p.dim() - 1))
                p.mul_(keep.view(shape))
                m.mul_(b1).add_(g, alpha=1 - b1)
                d = self.scratch.like(p)  # reused buffers, no temporaries per parameter
                if self.update == "adam":
                    v.mul_(b2).addcmul_(g, g, value=1 - b2)
                else:
                    torch.sub(g, m, out=d)  # the residual g - m
                    v.mul_(b2).addcmul_(d, d, value=1 - b2).add_(eps)
                torch.sqrt(v, out=d).add_(floor.view(shape))
                p.addcdiv_(torch.mul(m, size.view(shape), out=self.scaled.like(p)), d, value=-1)
        return loss

    def _masked(self, p: Tensor, g: Tensor, m: Tensor, v: Tensor, lr: Tensor, wd: Tensor, b1: float, b2: float,
                eps: float) -> None:
        """The update with per-slot freezing: slots where ``p`` is frozen (mask 0, zero gradient) keep p, m, v and
        their step count; the others count their own steps from the step ``p`` first trained in them."""
        on = self.masks.get(id(p)) if self.masks else None
        on = torch.ones_like(lr) if on is None else on
        state = self.state[p]
        if "slot_t" not in state:
            state["slot_t"] = torch.zeros_like(lr)
        t = state["slot_t"].add_(on).clamp_min(1)  # (S,) each slot's step count (1 where it never trained)
        bias = self.bias if self.update == "adam" else torch.ones_like(lr)
        c1, c2 = 1 - bias * b1 ** t, (1 - bias * b2 ** t).sqrt()
        shape = (-1, *[1] * (p.dim() - 1))
        p.mul_((1 - lr * wd * on).view(shape))
        m.mul_((1 - (1 - b1) * on).view(shape)).add_(g, alpha=1 - b1)
        if self.update == "adam":
            v.mul_((1 - (1 - b2) * on).view(shape)).addcmul_(g, g, value=1 - b2)
        else:
            r = (g - m) * on.view(shape)
            v.mul_((1 - (1 - b2) * on).view(shape)).addcmul_(r, r, value=1 - b2).add_((eps * on).view(shape))
        p.sub_(m / v.sqrt().add_((eps * c2).view(shape)) * (lr * c2 / c1 * on).view(shape))

    def keep(self, slots: list[int]) -> None:
        """Only ``slots`` stay (the moments are dropped with the weights: StackedModel.keep)."""
        index = torch.tensor(slots, device=self.bias.device)
        before = self.bias.shape[0]
        for state in self.state.values():  # per-slot step counts (StackedModel.keep cut those shaped like p)
            if "slot_t" in state and state["slot_t"].shape[0] == before:
                state["slot_t"] = state["slot_t"].index_select(0, index)
        for g in self.param_groups:
            g["slot_lr"], g["slot_wd"] = g["slot_lr"].index_select(0, index), g["slot_wd"].index_select(0, index)
        self.bias = self.bias.index_select(0, index)


class SlotSchedule:
    """Each slot's schedule tabulated over the run's steps (host and device copies, made once); ``step()``
    moves to the next row. The LR of slot s at step k is its base LR times ``table[k, s]``, as its own
    run's LambdaLR gives it."""

    def __init__(self, optimizer: SlotOptimizer, specs: list[ScheduleSpec], total_steps: int):
        self.optimizer, self.k, self.total = optimizer, 0, total_steps
        columns: dict[tuple, list[float]] = {}  # one column per distinct schedule (slots often share one)
        for spec in specs:
            key = (repr(spec), resolve_warmup(spec, total_steps))
            if key not in columns:
                columns[key] = [lr_factor(spec, k, total_steps, key[1]) for k in range(total_steps + 1)]
        self.host = torch.tensor([columns[(repr(s), resolve_warmup(s, total_steps))] for s in specs],
                                 dtype=torch.float64).t().contiguous()  # (steps + 1, S) on the host, float64
        self.base = torch.tensor([g["slot_base"] for g in optimizer.param_groups], dtype=torch.float64)  # (G, S)
        self.table = self.host.to(dtype=optimizer.bias.dtype, device=optimizer.bias.device)
        self.optimizer.factor = self.table[0]

    def step(self) -> None:
        self.k = min(self.k + 1, self.total)
        self.optimizer.factor = self.table[self.k]

    def slot_lrs(self) -> list[float]:
        """Each slot's LR now (the largest of its groups'), as its own run logs ``max(get_last_lr())``."""
        return (self.base * self.host[self.k]).amax(0).tolist()  # host tensors: no device sync

    def get_last_lr(self) -> list[float]:
        return (self.base * self.host[self.k]).amax(1).tolist()

    def keep(self, slots: list[int]) -> None:
        self.host, self.base = self.host[:, slots].contiguous(), self.base[:, slots].contiguous()
        self.table = self.table[:, slots].contiguous()
        self.optimizer.keep(slots)
        self.optimizer.factor = self.table[self.k]


def build_slot_optimizer(model: nn.Module, optims: list[OptimSpec], schedules: list[ScheduleSpec],
                         num_layers: int, total_steps: int, masks: dict | None = None
                         ) -> tuple[SlotOptimizer, SlotSchedule]:
    """The per-slot optimizer and schedule of a stacked group whose slots differ in optim/schedule values or
    freezing (train/support.py checked that every part declares ``per_slot`` and the optimizers share an
    update). ``masks``: the SlotFreezer's per-slot gradient masks, read at every step."""
    caps = [OPTIMIZERS.caps(OPTIMIZERS.canonical(o.name)) for o in optims]
    if not all(c.per_slot for c in caps) or len({c.slot_update for c in caps}) != 1:
        raise SpecError("optim.name: " + ", ".join(sorted({o.name for o in optims})) + " cannot share a stacked group "
                        "(each must declare 'per_slot' with one 'slot_update')")
    if any(o.state_dtype != "fp32" for o in optims):
        raise SpecError("optim.state_dtype: per-slot optimizer settings keep fp32 moments; use fp32")
    for o in optims:
        b1, b2 = o.betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1) or o.eps < 0:
            raise SpecError(f"optim.betas/eps: {list(o.betas)}, {o.eps} out of range")
    groups = slot_param_groups(model, optims, num_layers)
    if total_steps < 1:
        raise SpecError(f"the run has {total_steps} training steps; expected at least 1 (train.max_steps/epochs)")
    for spec in schedules:
        SCHEDULES.get(spec.name, field="schedule.name")
        check_schedule(spec)
    optimizer = SlotOptimizer(groups, caps[0].slot_update, tuple(optims[0].betas), optims[0].eps,
                              [c.bias_correction for c in caps])
    optimizer.masks = masks
    return optimizer, SlotSchedule(optimizer, schedules, total_steps)

