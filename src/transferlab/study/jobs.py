"""A study's unit of work and its result: a ``Job`` (one run's spec as plain data, cheap to send to
another process) and its ``Outcome``; ``execute`` runs one job in this process.

    outcome = execute(Job(0, to_dict(spec), "my-study", "runs/transferlab.db"))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
