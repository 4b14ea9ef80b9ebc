"""Which runs may train together, seed-stacked: decided by the capabilities each part declares.

    why = unsupported(specs, hooks)   # None, or one line naming the part and the flag it lacks

The flags live where each part is registered: optimizers ``elementwise`` (recipes/optim.py: a
stacked update must be S independent updates), freezers ``seed_stacked`` (recipes/freeze.py),
families ``stackable`` (their FamilyMap, models/schema), hooks ``seed_stacked`` (recipes/hooks.py).
"""

from __future__ import annotations

from transferlab.errors import UserError
from transferlab.models.backbone import model_type_of
from transferlab.models.schema import family_of
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
    if spec.multitask is not None:  # one shared encoder, a head per task: its own training function
        return "multitask: multi-task runs train on their own function (train/multitask.py), not seed-stacked"
    if spec.intermediate is not None:  # phase A runs first (train/intermediate.py)
        return "intermediate: the intermediate phase is not supported seed-stacked"
    if not OPTIMIZERS.supports(spec.optim.name, "elementwise"):
        return (f"optim.name: optimizer {spec.optim.name!r} does not declare 'elementwise'; a seed-stacked update "
                "must be S independent updates")
    if not FREEZERS.supports(spec.freeze.name, "seed_stacked"):
        return f"freeze.name: policy {spec.freeze.name!r} does not declare 'seed_stacked'"
    if spec.distill.kind != "none":
        return f"distill.kind: the {spec.distill.kind} hook changes the loss and does not declare 'seed_stacked'"
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
