"""Pretraining objectives (MLM, masked inputs) trained by the Engine (train/engine.py), not a loop of their own.

    history = train_objective(spec, model, n_train, batch_loss, heldout, device, amp, out, progress=True)
    # batch_loss(forward, index) -> the mean loss of corpus rows ``index`` (``forward``: the model's call,
    # compiled when train.compile); heldout() -> the held-out loss (fixed masks)

The parts: ``IndexSource`` (a BatchSource: shuffled corpus row batches, epoch e from
``default_rng([seed, e])``), ``HeldoutEvaluator`` (an Evaluator: the held-out loss, lower is better)
and ``ObjectiveTrainee`` (a Trainee: the objective's loss, loss hooks, fp16 loss scaling). The run is
recorded in a ``MemorySink``; ``history`` is what ``pretrain.json`` keeps: the loss curve, the held-out
losses (before training, ``train.num_evals`` times during, and after) and the steps taken. Freezers that
declare ``pretrain``, stabilisers that list the ``mlm`` problem, patience, compile and
checkpoint_layers reach pretraining through the Engine like any run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from transferlab.records import EngineInfo
from transferlab.train.bookkeeping import SeedRun
from transferlab.train.compute import SingleTrainee
from transferlab.train.engine import Engine, MemorySink


class IndexSource:
    """Batches of corpus row indices: each epoch a permutation seeded by (seed, epoch), cut in order."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch = self.pos = self.samples = 0
        self.batches: list[np.ndarray] = []

    def epoch_batches(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def _cut(self, epoch: int) -> list[np.ndarray]:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return [order[i: i + self.batch_size] for i in range(0, self.n, self.batch_size)]

    def next(self) -> np.ndarray:
        if self.pos >= len(self.batches):
            self.batches, self.pos, self.epoch = self._cut(self.epoch), 0, self.epoch + 1
        index = self.batches[self.pos]
        self.pos += 1
        self.samples += len(index)
        return index

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load(self, state: dict[str, Any]) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self.batches = self._cut(self.epoch - 1) if self.epoch else []

    def where(self, step: int) -> str:
        return ""


class HeldoutEvaluator:
    """The held-out loss of the objective (fixed masks); the model is left in training mode."""

    main_metric, higher_is_better = "loss", False

    def __init__(self, heldout: Callable[[], float]):
        self.heldout = heldout

    def evaluate(self, model: nn.Module, split: str, keep=None) -> dict[str, float]:
        was = model.training
        value = self.heldout()
        model.train(was)
        return {"loss": value}

    def splits(self) -> list[str]:
        return []

    def summary(self, step: int, dev: dict, test: dict) -> dict[str, Any]:
        return {}

    def meta(self) -> dict[str, Any]:
        return {}


class ObjectiveTrainee(SingleTrainee):
    """One model trained on ``batch_loss(forward, index)``; loss hooks (L2-SP) see ``(index, None, None, loss)``."""

    def __init__(self, model: nn.Module, device, amp, compile: bool, batch_loss: Callable):
        scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
        super().__init__(model, device, amp, False, compile, scaler)
        self.batch_loss = batch_loss

    def backward(self, batches: list, accum: int, loss_hooks=()) -> Tensor:
        index = batches[0]
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            loss = self.batch_loss(self.forward, index)
        for hook in loss_hooks:
            loss = hook.on_loss(index, None, None, loss)
        loss = loss / accum
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        return loss.detach().float().reshape(1)

    def checkpoint_layers(self) -> None:
        self.module.checkpoint_layers()


def train_objective(spec, model: nn.Module, n_train: int, batch_loss: Callable, heldout: Callable[[], float],
                    device: torch.device, amp, out: Path, progress: bool = True, hooks=()) -> dict:
    """Train ``model`` on the Engine; the history ``pretrain.json`` keeps (steps, curve, held-out losses)."""
    t = spec.train
    history: dict[str, Any] = {"steps": 0, "curve": [], "heldout": [[0, heldout()]]}
    if t.max_steps == 0:  # write the (layer-cut) model without training
        return history
    sink = MemorySink(out)
    # pretraining's num_evals counts the evaluations before the last one; the engine's includes it
    engine = Engine([spec], sink, train=dataclasses.replace(t, num_evals=t.num_evals + 1), progress=progress,
                    hooks=hooks, device=device, amp=amp, problem="mlm")
    engine.info = EngineInfo("single", 1, False, device.type, str(amp).replace("torch.", "") if amp else "fp32")

    def prepare(engine: Engine, seeds: list[SeedRun]) -> ObjectiveTrainee:
        seed = SeedRun(spec, None, run_id=spec.name)
        seed.source = IndexSource(n_train, t.batch_size, spec.seed)
        seed.evaluator = HeldoutEvaluator(heldout)
        seeds.append(seed)
        engine.start(seed)
        return ObjectiveTrainee(model, device, amp, t.compile, batch_loss)

    (result,) = engine.run(prepare)
    history["steps"] = result.steps
    history["curve"] = [[row[0], row[1]] for row in sink.curve_rows]
    history["heldout"] += [[step, value] for step, split, key, value in sink.eval_rows if split == "dev"]
    history["status"] = result.status
    if result.summary.error:
        history["error"] = result.summary.error
    return history
