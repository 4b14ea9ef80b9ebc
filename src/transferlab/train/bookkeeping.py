"""Per-run bookkeeping, written once for S >= 1 seeds trained together (a single run is S = 1).

    seed = SeedRun(spec, task, data)       # one run: its source, evaluator, best state, patience, status, time
    watch = Watch(n_seeds, device, divergence_factor)
    watch.add(losses)                       # (S,) micro-batch losses, on the device
    watch.step(step, losses, norms)         # the first non-finite step, on the device
    stops = watch.log(step, lr, norms)      # one host sync per logging interval: [(slot, step, error)]
    rows = watch.curve()                    # per seed: [(step, loss, lr, grad_norm)], then cleared
    clock.charge(active)                    # wall time since the last charge, shared by the active seeds

Nothing here syncs with the device per step: losses, gradient norms, the first bad step and loss
explosions stay on the device until ``log``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from transferlab.data.task import Task
from transferlab.train.batches import Encoded


@dataclass
class SeedRun:
    """One seed's run inside the loop."""

    spec: Any  # a RunSpec (a PretrainSpec for pretraining)
    task: Task | None  # None: a multi-task run (its tasks live in its source and evaluator)
    data: dict[str, Encoded] = field(default_factory=dict)
    run_id: str = ""
    uid: str = ""
    transfer: dict = field(default_factory=dict)
    source: Any = None  # its BatchSource (train/engine.py)
    evaluator: Any = None  # its Evaluator
    model: Any = None  # the final model, once finished
    best_value: float | None = None
    best_step: int | None = None
    best_state: dict | None = None
    since_best: int = 0
    dev_at: dict = field(default_factory=dict)  # dev metrics by step: evaluation is deterministic, so reusable
    status: str = "finished"
    error: str | None = None
    error_step: int | None = None
    stopped: bool = False
    duration_s: float = 0.0

    def observe(self, step: int, value: float, better: bool, patience: int | None) -> bool:
        """A dev evaluation: True when it improved on the best so far (keep the state); patience counted."""
        if self.best_value is None or (value > self.best_value if better else value < self.best_value):
            self.best_value, self.best_step, self.since_best = value, step, 0
            return True
        self.since_best += 1
        if patience is not None and self.since_best >= patience:
            self.stopped = True
        return False

    def diverge(self, error_step: int, error: str) -> None:
        self.status, self.error_step, self.error, self.stopped = "diverged", error_step, error, True


class Watch:
    """Loss sums, the first non-finite step and loss explosions of S seeds, on the device."""

    def __init__(self, seeds: int, device: torch.device, factor: float | None):
        self.device, self.factor = device, factor
        self.loss_sum = torch.zeros(seeds, device=device)
        self.loss_n = 0
        self.first_bad = torch.full((seeds,), -1, dtype=torch.long, device=device)
        self.exploded = torch.full((seeds,), -1, dtype=torch.long, device=device)
        self.first_loss: torch.Tensor | None = None
        self.buf: list[tuple[int, torch.Tensor, float, torch.Tensor]] = []

    def add(self, losses: torch.Tensor) -> None:
        self.loss_sum += losses

    def step(self, step: int, losses: torch.Tensor, norms: torch.Tensor) -> None:
        """After optimizer step ``step`` (0-based) was prepared: note a non-finite loss or gradient."""
        self.loss_n += 1
        bad = ~torch.isfinite(losses) | ~torch.isfinite(norms)
        self.first_bad = torch.where(bad & (self.first_bad < 0), torch.full_like(self.first_bad, step + 1),
                                     self.first_bad)

    def log(self, step: int, lr: float | list[float], norms: torch.Tensor) -> list[tuple[int, int, str]]:
        """A curve point per seed (``lr``: one for all, or each slot's); returns the seeds that diverged as (slot, step, error)."""
        mean = self.loss_sum / self.loss_n
        self.buf.append((step, mean, lr, norms.detach()))
        self.loss_sum, self.loss_n = torch.zeros_like(self.loss_sum), 0
        if self.factor:  # loss explosion, decided on the device like first_bad
            self.first_loss = mean if self.first_loss is None else self.first_loss
            boom = mean > self.factor * self.first_loss.clamp_min(1e-3)
            self.exploded = torch.where(boom & (self.exploded < 0), torch.full_like(self.exploded, step),
                                        self.exploded)
        bad_steps, boom_steps = torch.stack([self.first_bad, self.exploded]).tolist()  # one host sync
        out = []
        for slot, (bad, boom) in enumerate(zip(bad_steps, boom_steps)):
            if bad >= 0:
                out.append((slot, bad, f"non-finite loss or gradient at step {bad}"))
            elif boom >= 0:
                out.append((slot, boom, f"loss exploded at step {boom}: {float(mean[slot]):.4g} > "
                                        f"{self.factor:g} x the first logged loss {float(self.first_loss[slot]):.4g}"))
        return out

    def curve(self) -> list[list[tuple[int, float, float, float]]]:
        """The buffered points of every seed, moved to the host in one transfer; the buffer is cleared."""
        if not self.buf:
            return []
        losses = torch.stack([b[1] for b in self.buf]).float().cpu().tolist()  # (points, seeds)
        norms = torch.stack([b[3].float() for b in self.buf]).cpu().tolist()
        rows = [[(s, lo[i], lr if isinstance(lr, float) else lr[i], no[i]) for (s, _, lr, _), lo, no
                 in zip(self.buf, losses, norms)]
                for i in range(len(losses[0]))]
        self.buf.clear()
        return rows

    def keep(self, slots: list[int]) -> None:
        index = torch.tensor(slots, device=self.device)
        self.loss_sum, self.first_bad, self.exploded = (
            t.index_select(0, index) for t in (self.loss_sum, self.first_bad, self.exploded))
        self.first_loss = None if self.first_loss is None else self.first_loss.index_select(0, index)

    def state(self) -> dict[str, Any]:
        return {"first_loss": self.first_loss, "loss_sum": self.loss_sum, "loss_n": self.loss_n}

    def load(self, state: dict[str, Any]) -> None:
        first = state["first_loss"]
        self.first_loss = None if first is None else first.to(self.device).reshape(-1)
        self.loss_sum = state["loss_sum"].to(self.device).reshape(-1)
        self.loss_n = state["loss_n"]


class Clock:
    """Wall time shared out to the seeds that were active in it, so a group's per-seed durations
    sum to its wall time."""

    def __init__(self):
        self.start = self.last = time.time()

    def charge(self, seeds: list[SeedRun]) -> None:
        now = time.time()
        for seed in seeds:
            seed.duration_s += (now - self.last) / max(1, len(seeds))
        self.last = now
