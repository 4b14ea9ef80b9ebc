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
import shutil
import socket
import traceback
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


def run_rank(spec, store_path: str, rank: int, world: int, *, init_method: str = "env://", artifacts=None,
             progress: bool = True):
    """Train ``spec`` as rank ``rank`` of ``world`` (the process group joined here); rank 0 writes the store."""
    global _CONTEXT
    from transferlab.recorder import Claim, Recorder
    from transferlab.spec import run_id, spec_hash
    from transferlab.store import Store
    from transferlab.train.loop import run

    backend = "nccl" if torch.cuda.is_available() and spec.train.device != "cpu" else "gloo"
    if backend == "nccl":  # one GPU per rank: torchrun's LOCAL_RANK, or the rank on this machine
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world)
    _CONTEXT = Context(rank, world, backend)
    recorder = None
    try:
        if rank == 0:
            store = Store(store_path, artifacts=artifacts)
        else:  # never the store: a stand-in whose rows and files are dropped
            recorder = store = Recorder({(spec_hash(spec), spec.seed): Claim(f"rank{rank}", [], run_id(spec))}, None)
        return run(spec, store, force=True, progress=progress and rank == 0, hooks=[ShareWeight(_CONTEXT)])
    finally:
        _CONTEXT = None
        dist.destroy_process_group()
        if recorder is not None and recorder._staging is not None:
            shutil.rmtree(recorder._staging, ignore_errors=True)  # the recorder's own temp folder


def _rank_main(rank: int, world: int, port: int, spec_data: dict, store_path: str, artifacts, progress: bool,
               init, queue) -> None:
    if init is not None:
        init()
    from transferlab.spec import spec_from_dict

    try:
        run_rank(spec_from_dict(spec_data), store_path, rank, world, init_method=f"tcp://127.0.0.1:{port}",
                 artifacts=artifacts, progress=progress)
        queue.put((rank, None, False))
    except UserError as e:
        queue.put((rank, str(e), True))
    except BaseException:  # noqa: BLE001 - the parent reports it; rank 0 stored it with the run
        queue.put((rank, traceback.format_exc(limit=8), False))


def launch(spec, store, nproc: int, *, force: bool = False, progress: bool = True,
           init: Callable[[], None] | None = None):
    """Train one run on ``nproc`` spawned processes of this machine; the stored run's result.

    ``init`` (picklable, optional) runs first in every process (e.g. a default dtype for a test)."""
    import multiprocessing

    from transferlab.records import RunResult
    from transferlab.spec import run_id, to_dict
    from transferlab.train.validate import validate_runs

    check(spec, nproc)
    validate_runs([spec])  # every value, file and model before a run row exists
    done = None if force else store.finished(run_id(spec))
    if done is not None:
        return RunResult.reused(run_id(spec), done.uid, done.summary, done.duration_s)
    ctx = multiprocessing.get_context("spawn")
    queue, port = ctx.SimpleQueue(), _free_port()
    artifacts = store.location.url if store.location_named else None
    procs = [ctx.Process(target=_rank_main, args=(r, nproc, port, to_dict(spec), str(store.path), artifacts,
                                                  progress, init, queue), daemon=True) for r in range(nproc)]
    for p in procs:
        p.start()
    errors = _join(procs, queue)
    first = errors.get(0) or next(iter(errors.values()), None)
    if first is not None:
        message, user = first
        raise UserError(message) if user else RuntimeError(f"data-parallel run failed:\n{message}")
    row = store.runs(run_id=run_id(spec))[-1]
    s = row.summary
    return RunResult(row.run_id, row.uid, row.status, s.get("dev", {}), s.get("test", {}), s.get("best_step"),
                     s.get("steps"), row.duration_s or 0.0, s)


def _join(procs, queue) -> dict[int, tuple[str, bool]]:
    """Wait for every rank; one that dies or fails takes the others down (they would wait in a collective)."""
    from multiprocessing.connection import wait

    errors: dict[int, tuple[str, bool]] = {}
    try:
        while any(p.exitcode is None for p in procs) and not errors:
            wait([p.sentinel for p in procs if p.exitcode is None], timeout=5)
            while not queue.empty():  # a rank reports before it exits
                rank, error, user = queue.get()
                if error is not None:
                    errors[rank] = (error, user)
            for rank, p in enumerate(procs):
                if p.exitcode not in (None, 0) and rank not in errors:
                    errors[rank] = (f"rank {rank} died with exit code {p.exitcode}", False)
    finally:
        for p in procs:
            p.join(timeout=5 if errors else None)
            if p.is_alive():
                p.terminate()
                p.join()
    return errors


def from_env() -> tuple[int, int] | None:
    """(rank, world size) when this process was started by torchrun with more than one process."""
    if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None
