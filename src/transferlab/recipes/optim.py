"""Optimizers by name: ``optim.name`` in the spec picks one from ``OPTIMIZERS``.

    adamw      torch.optim.AdamW: bias-corrected Adam, decoupled weight decay (fused kernels on CUDA and CPU)
    bertadam   the original BERT optimizer: AdamW without bias correction (Devlin et al. 2019)
    adabelief  AdaBelief (Zhuang et al. 2020), bias-corrected, decoupled weight decay
    sgd        torch.optim.SGD with a fixed momentum of 0.9 and L2 weight decay

A new optimizer is one function ``(groups, spec, device_type) -> Optimizer`` under
``fused=True`` declares it may update the fused encoder's stacked tensors (the same parameters:
one fused or foreach call over all of them). ``@OPTIMIZERS.register("name", elementwise=True)``; ``elementwise`` declares that each element's
update depends on that element alone, so the seed-stacked engine may train S seeds' stacked
parameters with it (S independent updates); without it stacked runs are refused. Every optimizer here skips parameters whose ``.grad`` is None
and keeps no state for them, so frozen parameters can sit in the groups from step 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from transferlab.errors import SpecError
from transferlab.registry import Registry
from transferlab.spec import OptimSpec

OptimizerFactory = Callable[[list[dict], OptimSpec, str], torch.optim.Optimizer]


@dataclass(frozen=True)
class OptimCaps:
    elementwise: bool = False  # each element's update reads only its own state: a stacked update is S updates
    fused: bool = False  # the fused encoder's stacked parameters may use it


OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer", OptimCaps)

SGD_MOMENTUM = 0.9


def _grads(optimizer: torch.optim.Optimizer, group: dict, names: tuple[str, ...]):
    """The params of ``group`` that have a gradient, their grads, step counts and state tensors.

    State (zeros like the param, one per name in ``names``) is created on a param's first gradient.
    """
    params, grads, steps, states = [], [], [], [[] for _ in names]
    for p in group["params"]:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise RuntimeError(f"{type(optimizer).__name__} does not support sparse gradients")
        state = optimizer.state[p]
        if not state:
            state["step"] = 0
            for key in names:
                state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        params.append(p)
        grads.append(p.grad)
        steps.append(state["step"])
        for lst, key in zip(states, names):
            lst.append(state[key])
    return params, grads, steps, states


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay, with or without bias correction (written here: torch's
    AdamW always corrects). Per parameter with gradient g at its step t::

        p <- p - lr * wd * p                           (decoupled decay, scaled by lr, as torch AdamW)
        m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
        p <- p - lr * m_hat / (sqrt(v_hat) + eps)      m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)

    With ``bias_correction=False`` m_hat = m and v_hat = v: that is BERT's ``AdamWeightDecayOptimizer``
    (TF) / ``BertAdam`` (pytorch-pretrained-bert), whose ``update = m / (sqrt(v) + eps) + wd * p`` is
    then multiplied by lr, i.e. the same decoupled ``lr * wd * p`` as here. BertAdam also clipped each
    parameter's gradient norm on its own; we do not (the training loop clips the global norm).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, bias_correction: bool = True):
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "bias_correction": bias_correction}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, steps, (ms, vs) = _grads(self, group, ("exp_avg", "exp_avg_sq"))
            if not params:
                continue
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            if wd:
                torch._foreach_mul_(params, 1 - lr * wd)
            torch._foreach_lerp_(ms, grads, 1 - b1)
            torch._foreach_mul_(vs, b2)
            torch._foreach_addcmul_(vs, grads, grads, 1 - b2)
            denom = torch._foreach_sqrt(vs)
            if group["bias_correction"]:
                torch._foreach_div_(denom, [math.sqrt(1 - b2**t) for t in steps])
                torch._foreach_add_(denom, eps)
                torch._foreach_addcdiv_(params, ms, denom, [-lr / (1 - b1**t) for t in steps])
            else:
                torch._foreach_add_(denom, eps)
                torch._foreach_addcdiv_(params, ms, denom, -lr)
        return loss


class AdaBelief(torch.optim.Optimizer):
    """AdaBelief (Zhuang et al. 2020, Algorithm 2), written here since no library in our dependencies
    has it. Like Adam but the second moment tracks the gradient's deviation from its mean::

        m <- b1 m + (1 - b1) g ;  s <- b2 s + (1 - b2) (g - m)^2 + eps
        p <- p - lr * wd * p - lr * m_hat / (sqrt(s_hat) + eps)     (bias-corrected m_hat, s_hat)

    as in the authors' ``adabelief-pytorch`` 0.2 with ``weight_decouple=True, rectify=False``. Note
    eps enters s itself: the authors advise eps = (Adam's eps)^2, e.g. 1e-16 where Adam used 1e-8.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-16,
                 weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, steps, (ms, ss) = _grads(self, group, ("exp_avg", "exp_avg_var"))
            if not params:
                continue
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            if wd:
                torch._foreach_mul_(params, 1 - lr * wd)
            torch._foreach_lerp_(ms, grads, 1 - b1)
            residual: list[Tensor] = torch._foreach_sub(grads, ms)
            torch._foreach_mul_(ss, b2)
            torch._foreach_addcmul_(ss, residual, residual, 1 - b2)
            torch._foreach_add_(ss, eps)
            denom = torch._foreach_sqrt(ss)
            torch._foreach_div_(denom, [math.sqrt(1 - b2**t) for t in steps])
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(params, ms, denom, [-lr / (1 - b1**t) for t in steps])
        return loss


def _check(spec: OptimSpec) -> None:
    b1, b2 = spec.betas
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise SpecError(f"optim.betas: {list(spec.betas)} must both be in [0, 1)")
    if spec.eps < 0:
        raise SpecError(f"optim.eps: {spec.eps} must be >= 0")
    if spec.max_grad_norm is not None and not spec.max_grad_norm > 0:
        raise SpecError(f"optim.max_grad_norm: {spec.max_grad_norm} must be > 0 (or null for no clipping)")


def _speed(device_type: str) -> dict:
    """torch's fused kernels on CUDA, the multi-tensor (foreach) path elsewhere."""
    return {"fused": True} if device_type == "cuda" else {"foreach": True}


@OPTIMIZERS.register("adamw", elementwise=True, fused=True)
def adamw(groups: list[dict], spec: OptimSpec, device_type: str = "cpu") -> torch.optim.Optimizer:
    # torch's fused AdamW runs on CUDA and on the CPU; on the CPU it took a third of the foreach
    # path's time for MiniLM's 22.7M parameters (2-core machine), a real share of a training step.
    fused = device_type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=spec.lr, betas=tuple(spec.betas), eps=spec.eps,
                             weight_decay=spec.weight_decay, **({"fused": True} if fused else {"foreach": True}))


