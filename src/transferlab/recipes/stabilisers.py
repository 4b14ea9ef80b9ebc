"""Stabilisers of few-sample fine-tuning: each a plain function and a small Hook.

    stabilisers:                                    # a run spec section: a list, applied in order
      - {name: mixout, options: {p: 0.1}}
      - {name: ema, options: {decay: 0.999}}

    mixout        Lee et al. 2020: each backbone Linear weight is swapped for its pretrained value with
                  probability p at every training step (rescaled so its expectation is the weight);
                  evaluation uses the expected weights. One mask per optimizer step (not per micro-batch).
    l2sp          Li et al. 2018 (L2-SP, "prior weight decay"): loss + strength / 2 ||w - w0||^2 over the
                  backbone, w0 the pretrained weights; its gradient is strength (w - w0).
    child_tuning_d, child_tuning_f
                  Xu et al. 2021: only a child network of the backbone is updated. D: a fixed mask of the
                  reserve_p share of backbone weights with the largest Fisher information, estimated on
                  the training data before training. F: a fresh Bernoulli(reserve_p) mask of the gradients
                  at every step, scaled by 1 / reserve_p. The head always trains.
    r3f           Aghajanyan et al. 2021: loss + lambda * symmetric KL between the predictions on clean and
                  on noised input embeddings (noise normal N(0, eps^2) or uniform U(-eps, eps)).
    ema, swa      weight averaging: an exponential moving average (decay) or an equal-weight average of the
                  weights after each step from ``start`` (a share of the steps) on; every evaluation and
                  the stored model use the averaged weights.

Capabilities, declared at registration (StabiliserCaps): ``seed_stacked`` (False for all: none is
tested on a StackedModel), ``problems`` (the task problems it supports; ``mlm``: masked-LM
pretraining, where the whole model counts as the backbone) and ``freeze`` (the freeze policies it
can run with; None: any). R3F needs a text backbone's token embeddings. Masks and penalties apply
to the backbone; a new head (and input adapter) trains as usual.

Written by hand (no maintained PyTorch package implements these as optimizer-independent hooks):
every function below; torch does the arithmetic. Method cards: docs/methods/<name>.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from transferlab.errors import ModelError, SpecError
from transferlab.recipes.hooks import Hook
from transferlab.registry import Registry
from transferlab.spec import SECTION_CHECKS


@dataclass(frozen=True)
class StabiliserCaps:
    seed_stacked: bool = False  # works on a StackedModel
    problems: tuple[str, ...] = ()  # the task problems it supports; "mlm": masked-LM pretraining too
    freeze: tuple[str, ...] | None = None  # the freeze policies it can run with (None: any)


STABILISERS: Registry[type] = Registry("stabiliser", StabiliserCaps)


def backbone_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """The pretrained part: parameters under ``backbone.`` (the head and an input adapter are new)."""
    return {n: p for n, p in model.named_parameters() if n.startswith("backbone.") and p.requires_grad}


def linear_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Weights of the backbone's Linear layers (and GPT-2's Conv1D): where mixout applies."""
    out = {}
    for name, module in model.named_modules():
        linear = isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
        if name.startswith("backbone.") and linear and module.weight.requires_grad:
            out[name + ".weight"] = module.weight
    return out


# ----------------------------------------------------------------------------- plain functions


def mixout(w: torch.Tensor, w0: torch.Tensor, mask: torch.Tensor, p: float) -> torch.Tensor:
    """Lee et al. 2020, eq. 2: (mask w0 + (1 - mask) w - p w0) / (1 - p), mask ~ Bernoulli(p).
    Its expectation over the mask is w; its gradient w.r.t. w is (1 - mask) / (1 - p)."""
    return (mask * w0 + (1 - mask) * w - p * w0) / (1 - p)


def l2sp_penalty(params: Iterable[torch.Tensor], anchors: Iterable[torch.Tensor], strength: float) -> torch.Tensor:
    """strength / 2 * sum ||w - w0||^2, so that d/dw = strength * (w - w0)."""
    return 0.5 * strength * sum(((w - w0) ** 2).sum() for w, w0 in zip(params, anchors))


