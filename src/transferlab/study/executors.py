"""Where a study's runs execute: ``inline`` (this process), ``processes`` (N local workers) or ``ray``.

    executor = EXECUTORS.get("processes")(workers=2)
    for outcome in executor.map(jobs): ...
    executor.close(cancel=True)   # after Ctrl-C: queued jobs are dropped, running ones stopped

Every worker opens its own connection to the same SQLite store (WAL mode) and writes its
run there through ``transferlab.train.loop.run``: the store is the one point of truth, and
a worker that dies leaves its run ``unfinished`` for the next attempt. Results come back
only as small summaries for the progress display.

``processes`` spawns fresh interpreters (no fork: CUDA and fork do not mix). On a CUDA
machine worker i sees GPU ``i % n`` alone (``CUDA_VISIBLE_DEVICES``), so N workers on one
GPU share it. ``ray`` (the ``ray`` extra) uses a running cluster (``--address``), or starts a
local one with ``workers`` CPUs; each task asks for one CPU, and one GPU when the cluster has
any. Ray workers open the store at the same path, so on a multi-node cluster every node must
see that path on a file system with working locks (SQLite's WAL needs all writers on one host).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from transferlab.errors import UserError
from transferlab.registry import Registry

EXECUTORS: Registry = Registry("executor")


@dataclass
class Job:
    index: int  # position in the study's list of jobs
    spec: dict[str, Any]  # the RunSpec as plain data (cheap to send to another process)
    study: str
    store: str  # the store file's path
    threads: int | None = None  # torch CPU threads for the run; None: the executor's default
    tracking: dict[str, Any] | None = None  # a TrackingSpec as plain data: live TensorBoard/MLflow/W&B logging


@dataclass
class Outcome:
    index: int
    run_id: str
    uid: str | None
    status: str  # finished | diverged | failed | skipped
    summary: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0
    error: str | None = None


def execute(job: Job, hooks: list | tuple = ()) -> Outcome:
    """Run one job in this process and store it; a failing run becomes a ``failed`` outcome."""
    import torch

    from transferlab.errors import UserError as _UserError
    from transferlab.spec import run_id, spec_from_dict
    from transferlab.store import Store
    from transferlab.train.loop import run

    threads = torch.get_num_threads()
    if job.threads:
        torch.set_num_threads(job.threads)  # results depend on it (summation order): the same everywhere
    spec = spec_from_dict(job.spec)
    store = Store(job.store)
    tracker = None
    try:
        if job.tracking:  # built in the worker, so every executor tracks alike (train/track.py)
            from transferlab.train.track import TrackerHook, TrackingSpec

            tracker = TrackerHook(TrackingSpec(**job.tracking), spec, store, study=job.study)
            hooks = (*hooks, tracker)
        result = run(spec, store, study=job.study, progress=False, hooks=hooks)
    except _UserError as e:
        return Outcome(job.index, run_id(spec), None, "failed", error=str(e))
    except Exception as e:  # noqa: BLE001 - the loop stored the traceback with the run; the study goes on
        return Outcome(job.index, run_id(spec), None, "failed", error=f"{type(e).__name__}: {e}")
    finally:
        if tracker is not None:
            tracker.close()
        store.close()
        torch.set_num_threads(threads)
    return Outcome(job.index, result.run_id, result.uid, result.status, result.summary, result.duration_s,
                   result.summary.get("error"))


def job_run_id(job: Job) -> str:
    from transferlab.spec import run_id, spec_from_dict

    return run_id(spec_from_dict(job.spec))


class Executor:
    """Runs jobs and yields their outcomes as they complete."""

    def map(self, jobs: list[Job]) -> Iterator[Outcome]:
        raise NotImplementedError

    def close(self, cancel: bool = False) -> None:
        """Release workers; ``cancel`` drops queued jobs and stops running ones (after Ctrl-C)."""

    @property
    def parallelism(self) -> int:
        return 1


@EXECUTORS.register("inline")
class InlineExecutor(Executor):
    """One run after the other in this process (the default). ``hooks(job)`` may add loop hooks."""

    def __init__(self, workers: int = 1, threads: int | None = None, hooks: Callable[[Job], list] | None = None,
                 seed_parallel: str = "auto", **_: Any):
        self.hooks, self.threads, self.seed_parallel = hooks, threads, seed_parallel

    def map(self, jobs: list[Job]) -> Iterator[Outcome]:
        from transferlab.study.seed_groups import execute_group, seed_groups

        for group in seed_groups(jobs, self.seed_parallel, has_hooks=self.hooks is not None):  # seed-parallel
            for job in group:
                job.threads = job.threads or self.threads
            if len(group) > 1:
                yield from execute_group(group)
            else:
                yield execute(group[0], self.hooks(group[0]) if self.hooks else ())


def _init_worker(threads: int, gpus: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())
    import torch

    torch.set_num_threads(threads)


@EXECUTORS.register("processes")
class ProcessExecutor(Executor):
    """N spawned worker processes on this machine."""

    def __init__(self, workers: int = 2, threads: int | None = None, seed_parallel: str = "auto", **_: Any):
        if workers < 1:
            raise UserError(f"--workers: must be at least 1, got {workers}")
        self.workers, self.seed_parallel = workers, seed_parallel
        self.threads = threads or max(1, (os.cpu_count() or 1) // workers)
        ctx = multiprocessing.get_context("spawn")
        gpus = None
        n_gpus = _cuda_count()
        if n_gpus:
            gpus = ctx.Queue()
            for i in range(workers):
                gpus.put(i % n_gpus)
        self.pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                        initargs=(self.threads, gpus))

    @property
    def parallelism(self) -> int:
        return self.workers

    def map(self, jobs: list[Job]) -> Iterator[Outcome]:
        from transferlab.study.seed_groups import execute_group, seed_groups

        pending = {self.pool.submit(execute_group, group) for group in seed_groups(jobs, self.seed_parallel)}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield from future.result()

    def close(self, cancel: bool = False) -> None:
        if cancel:  # stop the workers now: their runs stay "unfinished" in the store and rerun on resume
            stop = getattr(self.pool, "terminate_workers", None)  # Python 3.14+
            if stop is not None:
                stop()
            else:  # shutdown() forgets the processes, so terminate them first
                for proc in list((getattr(self.pool, "_processes", None) or {}).values()):
                    proc.terminate()
        self.pool.shutdown(wait=True, cancel_futures=cancel)


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    """Ray tasks on a cluster at ``address``, or on a local cluster started here with ``workers`` CPUs."""

    def __init__(self, workers: int = 2, address: str | None = None, threads: int | None = None, **_: Any):
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'transferlab[ray]'") from None
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            env = {k: v for k, v in os.environ.items() if k.startswith(("HF_", "TRANSFORMERS_", "TRANSFERLAB_"))}
            try:
                if address:
                    ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
                else:
                    ray.init(num_cpus=workers, runtime_env={"env_vars": env}, log_to_driver=False,
                             include_dashboard=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise UserError(f"--executor ray: cannot start or reach a Ray cluster "
                                f"(address {address or 'local'}): {e}") from None
        resources = ray.cluster_resources()
        self.workers = int(resources.get("CPU", workers))
        gpus = 1 if resources.get("GPU", 0) >= 1 else 0
        self.threads = threads or 1
        self.remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(execute)
        self.refs: list = []

    @property
    def parallelism(self) -> int:
        return self.workers

    def map(self, jobs: list[Job]) -> Iterator[Outcome]:
        for job in jobs:
            job.threads = job.threads or self.threads
        self.refs = [self.remote.remote(job) for job in jobs]
        pending = list(self.refs)
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            try:
                yield self.ray.get(done[0])
            except self.ray.exceptions.RayError as e:  # a worker died: its run stays unfinished in the store
                job = jobs[self.refs.index(done[0])]
                yield Outcome(job.index, job_run_id(job), None, "failed", error=f"Ray: {e}".splitlines()[0])

    def close(self, cancel: bool = False) -> None:
        if cancel:
            for ref in self.refs:
                with contextlib.suppress(Exception):  # already finished or gone: nothing to cancel
                    self.ray.cancel(ref, force=True)
        if self.started:
            self.ray.shutdown()
