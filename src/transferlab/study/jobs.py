"""A study's unit of work and its result: a ``Job`` (one claimed run: its spec, validated by the
driver, and its run id, both carried as they are to the worker) and its ``Outcome``;
``execute`` runs jobs in this process.

    outcomes = execute_jobs([Job(0, spec, "my-study", "runs/transferlab.db", uid="ab12-s0/1", run_id="ab12-s0")])

A job runs against a ``Recorder`` (transferlab/recorder.py), never against the store: its outcome
carries the run's complete record, and the driver writes it (``Store.write_record``).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferlab.records import RunRecord
from transferlab.spec import RunSpec


@dataclass
class Job:
    index: int  # position in the study's list of jobs
    spec: RunSpec  # the driver's spec object, validated there (a dataclass: it pickles to a worker as it is)
    study: str
    store: str  # the driver's store file (for display; a worker never opens it)
    threads: int | None = None  # torch CPU threads for the run; None: the executor's default
    uid: str | None = None  # the attempt the driver claimed
    run_id: str = ""  # the driver's run id, computed once when the study was planned ("": the worker computes it)
    earlier: list[tuple[str, str]] = field(default_factory=list)  # earlier attempts: (uid, status)
    artifacts: str | None = None  # the artifact location the worker writes to; None: files travel back
    refs: dict[str, dict] = field(default_factory=dict)  # stored runs the spec names (a KD teacher): ref -> row
    tracking: dict[str, Any] | None = None  # a TrackingSpec as plain data: live TensorBoard/MLflow/W&B logging
    # an intermediate-task run's phase A, claimed by the driver with it: uid, earlier, run_id, recipe_hash, seed
    phase_a: dict[str, Any] | None = None
    prune: dict[str, Any] | None = None  # a search trial's pruning hook (study/search.py: PruneHook's arguments)


@dataclass
class Outcome:
    index: int
    run_id: str
    uid: str | None
    status: str  # finished | diverged | failed | skipped
    summary: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0
    error: str | None = None
    record: RunRecord | None = None  # the run's complete record, for the driver to write
    extra: list[RunRecord] = field(default_factory=list)  # records of runs it trained first (phase A)


def recorder_for(jobs: list[Job]):
    from transferlab.locations import ArtifactLocation
    from transferlab.recorder import Claim, Recorder
    from transferlab.spec import spec_hash

    claims = {}
    for job in jobs:
        claims[(spec_hash(job.spec), job.spec.seed)] = Claim(job.uid or "", list(job.earlier), job.run_id)
        if job.phase_a:
            a = job.phase_a
            claims[(a["recipe_hash"], a["seed"])] = Claim(a["uid"], [tuple(e) for e in a["earlier"]], a["run_id"])
    url = jobs[0].artifacts
    cache = Path(tempfile.gettempdir()) / "transferlab-artifact-cache"
    refs = {ref: row for job in jobs for ref, row in job.refs.items()}
    return Recorder(claims, ArtifactLocation(url, cache=cache) if url else None, refs)


def execute(job: Job, hooks: list | tuple = ()) -> Outcome:
    """Run one job in this process; a failing run becomes a ``failed`` outcome."""
    return execute_jobs([job], hooks)[0]


def execute_jobs(jobs: list[Job], hooks: list | tuple = (), emit=None) -> list[Outcome]:
    """Run the jobs of one stacked group (its slots; one by one when the engine refuses) against a recorder;
    each outcome carries its run's record. The driver validated the specs and computed their run ids: the
    loop takes both as they are. ``emit(outcome)``: called as each slot ends (it leaves the group), so the
    driver stores it before the others end; the returned list then holds the jobs not emitted."""
    import torch

    from transferlab.errors import UserError
    from transferlab.train.loop import Unsupported, run, run_seeds

    threads = torch.get_num_threads()
    if jobs[0].threads:
        torch.set_num_threads(jobs[0].threads)  # results depend on it (summation order): the same everywhere
    recorder = recorder_for(jobs)
    if emit is not None and len(jobs) > 1:
        by_uid = {job.uid: job for job in jobs}
        recorder.on_finish = lambda record: emit(outcome_of(by_uid[record.uid], record, None))
    specs = [job.spec for job in jobs]
    ids = [job.run_id or None for job in jobs]
    error, tracker = None, None
    try:
        if len(jobs) == 1 and jobs[0].tracking:  # built in the worker, so every executor tracks alike
            from transferlab.train.track import TrackerHook, TrackingSpec

            tracker = TrackerHook(TrackingSpec(**jobs[0].tracking), specs[0], recorder, study=jobs[0].study,
                                  run_id=ids[0])
            hooks = (*hooks, tracker)
        once = {"study": jobs[0].study, "progress": False, "force": True, "validated": True}
        if len(jobs) == 1 and jobs[0].prune:  # reports to the Optuna trial at every dev evaluation
            from transferlab.study.search import PruneHook

            hooks = (*hooks, PruneHook(**jobs[0].prune))
        if len(jobs) == 1:
            run(specs[0], recorder, hooks=hooks, run_id=ids[0], **once)
        else:
            try:
                run_seeds(specs, recorder, run_ids=ids, **once)
            except Unsupported:  # refused before anything was recorded: one by one
                for spec, rid in zip(specs, ids):
                    run(spec, recorder, run_id=rid, **once)
    except UserError as e:
        error = str(e)
    except Exception as e:  # noqa: BLE001 - the loop recorded the traceback with the run; the study goes on
        error = f"{type(e).__name__}: {e}"
    finally:
        if tracker is not None:
            tracker.close()
        torch.set_num_threads(threads)
    records = {r.uid: r for r in recorder.records()}
    outcomes = [outcome_of(job, records.get(job.uid), error) for job in jobs if job.uid not in recorder.sent]
    for job, outcome in zip([j for j in jobs if j.uid not in recorder.sent], outcomes):
        if job.phase_a:
            a = job.phase_a
            outcome.extra.append(settled(records.get(a["uid"]), a["uid"], a["run_id"],
                                         error or "phase B ended before phase A ran"))
    return outcomes


def settled(record: RunRecord | None, uid: str, run_id: str, error: str | None) -> RunRecord:
    """A claimed run's final record: one that never started or never ended (it failed before) is failed."""
    if record is None or record.status == "running":
        record = record or RunRecord(uid, run_id)
        record.row.update(status="failed", error=error or "the run did not start", finished_at=time.time())
    return record


def outcome_of(job: Job, record: RunRecord | None, error: str | None) -> Outcome:
    """A job's outcome from its record; a run that never started (it failed before) is failed here."""
    record = settled(record, job.uid or "", job.run_id, error)  # its row's error says why
    from transferlab.records import RunSummary

    row = record.row
    summary = RunSummary.from_dict(row.get("summary") or {})
    status = row["status"]
    return Outcome(job.index, job.run_id, job.uid, status, summary, row.get("duration_s") or 0.0,
                   row.get("error") or summary.get("error") or (error if status == "failed" else None), record)
