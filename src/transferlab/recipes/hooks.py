"""Training-time strategies as hook objects: the engine (train/engine.py) runs each :class:`Event`, in
this order, on every hook (``Engine.run_event(Event.STEP_START, step)``).

    class MyHook(Hook):
        seed_stacked = True            # works when ``model`` is a StackedModel of S seeds
        def on_loss(self, batch, labels, logits, loss): return loss + ...

    on_train_start(model, optimizer, total_steps)  once, after the optimizer exists
    on_step_start(step)                            before the micro-batches of optimizer step ``step``
    on_loss(batch, labels, logits, loss) -> loss   each micro-batch's training loss, replaced (S = 1)
    on_before_optimizer_step(model, step)          gradients clipped, before the update (masks, noise)
    on_after_optimizer_step(model, step)           after the update (weight averages)
    on_eval_start(model) / on_eval_end(model)      around every evaluation (swap averaged weights in, out);
                                                   the best state is taken in between (what was evaluated)
    on_log(step, metrics)                          host numbers as they are logged: train/loss, train/lr,
                                                   train/grad_norm every log_every steps; dev/* after each
                                                   evaluation; test/*, final_dev/* at the end (live tracking)
    on_train_end(model)                            once, training over, before the best state is restored
                                                   (weight averages put their average in place)
    on_finish(model)                               once, the final weights in place (best state restored),
                                                   before the final evaluations and the save (LoRA merges)
    state_dict() / load_state_dict(state)          what a resumable checkpoint keeps of the hook

Capabilities (class attributes, read by the engine; never a list of names):
    seed_stacked    the hook works on a StackedModel (every tensor it touches has a seed dimension)

Every method is a no-op by default, so a hook overrides only what it needs.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, ClassVar

import torch
from torch import nn


class Event(Enum):
    """The events of a training run; the value is the name of the hook method that handles it."""

    TRAIN_START = "on_train_start"
    STEP_START = "on_step_start"
    LOSS = "on_loss"  # called by the trainee, per micro-batch (it returns the loss)
    BEFORE_OPTIMIZER_STEP = "on_before_optimizer_step"
    AFTER_OPTIMIZER_STEP = "on_after_optimizer_step"
    EVAL_START = "on_eval_start"
    EVAL_END = "on_eval_end"
    LOG = "on_log"
    TRAIN_END = "on_train_end"
    FINISH = "on_finish"


class Hook:
    seed_stacked: ClassVar[bool] = False
    name: ClassVar[str] = "hook"

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, total_steps: int) -> None:
        pass

    def on_step_start(self, step: int) -> None:
        pass

    def on_before_optimizer_step(self, model: nn.Module, step: int) -> None:
        pass

    def on_after_optimizer_step(self, model: nn.Module, step: int) -> None:
        pass

    def on_eval_start(self, model: nn.Module) -> None:
        pass

    def on_eval_end(self, model: nn.Module) -> None:
        pass

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def on_train_end(self, model: nn.Module) -> None:
        pass

    def on_finish(self, model: nn.Module) -> None:
        pass

    @classmethod
    def logs(cls) -> bool:
        """Whether the hook overrides ``on_log`` (the loop reads values to the host only for such hooks)."""
        return any("on_log" in vars(c) for c in cls.__mro__ if c is not Hook)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
