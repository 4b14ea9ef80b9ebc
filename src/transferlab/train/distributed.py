"""Data-parallel training of one run across N processes (torch.distributed: gloo on CPU, NCCL on CUDA).

    result = launch(spec, Store("runs/transferlab.db"), nproc=2)    # transferlab run spec.yaml --nproc 2
    torchrun --nproc-per-node 2 $(which transferlab) run spec.yaml    # the same under torchrun

``train.batch_size`` stays the global batch: each of the N ranks takes its contiguous share of every
global batch (the global batches come from the run seed, the same on every rank, as in one process),
each rank's loss is weighted by its share, and the gradients are summed over the ranks in one flat
all-reduce before clipping, so N processes compute the update one process computes with the whole
batch (equal up to float rounding; tested in float64: tests/test_ddp.py). The run id is the spec's,
as with one process (like ``--threads``, the process count is not part of the recipe); the process
group is recorded in the run's provenance (``ddp``). Every rank evaluates the whole dev/test split
(identical weights give identical metrics); rank 0 alone writes the store and the weights, the other
ranks write into a throw-away Recorder. With dropout the ranks draw their own masks, so the run is
the same recipe but not bitwise the single-process run (``model.dropout: 0`` for bitwise checks).

Refused (``REFUSED``: one line, exit 2, before anything is written): parts whose state or randomness
would diverge across ranks or that train several models at once. Hand-written here: the sharding,
the loss weight and the flat all-reduce (torch's DistributedDataParallel would need the model wrapped,
which every part of the loop reads attributes of; this is the same reduction without the wrapper).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from transferlab.errors import UserError
from transferlab.recipes.hooks import Hook

# spec parts DDP does not run, each with why: checked before anything is written (check)
REFUSED: dict[str, tuple[Callable, str]] = {
    "train.engine": (lambda s: s.train.engine not in ("auto", "general"),
                     "the fused seed-parallel engine trains several seeds in one process; DDP trains one run"),
    "multitask": (lambda s: s.multitask is not None, "multi-task runs have their own loop (train/multitask.py)"),
    "intermediate": (lambda s: s.intermediate is not None, "an intermediate phase is a run of its own"),
    "distill": (lambda s: s.distill.kind != "none", "the teacher's targets are not sharded"),
    "stabilisers": (lambda s: bool(s.stabilisers), "stabilisers draw noise / read whole batches per process"),
    "train.checkpoint_every": (lambda s: bool(s.train.checkpoint_every),
                               "resumable checkpoints hold one process's data position"),
    "train.dropout_rng": (lambda s: s.train.dropout_rng == "run",
                          "every rank would draw the same masks from the run's one stream"),
}


def check(spec, nproc: int) -> None:
    """Refuse (UserError, one line) what DDP does not run; before anything is written."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise UserError(f"--nproc: expected a number of processes >= 1, got {nproc!r}")
    for field, (refused, why) in REFUSED.items():
        if refused(spec):
            raise UserError(f"--nproc {nproc}: {field} is not supported under data-parallel training ({why})")
    if spec.train.batch_size % nproc:
        raise UserError(f"--nproc {nproc}: train.batch_size {spec.train.batch_size} (the global batch) must be "
                        f"a multiple of the process count")
    if torch.cuda.is_available() and spec.train.device != "cpu" and torch.cuda.device_count() < nproc:
        raise UserError(f"--nproc {nproc}: only {torch.cuda.device_count()} CUDA devices here")


@dataclass
class Context:
    """This process's place in the group; the loop's seams call ``shard``, ``mean_loss`` and ``reduce_grads``."""

    rank: int
    world: int
    backend: str
    n_global: int = 0  # size of the current global micro-batch

    def shard(self, index: np.ndarray) -> np.ndarray:
        """This rank's contiguous share of a global batch (the shares of all ranks make it up, in order)."""
        self.n_global = len(index)
        return np.array_split(index, self.world)[self.rank]

    def mean_loss(self, losses: torch.Tensor) -> torch.Tensor:
        """The global batch's mean loss from the ranks' share-weighted ones (the curve, the divergence watch)."""
        losses = losses.clone()
        dist.all_reduce(losses)
        return losses / self.world

    def reduce_grads(self, model: torch.nn.Module) -> None:
        """Average the ranks' share-weighted gradients in one flat all-reduce, before clipping."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def info(self) -> dict:
        return {"world_size": self.world, "backend": self.backend, "rank": self.rank}  # the writer's rank


class ShareWeight(Hook):
    """Weights a rank's micro-batch loss by its share of the global batch (x world, as the all-reduce
    divides by it): the averaged gradient is the whole batch's mean-loss gradient even for uneven shares."""

    name = "ddp-share"

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def on_loss(self, batch, labels, logits, loss):
        return loss * (len(labels) * self.ctx.world / self.ctx.n_global)


_CONTEXT: Context | None = None


def current() -> Context | None:
    """The data-parallel context of this process, or None (one process)."""
    return _CONTEXT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def from_env() -> tuple[int, int] | None:
    """(rank, world size) when this process was started by torchrun with more than one process."""
    if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None
