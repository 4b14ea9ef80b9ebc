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
from transferlab.spec import RunSpec, spec_hash


class Unsupported(UserError):
    """These runs cannot train seed-stacked (the reason names the part and the flag)."""


def unsupported(specs: list[RunSpec], hooks: list | tuple = ()) -> str | None:
    """None when ``specs`` can train together, else the reason (for a log line or an error)."""
    if not specs:
        return "no runs"
    if any(spec_hash(s) != spec_hash(specs[0]) for s in specs):
        return "the runs differ in more than their seed (and name)"
    seeds = [s.seed for s in specs]
    if len(set(seeds)) != len(seeds):
        return f"two runs share a seed ({seeds})"
    spec = specs[0]
    if spec.multitask is not None:  # one shared model whose batches follow a task sampler
        return "multitask: a multi-task run trains one shared model (train/multitask.py), not seed-stacked"
    if spec.intermediate is not None:  # phase A runs first (train/intermediate.py)
        return "intermediate: the intermediate phase is not supported seed-stacked"
    if not OPTIMIZERS.supports(spec.optim.name, "elementwise"):
        return (f"optim.name: optimizer {spec.optim.name!r} does not declare 'elementwise'; a seed-stacked update "
                "must be S independent updates")
    if not FREEZERS.supports(spec.freeze.name, "seed_stacked"):
        return f"freeze.name: policy {spec.freeze.name!r} does not declare 'seed_stacked'"
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
    for field, registry, name in (("head.name", HEADS, spec.head.name), ("freeze.name", FREEZERS, spec.freeze.name),
                                  ("optim.name", OPTIMIZERS, spec.optim.name)):
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
