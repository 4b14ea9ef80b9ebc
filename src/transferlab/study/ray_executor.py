"""The ``ray`` executor: each seed group is one Ray task on a cluster (``--address``) or on a local
cluster started here.

The workers never touch the driver's store: a task returns its runs' records through Ray's object
store and the driver writes them. Artifacts go to the store's artifact location when the user named
one (``--artifacts s3://...``, or a folder every node mounts); otherwise the final files travel back
with the record (checkpoints then stay on the worker: a run that dies restarts from step 0).

Without ``--address`` the executor starts a local cluster of its own (``ray.init(address="local")``),
never attaching to one that is already running here (``RAY_ADDRESS``, ``/tmp/ray/ray_current_cluster``:
perhaps another user's). The workers get only the environment variables a run reads (``WORKER_ENV``:
Hugging Face cache and offline switches, transformers' verbosity, ``TRANSFERLAB_*``, ``OMP_NUM_THREADS``),
never a token or other secret; name more with ``TRANSFERLAB_RAY_ENV=HF_TOKEN,...`` (a gated model on
the hub). A local cluster's processes are started without the tokens in their environment either.

Before the first task, every node that may run tasks checks that it can read the study's data and
model folders; a node that cannot is named in one line. A task whose worker process or node died is
retried ``retries`` times, then its runs are failed; each retry is reported. Ctrl-C cancels every
task in flight. ``RAY_AUTH_MODE=token`` clusters (Ray 2.5x+) need the same token in the driver's
environment (``RAY_AUTH_TOKEN``); the nodes have their own, so it is not sent to the workers.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from transferlab.errors import UserError
from transferlab.study.executors import EXECUTORS, Executor
from transferlab.study.jobs import Job, Outcome, outcome_of


def check_paths(paths: list[str]) -> list[str]:
    """The paths this node cannot see (run on each node)."""
    return [p for p in paths if not Path(p).exists()]


def node_name() -> str:
    return socket.gethostname()


def job_paths(jobs: list[Job]) -> list[str]:
    """Local files and folders a job reads: the task's data, a model or teacher folder."""
    paths = set()
    for job in jobs:
        task = job.spec.task
        for value in (task.path, task.train_file, task.dev_file, task.test_file, job.spec.distill.teacher_store):
            if value and (task.path is None or value == task.path or os.path.isabs(value)):
                paths.add(value)
        name = job.spec.model.name
        if name.startswith(("/", "./", "~")) or os.path.isdir(name):
            paths.add(name)
    return sorted(paths)


WORKER_ENV = ("HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
              "HF_HUB_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_TELEMETRY", "HF_ENDPOINT", "TRANSFORMERS_OFFLINE",
              "TRANSFORMERS_CACHE", "TRANSFORMERS_VERBOSITY", "OMP_NUM_THREADS")
SECRETS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_TOKEN", "HF_API_TOKEN")  # kept from a local cluster


def worker_env(environ: dict[str, str]) -> dict[str, str]:
    """The variables sent to every worker: WORKER_ENV, TRANSFERLAB_* and those TRANSFERLAB_RAY_ENV names."""
    extra = {n.strip() for n in environ.get("TRANSFERLAB_RAY_ENV", "").split(",") if n.strip()}
    return {k: v for k, v in environ.items()
            if k in WORKER_ENV or k in extra or (k.startswith("TRANSFERLAB_") and k != "TRANSFERLAB_RAY_ENV")}


