"""Optimizers by name: ``optim.name`` in the spec picks one from ``OPTIMIZERS``.

    adamw      torch.optim.AdamW: bias-corrected Adam, decoupled weight decay (fused kernels on CUDA and CPU)
    bertadam   the original BERT optimizer: AdamW without bias correction (Devlin et al. 2019)
    adabelief  AdaBelief (Zhuang et al. 2020), bias-corrected, decoupled weight decay
    sgd        torch.optim.SGD with a fixed momentum of 0.9 and L2 weight decay

A new optimizer is one function ``(groups, spec, device_type) -> Optimizer`` under
``fused=True`` declares it may update the fused encoder's stacked tensors (the same parameters:
one fused or foreach call over all of them). ``state_dtype=True`` declares it honours ``optim.state_dtype``
(the moments in bf16; seed-stacked runs only). ``@OPTIMIZERS.register("name", elementwise=True)``; ``elementwise`` declares that each element's
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
    state_dtype: bool = False  # honours optim.state_dtype (bf16 moments for seed-stacked runs)
    # per-slot hyper-parameters in one stacked group (recipes/slots.py: lr, head LR, layer decay, weight decay
    # and the schedule per slot); optimizers may share a group when their ``slot_update`` is the same
    per_slot: bool = False
    slot_update: str = ""  # the update rule a slot group runs: "adam" (bias correction per slot), "adabelief"
    bias_correction: bool = True  # Adam's bias correction (BERTAdam: off), per slot in an "adam" slot group


OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer", OptimCaps)

SGD_MOMENTUM = 0.9


STATE_DTYPES = {"fp32": None, "bf16": torch.bfloat16}  # optim.state_dtype -> the moments' dtype (None: the param's)


def _grads(optimizer: torch.optim.Optimizer, group: dict, names: tuple[str, ...], dtype: torch.dtype | None = None):
    """The params of ``group`` that have a gradient, their grads, step counts and state tensors.

    State (zeros like the param, in ``dtype`` when given, one per name in ``names``) is created on a param's
    first gradient.
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
                state[key] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        state["step"] += 1
        params.append(p)
        grads.append(p.grad)
        steps.append(state["step"])
        for lst, key in zip(states, names):
            lst.append(state[key])
    return params, grads, steps, states


def _fusable(*lists: list[Tensor]) -> bool:
    """torch's one-pass fused AdamW kernel takes these lists: CPU or CUDA, one dtype and layout per param."""
    for ts in zip(*lists):
        first = ts[0]
        if first.device.type not in ("cpu", "cuda") or not first.is_floating_point():
            return False
        if any(t.dtype != first.dtype or t.device != first.device or t.stride() != first.stride() for t in ts):
            return False
    return True


class Scratch:
    """One reused buffer per (device, dtype), as large as the largest parameter: the eager updates write their
    denominators here instead of allocating a temporary per parameter (or, foreach, one for all of them)."""

    def __init__(self):
        self.buffers: dict[tuple, Tensor] = {}

    def like(self, p: Tensor) -> Tensor:
        key = (p.device, p.dtype)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < p.numel():
            buf = self.buffers[key] = torch.empty(p.numel(), device=p.device, dtype=p.dtype)
        return buf[: p.numel()].view(p.shape)


def _by_step(steps: list[int]):
    """Indices of the params grouped by their step count (one group in a run whose params all train from 0)."""
    groups: dict[int, list[int]] = {}
    for i, t in enumerate(steps):
        groups.setdefault(t, []).append(i)
    return groups.items()


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

    One pass per parameter where it can: with the moments in the params' dtype on CPU or CUDA, the update is
    torch's fused AdamW kernel (reads p, g, m, v once, writes p, m, v once) told step = inf, so that its bias
    corrections are 1, and given the equivalent ``lr' = lr sqrt(c2) / c1``, ``eps' = eps sqrt(c2)``,
    ``wd' = lr wd / lr'`` (c1 = 1 - b1^t, c2 = 1 - b2^t; 1 without bias correction): the same update,
    rounded differently. ``state_dtype`` (optim.state_dtype: bf16) keeps m and v in that dtype: an eager
    per-parameter update (docs/methods/bertadam.md, numerics).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, bias_correction: bool = True, state_dtype: torch.dtype | None = None):
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "bias_correction": bias_correction}
        super().__init__(params, defaults)
        self.state_dtype, self.scratch, self._inf = state_dtype, Scratch(), {}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, steps, (ms, vs) = _grads(self, group, ("exp_avg", "exp_avg_sq"), self.state_dtype)
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for t, idx in _by_step(steps):
                c1, c2 = (1 - b1**t, 1 - b2**t) if group["bias_correction"] else (1.0, 1.0)
                lists = [[x[i] for i in idx] for x in (params, grads, ms, vs)]
                if _fusable(*lists):
                    self._fused(lists, lr * math.sqrt(c2) / c1, b1, b2, eps * math.sqrt(c2), lr, wd)
                else:
                    for p, g, m, v in zip(*lists):
                        _adam_eager(p, g, m, v, self.scratch.like(p), lr, b1, b2, eps, wd, c1, c2)
        return loss

    def _fused(self, lists, lr_t: float, b1: float, b2: float, eps_t: float, lr: float, wd: float) -> None:
        params, grads, ms, vs = lists
        key = (params[0].device, params[0].dtype)
        if key not in self._inf:  # step = inf: the kernel's bias corrections 1 - b^inf are exactly 1
            self._inf[key] = torch.tensor(float("inf"), device=key[0], dtype=torch.float32)
        torch._fused_adamw_(params, grads, ms, vs, [], [self._inf[key]] * len(params), lr=lr_t, beta1=b1,
                            beta2=b2, weight_decay=lr * wd / lr_t if lr_t else 0.0, eps=eps_t, amsgrad=False,
                            maximize=False)  # lr 0 (a warmup's first step): no decay, as lr * wd = 0


