"""Where a study's runs execute: ``inline`` (this process), ``processes`` (N local workers) or ``ray``.

    executor = EXECUTORS.get("processes")(workers=2)
    for outcome in executor.map(groups): ...     # groups: an iterable of claimed seed groups (lists of jobs)
    executor.close(cancel=True)                  # after Ctrl-C: running work is stopped

Executors pull groups lazily (at most ``parallelism`` in flight), so the driver claims a run in the
store only when a worker is free to run it. A worker runs its group against a recorder and sends
back each run's complete record; the driver alone writes the store (study/runner.py).

``processes`` spawns fresh interpreters (no fork: CUDA and fork do not mix), each with a pipe of its
own, so a worker that dies (SIGKILL, the OOM killer) fails only the runs it held: the study goes on
with a new worker in its place. Workers die with their parent, also when the parent is SIGKILLed
(Linux: ``PR_SET_PDEATHSIG``; elsewhere a thread watches the parent). On a CUDA machine worker i sees
GPU ``i % n`` alone (``CUDA_VISIBLE_DEVICES``). ``ray`` (the ``ray`` extra) uses a running cluster
(``--address``) or starts a local one; each seed group is one Ray task (``--gpus-per-task`` may be
fractional, so several groups share a GPU); a task whose worker or node died is retried
(``--ray-retries``, default 1) and then failed; the data paths are checked on every node first.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import wait
from typing import Any

from transferlab.errors import UserError
from transferlab.registry import Registry
from transferlab.study.jobs import Job, Outcome, execute, outcome_of

EXECUTORS: Registry = Registry("executor")


class Executor:
    """Runs groups of jobs and yields their outcomes as they complete."""

    shares_files = True  # the workers see this machine's files (the artifact folder)
    seed_parallel = "auto"
    hooks = None
    emit: Callable[[Outcome], None] | None = None  # the driver's handler of an outcome yielded early (inline)
    log: Callable[[str], None] = staticmethod(lambda line: None)

    def map(self, groups: Iterable[list[Job]]) -> Iterator[Outcome]:
        raise NotImplementedError

    def check(self, jobs: list[Job]) -> None:
        """Before anything is written: can the workers run these jobs (UserError naming what and where)."""

    def close(self, cancel: bool = False) -> None:
        """Release workers; ``cancel`` stops running ones (after Ctrl-C)."""

    @property
    def parallelism(self) -> int:
        return 1


@EXECUTORS.register("inline")
class InlineExecutor(Executor):
    """One group after the other in this process (the default). ``hooks(job)`` may add loop hooks."""

    def __init__(self, workers: int = 1, threads: int | None = None, hooks: Callable[[Job], list] | None = None,
                 seed_parallel: str = "auto", **_: Any):
        self.hooks, self.threads, self.seed_parallel = hooks, threads, seed_parallel

    def map(self, groups: Iterable[list[Job]]) -> Iterator[Outcome]:
        """``self.emit`` (set by the study's driver): each slot's outcome handed over as the slot ends."""
        from transferlab.study.seed_groups import execute_group

        for group in groups:
            for job in group:
                job.threads = job.threads or self.threads
            if len(group) > 1:
                yield from execute_group(group, emit=self.emit)
            else:
                yield execute(group[0], self.hooks(group[0]) if self.hooks else ())


# ---------------------------------------------------------------------- processes
def die_with_parent(parent: int) -> None:
    """This process ends when ``parent`` does, even under SIGKILL: the kernel's parent-death signal on
    Linux (prctl PR_SET_PDEATHSIG, by hand through ctypes: no library wraps it), and a thread that
    polls the parent id everywhere."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the prctl
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="transferlab-parent-watch").start()


def _worker_main(conn, parent: int, threads: int, gpu: int | None) -> None:
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    import torch

    from transferlab.study.seed_groups import execute_group

    torch.set_num_threads(threads)
    while True:
        try:
            group = conn.recv()
        except EOFError:
            return
        if group is None:
            return
        conn.send(("done", execute_group(group, emit=lambda outcome: conn.send(("slot", outcome)))))


def _died(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (killed: out of memory?)" if name == "SIGKILL" else ""
        return f"the worker process died of {name}{hint}"
    return f"the worker process exited with code {exitcode}"


class _Worker:
    def __init__(self, ctx, threads: int, gpu: int | None):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, os.getpid(), threads, gpu), daemon=True)
        self.proc.start()
        child.close()
        self.group: list[Job] | None = None


@EXECUTORS.register("processes")
class ProcessExecutor(Executor):
    """N spawned worker processes on this machine; a dead worker fails only its own runs."""

    def __init__(self, workers: int = 2, threads: int | None = None, seed_parallel: str = "auto", **_: Any):
        if workers < 1:
            raise UserError(f"--workers: must be at least 1, got {workers}")
        self.workers, self.seed_parallel = workers, seed_parallel
        self.threads = threads or max(1, (os.cpu_count() or 1) // workers)
        self.ctx = multiprocessing.get_context("spawn")
        self.n_gpus = _cuda_count()
        self.pool: list[_Worker] = []

    @property
    def parallelism(self) -> int:
        return self.workers

    def _spawn(self, slot: int) -> _Worker:
        return _Worker(self.ctx, self.threads, slot % self.n_gpus if self.n_gpus else None)

    def map(self, groups: Iterable[list[Job]]) -> Iterator[Outcome]:
        todo = iter(groups)
        while len(self.pool) < self.workers:
            self.pool.append(self._spawn(len(self.pool)))
        exhausted = False
        while True:
            for slot, worker in enumerate(self.pool):
                if worker.group is None and not exhausted:
                    if not worker.proc.is_alive():  # died between groups
                        worker = self.pool[slot] = self._spawn(slot)
                    worker.group = next(todo, None)
                    exhausted = worker.group is None
                    if worker.group is not None:
                        worker.conn.send(worker.group)
            busy = [w for w in self.pool if w.group is not None]
            if not busy:
                return
            ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy])
            for slot, worker in enumerate(self.pool):
                if worker.group is None or not (worker.conn in ready or worker.proc.sentinel in ready):
                    continue
                yield from self._collect(slot, worker)

    def _collect(self, slot: int, worker: _Worker) -> Iterator[Outcome]:
        got = False
        try:
            while worker.conn.poll():  # slots of a group come as they end, then the rest at once
                kind, payload = worker.conn.recv()
                if kind == "done":
                    worker.group = None
                    yield from payload
                    return
                worker.group = [job for job in worker.group or [] if job.index != payload.index]
                got = True
                yield payload
            if got:
                return
        except (EOFError, OSError, pickle.UnpicklingError):
            pass  # died while sending
        worker.proc.join(timeout=5)
        if worker.proc.is_alive():
            return  # woken by the pipe but nothing to read yet
        group, worker.group = worker.group, None
        error = _died(worker.proc.exitcode)
        self.log(f"{error}; its {len(group)} run(s) are marked failed and the study goes on with a new worker")
        self.pool[slot] = self._spawn(slot)
        for job in group:
            yield outcome_of(job, None, f"{error} while running this run")

    def close(self, cancel: bool = False) -> None:
        for worker in self.pool:
            with contextlib.suppress(OSError, BrokenPipeError):
                if cancel:
                    worker.proc.terminate()  # running runs stay "unfinished" in the store and rerun on resume
                else:
                    worker.conn.send(None)
        for worker in self.pool:
            worker.proc.join(timeout=10)
            if worker.proc.is_alive():
                worker.proc.kill()
                worker.proc.join()
        self.pool = []


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0

# the ``ray`` executor registers itself in study/ray_executor.py (imported by study/runner.py)
