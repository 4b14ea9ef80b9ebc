"""Recipes: how a backbone is fine-tuned (parameter groups, optimizers, LR schedules).

    groups = build_param_groups(model, spec.optim, model.num_layers)   # param_groups.py
    optimizer = build_optimizer(groups, spec.optim, device.type)        # optim.py, OPTIMIZERS
    scheduler = build_schedule(optimizer, spec.schedule, total_steps)   # schedules.py, SCHEDULES

Method cards for each recipe are in ``docs/methods/``.
"""

from transferlab.recipes import distill, freeze, init, stabilisers, transplant  # noqa: F401  (their spec checks)
from transferlab.recipes.optim import OPTIMIZERS, build_optimizer
from transferlab.recipes.param_groups import build_param_groups, describe_param_groups, layer_of
from transferlab.recipes.schedules import SCHEDULES, build_schedule, lr_factor, resolve_warmup

__all__ = [
    "OPTIMIZERS", "SCHEDULES", "build_optimizer", "build_param_groups", "build_schedule",
    "describe_param_groups", "layer_of", "lr_factor", "resolve_warmup",
]
