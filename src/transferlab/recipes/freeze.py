"""Freezing policies: which parameters train at which step.

    freezer = build_freezer(spec.freeze, model, steps_per_epoch)   # before the optimizer is built
    # the loop calls freezer.on_train_start(...) and freezer.on_step_start(step) like any Hook

Every parameter sits in the optimizer's groups from step 0; a policy only toggles
``requires_grad``. A frozen parameter gets no gradient, and the optimizers skip parameters whose
``.grad`` is None, so they hold no state for parameters that were never trainable and a parameter
unfrozen at step N starts its moments at step N. A policy is a function of the step, so its
state in a checkpoint is the step (``state_dict``/``load_state_dict``).

    none                everything trains
    backbone_for_steps  the backbone is frozen for steps 0..N-1 and trains from step N on (freeze.steps)
    fpt                 Lu et al. 2021: input side, positions, LayerNorms and head train; attention and
                        feed-forward are frozen (flags: train_ffn, train_attention, freeze_positions,
                        freeze_layernorm)
    gradual             ULMFiT (Howard & Ruder 2018): the head first, then one layer group per epoch
                        (or per ``every_steps``) from the top down to the embeddings
    linear_probe        only the head
    bitfit              Ben Zaken et al. 2022: every bias and the head
    lora                Hu et al. 2022 via peft: low-rank adapters on q and v (``target_modules``) and the
                        head; merged into the weights when training ends, so the stored model is plain

A new input adapter (non-text tasks) is new weights like the head: it trains unless a policy's
``train_input`` is false. See docs/methods/freezing.md, fpt.md, gradual_unfreezing.md, lora.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from transferlab.errors import ModelError, SpecError
from transferlab.models.schema import CATEGORY, schema_of
from transferlab.recipes.hooks import Hook
from transferlab.recipes.param_groups import depths
from transferlab.registry import Registry
from transferlab.spec import SECTION_CHECKS


@dataclass(frozen=True)
class FreezerCaps:
    seed_stacked: bool = False  # works on a StackedModel (toggles requires_grad only; adds no modules)
    fused: bool = False  # works on the fused encoder's stacked parameters
    multitask: bool = True  # works on a MultiTaskModel (a head per task under ``head.<task>.``)
    pretrain: bool = False  # works on a pretraining model (no new head: the whole model is ``backbone.``)
    per_slot: bool = False  # slots of one stacked group may use different policies (SlotFreezer: gradient masks)


FREEZERS: Registry[type] = Registry("freeze policy", FreezerCaps)


class Freezer(Hook):
    """Base policy: everything trains. Subclasses override ``trainable`` and ``boundaries``."""

    options: ClassVar[dict[str, Any]] = {}

    def __init__(self, spec, steps_per_epoch: int = 1):
        self.spec = spec
        self.opts = {**self.options, **spec.options}
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.step = 0
        self.params: dict[str, nn.Parameter] = {}

    def prepare(self, model: nn.Module) -> None:
        """Called once before the optimizer exists (LoRA adds its parameters here)."""
        self.model = model
        self.num_layers = model.num_layers
        self.params = dict(model.named_parameters())

    def trainable(self, name: str, step: int) -> bool:
        return True

    def boundaries(self) -> set[int]:
        """Steps at which the trainable set changes."""
        return set()

    def apply(self, step: int) -> None:
        for name, p in self.params.items():
            p.requires_grad_(self.trainable(name, step))
        self.step = step

    # the loop's Hook protocol
    def on_train_start(self, model, optimizer, total_steps: int) -> None:
        self._bounds = self.boundaries()
        self.apply(0)

    def on_step_start(self, step: int) -> None:
        if step in self._bounds:
            self.apply(step)

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.spec.name, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("policy") != self.spec.name:
            raise ModelError(f"checkpoint was written with freeze policy {state.get('policy')!r}, "
                             f"this run uses {self.spec.name!r}")
        self._bounds = self.boundaries()
        self.apply(int(state["step"]))

    def on_finish(self, model: nn.Module) -> None:
        """Called after training, before the final evaluation and save."""

    def new_weights(self, name: str) -> bool:
        return name.startswith("head.") or (name.startswith("input_adapter.") and self.opts.get("train_input", True))


FREEZERS.register("none", seed_stacked=True, fused=True, pretrain=True, per_slot=True)(Freezer)


@FREEZERS.register("backbone_for_steps", "freeze_for_steps", seed_stacked=True, fused=True, per_slot=True)
class BackboneForSteps(Freezer):
    def trainable(self, name: str, step: int) -> bool:
        return not name.startswith("backbone.") or step >= self.spec.steps

    def boundaries(self) -> set[int]:
        return {self.spec.steps}


def role_categories(model: nn.Module) -> dict[str, str]:
    """Parameter name -> head, input, positions, norm, attention, ffn or pooler (via the layer schema)."""
    schema = schema_of(model)
    adapter = getattr(model, "input_adapter", None) is not None
    out = {}
    for name, _ in model.named_parameters():
        if name.startswith("head."):
            out[name] = "head"
        elif name.startswith("input_adapter."):
            out[name] = "input"
        else:
            _, role = schema.roles[name[len(schema.prefix):]]
            # with an input adapter the backbone's own token tables are bypassed: not the input layer
            out[name] = "bypassed" if adapter and role == "embeddings" else CATEGORY[role]
    return out


@FREEZERS.register("fpt", seed_stacked=True, fused=True, per_slot=True)
class FPT(Freezer):
    options: ClassVar[dict[str, Any]] = {"train_ffn": False, "train_attention": False, "freeze_positions": False,
                                         "freeze_layernorm": False}

    def prepare(self, model: nn.Module) -> None:
        super().prepare(model)
        o = self.opts
        self.rule = {"head": True, "input": True, "positions": not o["freeze_positions"],
                     "norm": not o["freeze_layernorm"], "attention": o["train_attention"], "ffn": o["train_ffn"],
                     "pooler": False, "bypassed": False}
        self.category = role_categories(model)

    def trainable(self, name: str, step: int) -> bool:
        return self.rule[self.category[name]]


@FREEZERS.register("gradual", "gradual_unfreezing", seed_stacked=True, fused=True, per_slot=True)
class Gradual(Freezer):
    options: ClassVar[dict[str, Any]] = {"every_steps": None}  # null: one layer group per epoch

    def every(self) -> int:
        return self.opts["every_steps"] or self.steps_per_epoch

    def prepare(self, model: nn.Module) -> None:
        super().prepare(model)
        self.depth = depths(model, self.num_layers)

    def trainable(self, name: str, step: int) -> bool:
        depth = self.depth(name)  # 0 embeddings .. L top layer, L+1 head
        return depth >= self.num_layers + 1 - step // self.every()

    def boundaries(self) -> set[int]:
        return {self.every() * k for k in range(1, self.num_layers + 2)}


@FREEZERS.register("linear_probe", seed_stacked=True, fused=True, per_slot=True)
class LinearProbe(Freezer):
    options: ClassVar[dict[str, Any]] = {"train_input": True}

    def trainable(self, name: str, step: int) -> bool:
        return self.new_weights(name)


@FREEZERS.register("bitfit", seed_stacked=True, fused=True, pretrain=True, per_slot=True)
class BitFit(Freezer):
    options: ClassVar[dict[str, Any]] = {"train_input": True}

    def trainable(self, name: str, step: int) -> bool:
        return self.new_weights(name) or name.endswith("bias")


@FREEZERS.register("lora")  # adds modules: not seed_stacked
class LoRA(Freezer):
    options: ClassVar[dict[str, Any]] = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": None,
                                         "train_input": True}

    def prepare(self, model: nn.Module) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        schema = schema_of(model)
        qv = [schema.family.layer_slots(schema.config)[k] for k in ("q.weight", "v.weight")]
        # the family's q and v modules (a fused one, GPT-2's c_attn or ModernBERT's Wqkv, adapts q, k and v)
        targets = self.opts["target_modules"] or list(schema.family.lora_targets)
        config = LoraConfig(r=self.opts["r"], lora_alpha=self.opts["alpha"], lora_dropout=self.opts["dropout"],
                            target_modules=targets, fan_in_fan_out=any(s.transpose for s in qv))
        try:
            inject_adapter_in_model(config, schema.model)
        except ValueError as e:
            raise SpecError(f"freeze.options.target_modules: {e}") from None
        super().prepare(model)

    def trainable(self, name: str, step: int) -> bool:
        return self.new_weights(name) or ".lora_" in name

    def on_finish(self, model: nn.Module) -> None:
        """Merge the adapters into their base layers and put the base layers back (a plain model to store)."""
        from peft.tuners.lora import LoraLayer

        for name, module in list(model.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge()
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent), attr, module.get_base_layer())


@SECTION_CHECKS.register("FreezeSpec")
def check_freeze(spec) -> None:
    """Spec-time check of a FreezeSpec: the policy, its options and steps."""
    cls = FREEZERS.get(spec.name, "freeze.name")
    unknown = [k for k in spec.options if k not in cls.options]
    if unknown:
        allowed = ", ".join(f"{k} (default {v})" for k, v in cls.options.items()) or "none"
        raise SpecError(f"freeze.options.{unknown[0]}: unknown option for policy {spec.name!r}; allowed: {allowed}")
    for key, value in spec.options.items():
        default = cls.options[key]
        number = (int, float) if isinstance(default, (int, float)) and not isinstance(default, bool) else None
        if default is not None and (isinstance(value, bool) != isinstance(default, bool)
                                    or not isinstance(value, number or type(default))):
            raise SpecError(f"freeze.options.{key}: {value!r} is not a {type(default).__name__}")
    if cls is LoRA:  # peft checks these only when the adapters are injected, after the run row exists
        opts = {**cls.options, **spec.options}
        if not (isinstance(opts["r"], int) and opts["r"] >= 1):
            raise SpecError(f"freeze.options.r: the LoRA rank must be an integer >= 1, got {opts['r']!r}")
        if not opts["alpha"] > 0:
            raise SpecError(f"freeze.options.alpha: must be > 0, got {opts['alpha']!r}")
        if not 0 <= opts["dropout"] < 1:
            raise SpecError(f"freeze.options.dropout: must be in [0, 1), got {opts['dropout']!r}")
    if cls is BackboneForSteps and spec.steps <= 0:
        raise SpecError(f"freeze.steps: {spec.steps} must be > 0 for backbone_for_steps "
                        "(the steps the backbone stays frozen)")
    if cls is not BackboneForSteps and spec.steps:
        raise SpecError(f"freeze.steps: only used by backbone_for_steps, not {spec.name!r}")


def build_freezer(spec, model: nn.Module, steps_per_epoch: int = 1) -> Freezer:
    """The policy of ``spec`` (a FreezeSpec), prepared on ``model``."""
    check_freeze(spec)
    freezer = FREEZERS.get(spec.name, "freeze.name")(spec, steps_per_epoch)
    freezer.prepare(model)
    return freezer


class SlotFreezer(Hook):
    """Each slot's own policy on one stacked model (every policy declaring ``FreezerCaps.per_slot``).

    A parameter trains (``requires_grad``) when it trains in any slot; in the slots where its policy freezes it,
    a hook on the parameter zeroes its gradient before clipping (so each slot's gradient norm is its run's),
    and the per-slot optimizer (recipes/slots.py) leaves it untouched there: no decay, no moments, its own
    step count from the step it first trains, as its run's optimizer that never saw a gradient for it.
    ``masks``: id(parameter) -> (S,) 1 where it trains, 0 where it is frozen (absent: it trains everywhere)."""

    def __init__(self, specs: list, model: nn.Module, steps_per_epoch: int = 1):
        self.freezers = [build_freezer(spec, model, steps_per_epoch) for spec in specs]
        self.params = dict(model.named_parameters())
        self.masks: dict[int, Any] = {}
        self.flags: dict[str, list[bool]] = {}
        self.hooked: set[int] = set()
        self.step = 0

    def _mask(self, key: int, grad):
        mask = self.masks.get(key)
        return grad if mask is None else grad * mask.view(-1, *[1] * (grad.dim() - 1))

    def apply(self, step: int) -> None:
        import torch

        for name, p in self.params.items():
            flags = self.flags[name] = [f.trainable(name, step) for f in self.freezers]
            p.requires_grad_(any(flags))
            if any(flags) and not all(flags):  # host to device only here, at the policies' boundaries
                self.masks[id(p)] = torch.tensor(flags, dtype=p.dtype, device=p.device)
                if id(p) not in self.hooked:
                    p.register_hook(lambda grad, key=id(p): self._mask(key, grad))
                    self.hooked.add(id(p))
            else:
                self.masks.pop(id(p), None)
        for freezer in self.freezers:
            freezer.step = step
        self.step = step

    def on_train_start(self, model, optimizer, total_steps: int) -> None:
        self._bounds = set().union(*(f.boundaries() for f in self.freezers))
        self.apply(0)

    def on_step_start(self, step: int) -> None:
        if step in self._bounds:
            self.apply(step)

    def trainable_count(self, slot: int) -> int:
        """Values slot ``slot``'s own policy trains now (its run's ``n_trainable``)."""
        return sum(p[0].numel() for name, p in self.params.items() if self.flags[name][slot])

    def keep(self, slots: list[int]) -> None:
        """Only ``slots`` stay (after the weights were cut to them)."""
        self.freezers = [self.freezers[i] for i in slots]
        self.apply(self.step)