@OPTIMIZERS.register("bertadam", elementwise=True, fused=True)
def bertadam(groups: list[dict], spec: OptimSpec, device_type: str = "cpu") -> torch.optim.Optimizer:
    return AdamW(groups, lr=spec.lr, betas=tuple(spec.betas), eps=spec.eps, weight_decay=spec.weight_decay,
                 bias_correction=False)


@OPTIMIZERS.register("adabelief", elementwise=True, fused=True)
def adabelief(groups: list[dict], spec: OptimSpec, device_type: str = "cpu") -> torch.optim.Optimizer:
    return AdaBelief(groups, lr=spec.lr, betas=tuple(spec.betas), eps=spec.eps, weight_decay=spec.weight_decay)


@OPTIMIZERS.register("sgd", elementwise=True, fused=True)
def sgd(groups: list[dict], spec: OptimSpec, device_type: str = "cpu") -> torch.optim.Optimizer:
    """SGD, momentum fixed at 0.9 (no spec field); weight decay is coupled L2 (added to the gradient)."""
    return torch.optim.SGD(groups, lr=spec.lr, momentum=SGD_MOMENTUM, weight_decay=spec.weight_decay,
                           **_speed(device_type))


def build_optimizer(groups: list[dict], spec: OptimSpec, device_type: str = "cpu") -> torch.optim.Optimizer:
    """The optimizer ``spec.name`` over ``groups`` (from ``build_param_groups``; each group's own lr and
    weight_decay win over the spec's). ``device_type`` ("cpu", "cuda", ...) picks the fast kernels."""
    factory = OPTIMIZERS.get(spec.name, field="optim.name")
    _check(spec)
    return factory(groups, spec, device_type)