@contextlib.contextmanager
def _without(names: tuple[str, ...]):
    """``os.environ`` without ``names`` meanwhile (the processes of a local cluster inherit it)."""
    saved = {k: os.environ.pop(k) for k in names if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _probe(address: str, timeout: float = 10.0) -> None:
    """Fail fast on an address nobody listens at (``ray.init`` would retry for minutes)."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise UserError(f"--executor ray: cannot reach a Ray cluster at {address}: {e.strerror or e}") from None


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    """Ray tasks on a cluster at ``address``, or on a local cluster started here with ``workers`` CPUs."""

    shares_files = False

    def __init__(self, workers: int = 2, address: str | None = None, threads: int | None = None,
                 seed_parallel: str = "auto", gpus_per_task: float | None = None, retries: int = 1,
                 resources: dict[str, float] | None = None, **_: Any):
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'transferlab[ray]'") from None
        self.ray, self.seed_parallel, self.retries = ray, seed_parallel, retries
        self.resources = resources or {}
        self.started = not ray.is_initialized()
        if self.started:
            self._init(workers, address)
        cluster = ray.cluster_resources()
        gpus = gpus_per_task if gpus_per_task is not None else (1 if cluster.get("GPU", 0) >= 1 else 0)
        if gpus and not cluster.get("GPU"):
            raise UserError(f"--gpus-per-task {gpus:g}: the Ray cluster at {address or 'local'} has no GPU")
        self.workers = max(1, int(cluster.get("CPU", workers)))
        if gpus:
            self.workers = max(1, int(cluster.get("GPU", 0) / gpus))
        self.threads = threads or 1
        from transferlab.study.seed_groups import execute_group

        self.remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0, resources=self.resources or None)(
            execute_group)
        self.checked: set[str] = set()
        self.refs: dict = {}

    def _init(self, workers: int, address: str | None) -> None:
        """Connect to ``address``, or start a local cluster of our own; our SIGTERM handler survives Ray's."""
        import signal

        if address:
            _probe(address)
        env = worker_env(dict(os.environ))
        sigterm = signal.getsignal(signal.SIGTERM)
        try:
            if address:
                self.ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
            else:
                keep = tuple(n for n in SECRETS if n not in env)
                with _without(("RAY_ADDRESS", *keep)):
                    self.ray.init(address="local", num_cpus=workers, runtime_env={"env_vars": env},
                                  log_to_driver=False, include_dashboard=False)
        except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError... here
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise UserError(f"--executor ray: cannot reach a Ray cluster at {address or 'local'}: {first}") from None
        finally:
            if sigterm is not None and signal.getsignal(signal.SIGTERM) is not sigterm:
                with contextlib.suppress(ValueError):  # not the main thread: Ray set none either
                    signal.signal(signal.SIGTERM, sigterm)  # ray.init makes SIGTERM sys.exit; ours stops cleanly

    @property
    def parallelism(self) -> int:
        return self.workers

    def check(self, jobs: list[Job]) -> None:
        """Every node that can run our tasks sees the jobs' data paths; else one line naming node and path."""
        paths = [p for p in job_paths(jobs) if p not in self.checked]
        if not paths:
            return
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        probe = self.ray.remote(num_cpus=0)(lambda ps: (node_name(), check_paths(ps)))
        refs = []
        for node in self.ray.nodes():
            res = node.get("Resources", {})
            if node.get("Alive") and res.get("CPU", 0) >= 1 and all(res.get(k, 0) >= v for k, v in self.resources.items()):
                strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                refs.append((node, probe.options(scheduling_strategy=strategy).remote(paths)))
        for node, ref in refs:
            host, missing = self.ray.get(ref)
            if missing:
                raise UserError(f"data path {missing[0]} does not exist on Ray node {node.get('NodeManagerAddress')}"
                                f" ({host}); copy the data there or mount it at the same path")
        self.checked.update(paths)

    def _submit(self, group: list[Job]):
        for job in group:
            job.threads = job.threads or self.threads
        self.check(group)
        ref = self.remote.remote(group)
        self.refs[ref] = (group, 0)
        return ref

    def map(self, groups: Iterable[list[Job]]) -> Iterator[Outcome]:
        todo = iter(groups)
        pending: list = []
        exhausted = False
        while True:
            while not exhausted and len(pending) < self.workers:
                group = next(todo, None)
                exhausted = group is None
                if group is not None:
                    pending.append(self._submit(group))
            if not pending:
                return
            done, pending = self.ray.wait(pending, num_returns=1, timeout=1.0)
            for ref in done:
                yield from self._result(ref, pending)

    def _result(self, ref, pending: list) -> Iterator[Outcome]:
        group, tries = self.refs.pop(ref)
        try:
            yield from self.ray.get(ref)
            return
        except (self.ray.exceptions.WorkerCrashedError, self.ray.exceptions.NodeDiedError,
                self.ray.exceptions.ObjectLostError) as e:
            error = f"Ray: {type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
        except self.ray.exceptions.RayError as e:
            error = f"Ray: {str(e).strip().splitlines()[0][:300]}"
            tries = self.retries  # not a worker's death: no retry
        if tries < self.retries:
            self.log(f"{error}; retrying its {len(group)} run(s) (retry {tries + 1} of {self.retries})")
            new = self.remote.remote(group)
            self.refs[new] = (group, tries + 1)
            pending.append(new)
            return
        self.log(f"{error}; its {len(group)} run(s) are marked failed" + (f" after {tries} retries" if tries else ""))
        for job in group:
            yield outcome_of(job, None, error)

    def close(self, cancel: bool = False) -> None:
        if cancel:
            for ref in list(self.refs):
                with contextlib.suppress(Exception):  # already finished or gone: nothing to cancel
                    self.ray.cancel(ref, force=True)
        if self.started:
            self.ray.shutdown()
