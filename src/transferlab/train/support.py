"""Which runs may train together, seed-stacked: decided by the capabilities each part declares.

    why = unsupported(specs, hooks)   # None, or one line naming the part and the flag it lacks

The flags live where each part is registered (typed capability classes, registry.py): optimizers
``elementwise`` (recipes/optim.py: a stacked update must be S independent updates), freezers and
stabilisers ``seed_stacked``, families ``stackable`` (their FamilyMap, models/schema), hooks and the
distiller ``seed_stacked`` (class attributes). No part is decided by its name here.
The fused encoder (train/fused.py) also needs ``fused`` from the head (models/heads.py), the freezer
and the optimizer, and a family with ``layer_loop``:

    kind, reason = choose_engine(specs, hooks, modality)   # train.engine: auto | general | fused
"""

from __future__ import annotations

from transferlab.errors import UserError
from transferlab.models.backbone import model_type_of
from transferlab.models.heads import HEADS
from transferlab.models.schema import family_of
from transferlab.recipes.distill import Distiller
from transferlab.recipes.freeze import FREEZERS
from transferlab.recipes.optim import OPTIMIZERS
from transferlab.recipes.stabilisers import STABILISERS
from transferlab.recipes.schedules import SCHEDULES
from transferlab.spec import RunSpec, spec_hash, to_dict

# What may differ between the slots of one stacked group. Weights: each slot's model is built as its run
# builds it alone (init scheme, re-init, transplant, pretrained or random), then stacked (load_slot).
WEIGHT_FIELDS = ("seed", "name", "model.init", "init.reinit_layers", "init.reinit_pooler", "init.std", "init.rules",
                 "transplant")
# Optimizer values held per slot by recipes/slots.py when every optimizer declares OptimCaps.per_slot.
OPTIM_FIELDS = ("optim.name", "optim.lr", "optim.head_lr", "optim.layer_decay", "optim.weight_decay")
# Dropout probabilities: per slot when the runs draw from their own streams (train.dropout_rng: run).
DROPOUT_FIELDS = ("model.dropout", "head.dropout")
# Why the other fields must match (the shared structure of one stacked model), named in refusals.
SHARED = {"model": "the backbone's architecture and its dropout are shared by the stack",
          "head": "the head's structure and dropout are shared by the stack",
          "task": "the slots train on one task", "train": "the slots share the step plan, batches and evaluations",
          "optim": "the optimizer's betas, eps, clipping and state dtype are shared",
          "stabilisers": "stabilisers are shared by the stack", "distill": "distillation is shared by the stack",
          "input_adapter": "the input adapter's structure is shared by the stack"}


class Unsupported(UserError):
    """These runs cannot train seed-stacked (the reason names the part and the flag)."""


def unsupported(specs: list[RunSpec], hooks: list | tuple = ()) -> str | None:
    """None when ``specs`` can train together, else the reason (for a log line or an error)."""
    if not specs:
        return "no runs"
    if (why := slot_difference(specs)) is not None:
        return why
    runs = [(spec_hash(s), s.seed) for s in specs]
    if len(set(runs)) != len(runs):
        return f"two runs share a seed and recipe (seeds {[s.seed for s in specs]}): they are one run"
    spec = specs[0]
    if spec.multitask is not None:  # one shared model whose batches follow a task sampler
        return "multitask: a multi-task run trains one shared model (train/multitask.py), not seed-stacked"
    if spec.intermediate is not None:  # phase A runs first (train/intermediate.py)
        return "intermediate: the intermediate phase is not supported seed-stacked"
    if not OPTIMIZERS.supports(spec.optim.name, "elementwise"):
        return (f"optim.name: optimizer {spec.optim.name!r} does not declare 'elementwise'; a seed-stacked update "
                "must be S independent updates")
    for name in dict.fromkeys(s.freeze.name for s in specs):
        if not FREEZERS.supports(name, "seed_stacked"):
            return f"freeze.name: policy {name!r} does not declare 'seed_stacked'"
    if spec.distill.kind != "none" and not Distiller.seed_stacked:
        return f"distill.kind: the {spec.distill.kind} hook (Distiller) does not declare 'seed_stacked'"
    for stabiliser in spec.stabilisers:
        if not STABILISERS.supports(stabiliser.name, "seed_stacked"):
            return f"stabilisers: {stabiliser.name!r} does not declare 'seed_stacked'"
    for hook in hooks:
        if not getattr(hook, "seed_stacked", False):
            return f"hook {type(hook).__name__} does not declare 'seed_stacked'"
    if spec.train.checkpoint_every:
        return "train.checkpoint_every: resumable checkpoints are not supported seed-stacked"
    if spec.train.precision == "fp16":
        return "train.precision: fp16 loss scaling is shared by all seeds; use bf16 or fp32"
    model_type = model_type_of(spec.model)
    family = family_of(model_type)
    if family is None or not family.stackable:
        return f"model.name: the {model_type} family does not declare 'stackable' (its FamilyMap)"
    return None


