"""A worker's stand-in for the store: the training loop writes to it as it would to a ``Store``, and
it keeps each run's complete record in memory for the driver to write in one transaction.

    recorder = Recorder({("<recipe hash>", 0): Claim("ab12-s0/2", [("ab12-s0/1", "unfinished")])}, location)
    results = run_group(specs, recorder, study="s")          # train/loop.py, unchanged
    records = recorder.records()                             # -> the driver: store.write_record(r)

The driver claimed every run before sending it (``Store.claim``), so the recorder knows each run's
uid and its earlier attempts (a failed or dead one's checkpoint is resumed). A worker never opens the
driver's store: artifacts go to the artifact location both can reach (``transferlab.locations``), or,
when there is none (``location=None``), into a local folder whose files travel back in the record.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferlab.errors import UserError
from transferlab.locations import ArtifactLocation, read_files, safe_name
from transferlab.records import RunRecord, RunSummary
from transferlab.store import RunRow


@dataclass
class Claim:
    uid: str
    earlier: list[tuple[str, str]] = field(default_factory=list)  # (uid, status) of earlier attempts
    run_id: str = ""  # the driver's run id (with the data and model fingerprint the driver saw)


@dataclass
class Attempt:
    """What ``models.artifacts.find_resume`` reads of an earlier attempt."""

    uid: str
    status: str


class Recorder:
    def __init__(self, claims: dict[tuple[str, int], Claim], location: ArtifactLocation | None,
                 refs: dict[str, Any] | None = None):
        self.claims, self.location, self.refs = claims, location, refs or {}
        self._records: dict[str, RunRecord] = {}
        self._by_run_id: dict[str, Claim] = {}
        self._staging = None if location is not None else Path(tempfile.mkdtemp(prefix="transferlab-run-"))
        self.path = Path("<recorder>")  # not a store file: nothing may open it
        # called with a run's final record as soon as it ends (a slot that leaves its stacked group): the driver
        # stores it then, so a group killed later reruns only its unfinished slots
        self.on_finish: Any = None
        self.sent: set[str] = set()

    # ------------------------------------------------------------------ what the loop writes
    def start_run(self, run_id: str, recipe_hash: str, seed: int, spec: dict, *, name: str | None = None,
                  study: str | None = None, kind: str = "train", provenance: dict | None = None,
                  fingerprint: dict | None = None) -> str:  # the driver's claim stored the fingerprint
        claim = self.claims.get((recipe_hash, seed))
        if claim is None:
            raise UserError(f"run {run_id} was not claimed by the driver (recipe {recipe_hash[:12]}, seed {seed})")
        self._by_run_id[run_id] = claim
        worker = {"host": socket.gethostname(), "pid": os.getpid(), "run_id": run_id}
        self._records[claim.uid] = RunRecord(claim.uid, claim.run_id or run_id, row={
            "status": "running", "kind": kind, "name": name, "provenance": {**(provenance or {}), "worker": worker}})
        return claim.uid

    def update_run(self, uid: str, **fields: Any) -> None:
        if isinstance(fields.get("summary"), RunSummary):
            fields["summary"] = fields["summary"].to_dict()
        self._records[uid].row.update(fields)

    def finish_run(self, uid: str, status: str, *, summary: RunSummary | dict | None = None, error: str | None = None,
                   error_step: int | None = None, duration_s: float | None = None) -> None:
        self.update_run(uid, status=status, summary=summary or {}, error=error, error_step=error_step,
                        duration_s=duration_s, finished_at=time.time())
        if self.on_finish is not None and status in ("finished", "diverged"):
            self.sent.add(uid)
            self.on_finish(self._with_files(self._records[uid]))

    def log_evals(self, uid: str, step: int, split: str, metrics: dict[str, float]) -> None:
        self._records[uid].evals.extend((step, split, k, float(v)) for k, v in metrics.items())

    def log_curve(self, uid: str, rows: list) -> None:
        self._records[uid].curve.extend(tuple(r) for r in rows)

    # ------------------------------------------------------------------ what the loop reads
    def finished(self, run_id: str) -> RunRow | None:
        """A run the driver found finished and sent along (an intermediate-task run's phase A), else None:
        the driver claimed only runs that are not done."""
        row = self.refs.get(run_id)
        return self.get(run_id) if row is not None and row.get("status") == "finished" else None

    def runs(self, *, run_id: str | None = None, **_: Any) -> list[Attempt]:
        claim = self._by_run_id.get(run_id or "")
        if claim is None:
            return []
        return [Attempt(u, s) for u, s in claim.earlier] + [Attempt(claim.uid, "running")]

    def evals(self, uid: str) -> list[tuple[int, str, str, float]]:
        return list(self._records[uid].evals) if uid in self._records else []

    def curve(self, uid: str) -> list[tuple]:
        return list(self._records[uid].curve) if uid in self._records else []

    def get(self, ref: str) -> RunRow:
        """A stored run the spec names (a KD teacher), as the driver resolved it before sending the job."""
        if ref in self.refs:
            row = self.refs[ref]
            return RunRow(**{**row, "summary": RunSummary.from_dict(row["summary"])})
        if ref in self._records:  # a run recorded here (a live tracking hook reads its status at the end)
            rec, row = self._records[ref], self._records[ref].row
            return RunRow(uid=rec.uid, run_id=rec.run_id, attempt=int(rec.uid.rsplit("/", 1)[-1]), seed=-1,
                          name=row.get("name"), study=None, kind=row.get("kind", "train"), status=rec.status,
                          spec={}, provenance=row.get("provenance") or {},
                          summary=RunSummary.from_dict(row.get("summary") or {}), error=row.get("error"),
                          error_step=row.get("error_step"), n_params=row.get("n_params"),
                          n_trainable=row.get("n_trainable"), created_at=0.0, finished_at=row.get("finished_at"),
                          duration_s=row.get("duration_s"))
        raise UserError(f"run {ref!r}: a worker cannot read the driver's store; give the run's store file "
                        "(distill.teacher_store / transplant.store) or an exported folder")

    def artifact_dir(self, uid: str) -> Path:
        if uid not in self._records and self.location is not None:  # another run's (a teacher): at its location
            row = next((r for r in self.refs.values() if r["uid"] == uid), None)
            if row is not None and row.get("artifacts") and row["artifacts"] != self.location.url:
                return ArtifactLocation(row["artifacts"], cache=self.location.cache).local(uid)
        if self.location is None:  # an earlier attempt's checkpoint stayed on its node: none here, start at 0
            if uid not in self._records and any(r["uid"] == uid for r in self.refs.values()):
                raise UserError(f"run {uid}: its weights are not reachable from this worker; name an artifact "
                                "location every node can read (--artifacts s3://... or a shared folder)")
            return self._staging / safe_name(uid)
        return self.location.local(uid)

    def sync_artifacts(self, uid: str) -> None:
        if self.location is not None:
            self.location.push(uid)

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ for the driver
    def records(self) -> list[RunRecord]:
        """Every record started here; without a shared location each carries its final files."""
        return [self._with_files(record) for record in self._records.values()]

    def _with_files(self, record: RunRecord) -> RunRecord:
        if self.location is None and record.status in ("finished", "diverged"):
            files = read_files(self._staging / safe_name(record.uid))
            record.files = {k: v for k, v in files.items() if not k.endswith(".pt")}  # checkpoints stay
        return record