def fisher_scores(model: nn.Module, params: dict[str, nn.Parameter], batches: Iterable,
                  loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Empirical Fisher information per weight: the sum over batches of the squared gradient of the loss
    (Xu et al. 2021, eq. 4, per batch as in their code). Gradients are cleared afterwards."""
    scores = {n: torch.zeros_like(p) for n, p in params.items()}
    was = model.training
    model.train()
    for batch, labels in batches:
        model.zero_grad(set_to_none=True)
        loss(model(**batch), labels).backward()
        for n, p in params.items():
            if p.grad is not None:
                scores[n] += p.grad.detach() ** 2
    model.zero_grad(set_to_none=True)
    model.train(was)
    return scores


def top_share_mask(scores: dict[str, torch.Tensor], share: float) -> dict[str, torch.Tensor]:
    """1 for the ``share`` of all weights with the largest scores (one threshold over every tensor)."""
    flat = torch.cat([s.flatten().float() for s in scores.values()])
    k = max(1, round(share * flat.numel()))
    threshold = torch.topk(flat, k).values.min()
    return {n: (s.float() >= threshold).to(s.dtype) for n, s in scores.items()}


def symmetric_kl(logits: torch.Tensor, noised: torch.Tensor) -> torch.Tensor:
    """KL(p || q) + KL(q || p) of the softmax predictions, summed over classes, mean over examples
    (R3F's loss term, as in fairseq's sentence_prediction_r3f)."""
    lp, lq = F.log_softmax(logits.float(), -1), F.log_softmax(noised.float(), -1)
    rows = lp.shape[0] if lp.dim() == 2 else lp.shape[0] * lp.shape[1]
    return (F.kl_div(lq, lp, log_target=True, reduction="sum")
            + F.kl_div(lp, lq, log_target=True, reduction="sum")) / rows


def embedding_noise(shape: torch.Size, kind: str, eps: float, device, dtype, generator=None) -> torch.Tensor:
    if kind == "normal":
        return torch.randn(shape, device=device, dtype=dtype, generator=generator) * eps
    return (torch.rand(shape, device=device, dtype=dtype, generator=generator) * 2 - 1) * eps


def copy_into(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for t, s in zip(targets, sources):
            t.copy_(s)


def ema_update(avg: list[torch.Tensor], weights: list[torch.Tensor], decay: float) -> None:
    """avg <- decay avg + (1 - decay) w, in place."""
    for a, w in zip(avg, weights):
        a.lerp_(w, 1 - decay)


def running_mean_update(avg: list[torch.Tensor], weights: list[torch.Tensor], n: int) -> None:
    """The mean of n + 1 weights from the mean of n (SWA, Izmailov et al. 2018): avg + (w - avg) / (n + 1)."""
    for a, w in zip(avg, weights):
        a.lerp_(w, 1.0 / (n + 1))


# ----------------------------------------------------------------------------- hooks


class Stabiliser(Hook):
    options: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any):
        self.opts = {**self.options, **options}
        self.generator: torch.Generator | None = None

    def seed(self, seed: int, device) -> None:
        self.generator = torch.Generator(device=device).manual_seed(seed)

    @classmethod
    def check(cls, opts: dict[str, Any], where: str) -> None:
        """Range checks of the options (SpecError naming the field)."""


def _in(value: Any, low: float, high: float, where: str, closed_high: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value
    ok = ok and (value <= high if closed_high else value < high)
    if not ok:
        raise SpecError(f"{where}: {value!r} must lie in [{low:g}, {high:g}{']' if closed_high else ')'}")


@STABILISERS.register("mixout", seed_stacked=False, problems=("classification", "regression", "mlm"),
                      freeze=("none",))
class Mixout(Stabiliser):
    name = "mixout"
    options: ClassVar[dict[str, Any]] = {"p": 0.1}

    @classmethod
    def check(cls, opts, where):
        _in(opts["p"], 0, 1, f"{where}.p")

    def on_train_start(self, model, optimizer, total_steps):
        self.params = linear_weights(model)
        self.anchor = {n: p.detach().clone() for n, p in self.params.items()}
        self.raw: dict[str, torch.Tensor] = {}

    def on_step_start(self, step):
        p = self.opts["p"]
        if p == 0:
            return
        self.masks = {}
        with torch.no_grad():
            for n, w in self.params.items():
                mask = torch.bernoulli(torch.full_like(w, p), generator=self.generator)
                self.masks[n], self.raw[n] = mask, w.detach().clone()
                w.copy_(mixout(w, self.anchor[n], mask, p))

    def on_before_optimizer_step(self, model, step):
        p = self.opts["p"]
        if p == 0:
            return
        with torch.no_grad():  # chain rule through mixout, then the raw weights back for the update
            for n, w in self.params.items():
                if w.grad is not None:
                    w.grad.mul_((1 - self.masks[n]) / (1 - p))
                w.copy_(self.raw[n])
        self.raw.clear()


@STABILISERS.register("l2sp", "l2_sp", seed_stacked=False, problems=("classification", "regression", "mlm"))
class L2SP(Stabiliser):
    name = "l2sp"
    options: ClassVar[dict[str, Any]] = {"strength": 0.01}

    @classmethod
    def check(cls, opts, where):
        _in(opts["strength"], 0, float("inf"), f"{where}.strength")

    def on_train_start(self, model, optimizer, total_steps):
        self.params = backbone_params(model)
        self.anchor = [p.detach().clone() for p in self.params.values()]

    def on_loss(self, batch, labels, logits, loss):
        return loss + l2sp_penalty(self.params.values(), self.anchor, self.opts["strength"])


class ChildTuning(Stabiliser):
    options: ClassVar[dict[str, Any]] = {"reserve_p": 0.3}

    @classmethod
    def check(cls, opts, where):
        _in(opts["reserve_p"], 1e-12, 1, f"{where}.reserve_p", closed_high=True)


@STABILISERS.register("child_tuning_f", seed_stacked=False, problems=("classification", "regression", "mlm"),
                      freeze=("none",))
class ChildTuningF(ChildTuning):
    """Task-free: a fresh Bernoulli(reserve_p) mask of the backbone's gradients each step, / reserve_p."""

    name = "child_tuning_f"

    def on_train_start(self, model, optimizer, total_steps):
        self.params = backbone_params(model)

    def on_before_optimizer_step(self, model, step):
        q = self.opts["reserve_p"]
        with torch.no_grad():
            for p in self.params.values():
                if p.grad is not None:
                    p.grad.mul_(torch.bernoulli(torch.full_like(p.grad, q), generator=self.generator) / q)


@STABILISERS.register("child_tuning_d", seed_stacked=False, problems=("classification", "regression"),
                      freeze=("none",))
class ChildTuningD(ChildTuning):
    """Task-driven: a fixed mask of the backbone weights with the top reserve_p Fisher information."""

    name = "child_tuning_d"

    def __init__(self, batches: Callable[[], Iterable] | None = None,
                 loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None, **options):
        super().__init__(**options)
        self.batches, self.loss = batches, loss

    def on_train_start(self, model, optimizer, total_steps):
        if self.batches is None or self.loss is None:
            raise ModelError("child_tuning_d: needs the training batches to estimate the Fisher information")
        self.params = backbone_params(model)
        self.scores = fisher_scores(model, self.params, self.batches(), self.loss)
        self.masks = top_share_mask(self.scores, self.opts["reserve_p"])

    def on_before_optimizer_step(self, model, step):
        with torch.no_grad():
            for n, p in self.params.items():
                if p.grad is not None:
                    p.grad.mul_(self.masks[n])


@STABILISERS.register("r3f", seed_stacked=False, problems=("classification",), freeze=None)
class R3F(Stabiliser):
    name = "r3f"
    options: ClassVar[dict[str, Any]] = {"noise": "uniform", "eps": 1e-5, "lambda": 1.0}

    @classmethod
    def check(cls, opts, where):
        if opts["noise"] not in ("normal", "uniform"):
            raise SpecError(f"{where}.noise: {opts['noise']!r} is not allowed; allowed: 'normal', 'uniform'")
        _in(opts["eps"], 1e-12, float("inf"), f"{where}.eps")
        _in(opts["lambda"], 0, float("inf"), f"{where}.lambda")

    def on_train_start(self, model, optimizer, total_steps):
        hf = getattr(model.backbone, "model", None)
        get = getattr(hf, "get_input_embeddings", None)
        self.embeddings = get() if callable(get) else None
        if self.embeddings is None or getattr(model, "input_adapter", None) is not None:
            family = getattr(model.backbone, "family", type(model.backbone).__name__)
            raise ModelError(f"stabilisers: r3f needs a text backbone's token embeddings; {family} with this "
                             "input has none")
        self.model = model

    def on_loss(self, batch, labels, logits, loss):
        o = self.opts

        def add_noise(module, args, out):
            return out + embedding_noise(out.shape, o["noise"], o["eps"], out.device, out.dtype, self.generator)

        handle = self.embeddings.register_forward_hook(add_noise)
        try:
            noised = self.model(**batch)
        finally:
            handle.remove()
        return loss + o["lambda"] * symmetric_kl(logits, noised)


class Averaging(Stabiliser):
    """Keeps an average of the weights; evaluation and the stored model use it."""

    def on_train_start(self, model, optimizer, total_steps):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.avg = [p.detach().clone() for p in self.params]
        self.total, self.n, self.swapped = total_steps, 0, None

    def on_eval_start(self, model):
        if self.n:
            self.swapped = [p.detach().clone() for p in self.params]
            copy_into(self.params, self.avg)

    def on_eval_end(self, model):
        if self.swapped is not None:
            copy_into(self.params, self.swapped)
            self.swapped = None

    def on_train_end(self, model):
        if self.n:
            copy_into(self.params, self.avg)

    def state_dict(self):
        return {"avg": [a.clone() for a in self.avg], "n": self.n}

    def load_state_dict(self, state):
        copy_into(self.avg, state["avg"])
        self.n = int(state["n"])


@STABILISERS.register("ema", seed_stacked=False, problems=("classification", "regression", "mlm"), freeze=None)
class EMA(Averaging):
    name = "ema"
    options: ClassVar[dict[str, Any]] = {"decay": 0.99}

    @classmethod
    def check(cls, opts, where):
        _in(opts["decay"], 0, 1, f"{where}.decay")

    def on_after_optimizer_step(self, model, step):
        with torch.no_grad():
            ema_update(self.avg, [p.detach() for p in self.params], self.opts["decay"])
        self.n += 1


@STABILISERS.register("swa", seed_stacked=False, problems=("classification", "regression", "mlm"), freeze=None)
class SWA(Averaging):
    name = "swa"
    options: ClassVar[dict[str, Any]] = {"start": 0.75, "every": 1}

    @classmethod
    def check(cls, opts, where):
        _in(opts["start"], 0, 1, f"{where}.start")
        if not isinstance(opts["every"], int) or isinstance(opts["every"], bool) or opts["every"] < 1:
            raise SpecError(f"{where}.every: {opts['every']!r} must be an integer >= 1")

    def on_after_optimizer_step(self, model, step):
        # ``step`` is the index of the update just made (the engine's, from 0): ``done`` updates so far.
        # Snapshots after update first, first + every, ...: with start 0.5 of 4 steps and every 2, the
        # weights after updates 2 and 4 (the last, 1.0 of the steps, always counts when every divides).
        done, first = step + 1, max(1, int(self.opts["start"] * self.total))
        if done < first or (done - first) % self.opts["every"]:
            return
        with torch.no_grad():
            if self.n == 0:
                copy_into(self.avg, self.params)
            else:
                running_mean_update(self.avg, [p.detach() for p in self.params], self.n)
        self.n += 1


# ----------------------------------------------------------------------------- spec and building


@SECTION_CHECKS.register("StabiliserSpec")
def check_stabiliser(spec) -> None:
    """Spec-time check of a StabiliserSpec: the name (listing the known ones), options and their ranges."""
    cls = STABILISERS.get(spec.name, "stabilisers.name")
    where = f"stabilisers[{spec.name}].options"
    unknown = [k for k in spec.options if k not in cls.options]
    if unknown:
        allowed = ", ".join(f"{k} (default {v})" for k, v in cls.options.items()) or "none"
        raise SpecError(f"{where}.{unknown[0]}: unknown option for {spec.name!r}; allowed: {allowed}")
    cls.check({**cls.options, **spec.options}, where)


def check_compatible(specs, problem: str, freeze: str) -> None:
    """A stabiliser asked with a task problem or freeze policy it does not support: one line."""
    for s in specs:
        caps = STABILISERS.caps(s.name)
        if problem not in caps.problems:
            raise SpecError(f"stabilisers: {s.name} does not support {problem} tasks; it supports "
                            f"{', '.join(caps.problems)}")
        allowed = caps.freeze
        if allowed is not None and freeze not in allowed:
            raise SpecError(f"stabilisers: {s.name} does not run with freeze.name {freeze!r} (it masks or swaps "
                            f"the backbone's weights itself); allowed: {', '.join(allowed)}")


def build_stabilisers(specs, *, problem: str, freeze: str, seed: int, device,
                      batches: Callable[[], Iterable] | None = None,
                      loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> list[Stabiliser]:
    """Hooks for ``spec.stabilisers`` in order. ``batches``: a callable giving (inputs, labels) training
    batches on the device (child-tuning D's Fisher estimate); ``loss``: the task loss of (logits, labels)."""
    check_compatible(specs, problem, freeze)
    hooks = []
    for i, s in enumerate(specs):
        cls = STABILISERS.get(s.name, "stabilisers.name")
        hook = cls(batches=batches, loss=loss, **s.options) if cls is ChildTuningD else cls(**s.options)
        hook.seed(seed * 1000 + i, device)
        hooks.append(hook)
    return hooks