def _flat(spec: RunSpec) -> dict[str, object]:
    """The spec as ``section.field`` -> value (one level: lists and nested mappings stay whole)."""
    out: dict[str, object] = {}
    for key, value in to_dict(spec).items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def _optim_refusal(specs: list[RunSpec]) -> str | None:
    names = list(dict.fromkeys(s.optim.name for s in specs))
    for name in names:
        if not OPTIMIZERS.supports(name, "per_slot"):
            return (f"optim: the slots differ in their optimizer settings and optimizer {name!r} does not declare "
                    "'per_slot' (OptimCaps)")
    updates = {OPTIMIZERS.caps(n).slot_update for n in names}
    if len(updates) > 1:
        return (f"optim.name: {names[0]!r} beside {names[1]!r}: their OptimCaps.slot_update differ "
                f"({', '.join(sorted(updates))}); one stacked group runs one update rule")
    if any(s.optim.state_dtype != "fp32" for s in specs):
        return "optim.state_dtype: per-slot optimizer settings keep fp32 moments (OptimCaps.per_slot)"
    return None


def slot_difference(specs: list[RunSpec]) -> str | None:
    """None when ``specs`` may be the slots of one stacked group, else the first field that differs and
    cannot be per slot, with the part's flag (or why it is shared structure)."""
    found = slot_refusal(specs)
    return None if found is None else found[0]


def slot_refusal(specs: list[RunSpec]) -> tuple[str, bool] | None:
    """(reason, by_flag) as :func:`slot_difference`; ``by_flag``: the runs differ only where a part could hold
    values per slot but does not declare it (they would share a group if it did), not in shared structure."""
    flats = [_flat(s) for s in specs]
    differs = [k for k in flats[0] if any(f.get(k) != flats[0][k] for f in flats[1:])]
    differs += sorted({k for f in flats[1:] for k in f if k not in flats[0]})
    parts = [k for k in differs if k in OPTIM_FIELDS or k.startswith(("freeze.", "schedule."))]
    streams = all(s.train.dropout_rng == "run" for s in specs)
    for key in [k for k in differs if k in DROPOUT_FIELDS]:
        if not streams:
            values = ", ".join(dict.fromkeys(repr(f.get(key)) for f in flats))
            return (f"{key}: the runs differ ({values}); per-slot dropout needs train.dropout_rng: run (each run's "
                    "own stream)"), True
    differs = [k for k in differs if k not in DROPOUT_FIELDS]
    for key in differs:
        if key not in WEIGHT_FIELDS and key not in parts:
            values = ", ".join(dict.fromkeys(repr(f.get(key)) for f in flats))
            return f"{key}: the runs differ ({values}); {SHARED.get(key.split('.')[0], 'it is not per-slot')}", False
    for key in parts:
        values = ", ".join(dict.fromkeys(repr(f.get(key)) for f in flats))
        for spec in specs:
            if key.startswith("freeze.") and not FREEZERS.supports(spec.freeze.name, "per_slot"):
                return (f"{key}: the runs differ ({values}); policy {spec.freeze.name!r} does not declare 'per_slot' "
                        "(FreezerCaps)"), True
            if key.startswith("schedule.") and not SCHEDULES.supports(spec.schedule.name, "per_slot"):
                return f"schedule: {spec.schedule.name!r} does not declare 'per_slot' (ScheduleCaps)", True
    why = _optim_refusal(specs) if parts else None  # per-slot LRs, schedules and masks: the per-slot optimizer
    return None if why is None else (why, True)


