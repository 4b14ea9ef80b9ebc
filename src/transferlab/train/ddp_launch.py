"""Launching one run data-parallel: ``--nproc N`` spawns the ranks (gloo on the CPU, NCCL on GPUs), or
this process is one of torchrun's; each rank trains through the loop, rank 0 alone writes the store.
The process group, the batch shares and the gradient all-reduce live in train/distributed.py (below the loop)."""

from __future__ import annotations

import os
import shutil
import traceback
from collections.abc import Callable

import torch
import torch.distributed as dist

from transferlab.errors import UserError
from transferlab.train import distributed
from transferlab.train.distributed import Context, ShareWeight, _free_port, check


def run_rank(spec, store_path: str, rank: int, world: int, *, init_method: str = "env://", artifacts=None,
             progress: bool = True):
    """Train ``spec`` as rank ``rank`` of ``world`` (the process group joined here); rank 0 writes the store."""
    from transferlab.recorder import Claim, Recorder
    from transferlab.spec import run_id, spec_hash
    from transferlab.store import Store
    from transferlab.train.loop import run

    backend = "nccl" if torch.cuda.is_available() and spec.train.device != "cpu" else "gloo"
    if backend == "nccl":  # one GPU per rank: torchrun's LOCAL_RANK, or the rank on this machine
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world)
    distributed._CONTEXT = context = Context(rank, world, backend)  # what the loop reads (distributed.current)
    recorder = None
    try:
        if rank == 0:
            store = Store(store_path, artifacts=artifacts)
        else:  # never the store: a stand-in whose rows and files are dropped
            recorder = store = Recorder({(spec_hash(spec), spec.seed): Claim(f"rank{rank}", [], run_id(spec))}, None)
        return run(spec, store, force=True, progress=progress and rank == 0, hooks=[ShareWeight(context)])
    finally:
        distributed._CONTEXT = None
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