def _adam_eager(p: Tensor, g: Tensor, m: Tensor, v: Tensor, d: Tensor, lr: float, b1: float, b2: float,
                eps: float, wd: float, c1: float, c2: float) -> None:
    """One parameter's Adam(W) update in place (moments in any float dtype), its denominator in scratch ``d``."""
    if wd:
        p.mul_(1 - lr * wd)
    m.mul_(b1).add_(g, alpha=1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    torch.sqrt(v, out=d).add_(eps * math.sqrt(c2))  # sqrt(v_hat) + eps, times sqrt(c2)
    p.addcdiv_(m, d, value=-lr * math.sqrt(c2) / c1)


class AdaBelief(torch.optim.Optimizer):
    """AdaBelief (Zhuang et al. 2020, Algorithm 2), written here since no library in our dependencies
    has it. Like Adam but the second moment tracks the gradient's deviation from its mean::

        m <- b1 m + (1 - b1) g ;  s <- b2 s + (1 - b2) (g - m)^2 + eps
        p <- p - lr * wd * p - lr * m_hat / (sqrt(s_hat) + eps)     (bias-corrected m_hat, s_hat)

    as in the authors' ``adabelief-pytorch`` 0.2 with ``weight_decouple=True, rectify=False``. Note
    eps enters s itself: the authors advise eps = (Adam's eps)^2, e.g. 1e-16 where Adam used 1e-8.
    Per parameter in place; the residual g - m and the denominator share one reused scratch buffer (no
    temporary per parameter). ``state_dtype``: m and s in that dtype (optim.state_dtype).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-16,
                 weight_decay: float = 0.0, state_dtype: torch.dtype | None = None):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.state_dtype, self.scratch = state_dtype, Scratch()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, steps, (ms, ss) = _grads(self, group, ("exp_avg", "exp_avg_var"), self.state_dtype)
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p, g, m, s, t in zip(params, grads, ms, ss, steps):
                c1, c2 = 1 - b1**t, 1 - b2**t
                d = self.scratch.like(p)
                if wd:
                    p.mul_(1 - lr * wd)
                m.mul_(b1).add_(g, alpha=1 - b1)
                torch.sub(g, m, out=d)  # the residual g - m
                s.mul_(b2).addcmul_(d, d, value=1 - b2).add_(eps)
                torch.sqrt(s, out=d).add_(eps * math.sqrt(c2))
                p.addcdiv_(m, d, value=-lr * math.sqrt(c2) / c1)
        return loss


def check_state_dtype(spec: OptimSpec, seed_stacked: bool) -> None:
    """optim.state_dtype other than fp32: only for seed-stacked runs and an optimizer declaring ``state_dtype``
    (one clear line, raised before any run row)."""
    if spec.state_dtype == "fp32":
        return
    if not OPTIMIZERS.supports(spec.name, "state_dtype"):
        raise SpecError(f"optim.state_dtype: {spec.state_dtype} is not supported by optimizer {spec.name!r} (it does "
                        "not declare 'state_dtype'); use fp32 or one of " + ", ".join(
                            n for n in OPTIMIZERS.primary_names() if OPTIMIZERS.supports(n, "state_dtype")))
    if not seed_stacked:
        raise SpecError(f"optim.state_dtype: {spec.state_dtype} holds the stacked optimizer states of seed-stacked "
                        "runs (2 or more seeds of one recipe trained together); this run trains alone (single "
                        "engine): use fp32")


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


@OPTIMIZERS.register("adamw", elementwise=True, fused=True, state_dtype=True, per_slot=True, slot_update="adam")
def adamw(groups: list[dict], spec: OptimSpec, device_type: str = "cpu") -> torch.optim.Optimizer:
    # torch's fused AdamW runs on CUDA and on the CPU; on the CPU it took a third of the foreach
    # path's time for MiniLM's 22.7M parameters (2-core machine), a real share of a training step.
    if STATE_DTYPES[spec.state_dtype] is not None:  # torch's kernel keeps the moments in the params' dtype
        return AdamW(groups, lr=spec.lr, betas=tuple(spec.betas), eps=spec.eps, weight_decay=spec.weight_decay,
                     state_dtype=STATE_DTYPES[spec.state_dtype])
    fused = device_type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=spec.lr, betas=tuple(spec.betas), eps=spec.eps,
                             weight_decay=spec.weight_decay, **({"fused": True} if fused else {"foreach": True}))


@OPTIMIZERS.register("bertadam", elementwise=True, fused=True, state_dtype=True, per_slot=True,
                     slot_update="adam", bias_correction=False)
def bertadam(groups: list[dict], spec: OptimSpec, device_type: str = "cpu") -> torch.optim.Optimizer:
    return AdamW(groups, lr=spec.lr, betas=tuple(spec.betas), eps=spec.eps, weight_decay=spec.weight_decay,
                 bias_correction=False, state_dtype=STATE_DTYPES[spec.state_dtype])


@OPTIMIZERS.register("adabelief", elementwise=True, fused=True, state_dtype=True, per_slot=True,
                     slot_update="adabelief")
def adabelief(groups: list[dict], spec: OptimSpec, device_type: str = "cpu") -> torch.optim.Optimizer:
    return AdaBelief(groups, lr=spec.lr, betas=tuple(spec.betas), eps=spec.eps, weight_decay=spec.weight_decay,
                     state_dtype=STATE_DTYPES[spec.state_dtype])


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