def per_slot_optim(specs: list[RunSpec]) -> bool:
    """Do the slots differ in optimizer, schedule or freezing values (recipes/slots.py then builds the update)?"""
    first = specs[0]
    return any(s.optim != first.optim or s.schedule != first.schedule or s.freeze != first.freeze
               for s in specs[1:])


def per_slot_freeze(specs: list[RunSpec]) -> bool:
    """Do the slots differ in their freezing policy (recipes/freeze.py SlotFreezer: per-slot gradient masks)?"""
    return any(s.freeze != specs[0].freeze for s in specs[1:])


def stack_key(spec: RunSpec) -> str:
    """What must match for runs to share a stacked group: the spec without the per-slot fields (the optimizer
    values kept when the optimizer does not declare ``per_slot``; its ``slot_update`` otherwise)."""
    import json

    flat = _flat(spec)
    per_slot_opt = spec.optim.name in OPTIMIZERS and OPTIMIZERS.supports(spec.optim.name, "per_slot")
    drop = set(WEIGHT_FIELDS) | (set(OPTIM_FIELDS) if per_slot_opt else set())
    if per_slot_opt and spec.freeze.name in FREEZERS and FREEZERS.supports(spec.freeze.name, "per_slot"):
        drop |= {k for k in flat if k.startswith("freeze.")}
    if per_slot_opt and spec.schedule.name in SCHEDULES and SCHEDULES.supports(spec.schedule.name, "per_slot"):
        drop |= {k for k in flat if k.startswith("schedule.")}
    if spec.train.dropout_rng == "run":
        drop |= set(DROPOUT_FIELDS)
    key = {k: v for k, v in flat.items() if k not in drop}
    if per_slot_opt:
        key["optim.slot_update"] = OPTIMIZERS.caps(spec.optim.name).slot_update
    return json.dumps(key, sort_keys=True, default=str)


def fused_unsupported(specs: list[RunSpec], hooks: list | tuple = (), modality: str = "text") -> str | None:
    """None when the fused encoder (train/fused.py) can train ``specs``, else the part lacking support.
    It needs all that stacking needs, a BERT-shaped family, and ``fused`` from head, freezer and optimizer."""
    if (why := unsupported(specs, hooks)) is not None:
        return why
    spec = specs[0]
    family = family_of(model_type_of(spec.model))
    if family is None or not family.layer_loop:
        return f"model.name: the {model_type_of(spec.model)} family does not declare 'layer_loop' (BERT-shaped)"
    if modality != "text":
        return f"task: a {modality} task enters through an input adapter; the fused encoder reads token ids"
    if spec.train.dropout_rng == "run":
        return "train.dropout_rng: run: the fused encoder draws one dropout stream for the stack"
    parts = [("head.name", HEADS, spec.head.name)]
    parts += [("freeze.name", FREEZERS, name) for name in dict.fromkeys(s.freeze.name for s in specs)]
    parts += [("optim.name", OPTIMIZERS, name) for name in dict.fromkeys(s.optim.name for s in specs)]
    for field, registry, name in parts:
        if name not in registry or not registry.supports(name, "fused"):  # task-kind heads: not in HEADS
            return f"{field}: {name!r} does not declare 'fused'"
    return None


def choose_engine(specs: list[RunSpec], hooks: list | tuple = (), modality: str = "text") -> tuple[str, str | None]:
    """(kind, reason): ``single``, ``stacked`` or ``fused`` for ``train.engine`` (auto|general|fused|fused-padded);
    ``reason`` says why auto did not take the fused encoder. ``fused`` with an unsupported part:
    Unsupported naming the part. Under auto a single run (S = 1) keeps the plain model."""
    engine, stacked = specs[0].train.engine, len(specs) > 1
    if engine == "general":
        return ("stacked" if stacked else "single"), None
    why = fused_unsupported(specs, hooks, modality)
    if engine in ("fused", "fused-padded"):
        if why is not None:
            raise Unsupported(f"train.engine: {engine}: {why}")
        return "fused", None
    if not stacked:
        return "single", None
    return ("stacked", f"fused encoder not used: {why}") if why is not None else ("fused", None)
