"""The store: one SQLite file (WAL mode) that holds every run, its evaluations and curve.

Tables:
    meta(key, value)                           schema version
    runs(uid, run_id, attempt, ...)            one row per execution of a run; ``run_id`` is the
                                               recipe hash and seed, ``attempt`` counts re-executions
    evals(uid, step, split, metric, value)     evaluations during and after training
    curve(uid, step, loss, lr, grad_norm)      the training curve at a fixed interval
    studies(name, spec_hash, spec, created_at) studies (see transferlab.study)
    study_plan(study, phase, run_id, ...)      each study's planned runs: phase (lr | main), task, arm, cell
    study_values(study, key, value)            what a study decided (the chosen learning rates), as JSON

Every write is its own short transaction, so a process killed at any moment leaves the
file readable; a run whose process died shows as ``unfinished``.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferlab.checks import check_writable_dir
from transferlab.errors import UserError
from transferlab.records import RunSummary

SCHEMA_VERSION = 1
DEFAULT_STORE = "runs/transferlab.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    uid TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    recipe_hash TEXT NOT NULL,
    seed INTEGER NOT NULL,
    name TEXT,
    study TEXT,
    kind TEXT NOT NULL DEFAULT 'train',
    status TEXT NOT NULL,
    spec TEXT NOT NULL,
    provenance TEXT,
    summary TEXT,
    error TEXT,
    error_step INTEGER,
    n_params INTEGER,
    n_trainable INTEGER,
    host TEXT,
    pid INTEGER,
    created_at REAL NOT NULL,
    finished_at REAL,
    heartbeat_at REAL,
    duration_s REAL,
    UNIQUE (run_id, attempt)
);
CREATE INDEX IF NOT EXISTS runs_by_study ON runs(study);
CREATE TABLE IF NOT EXISTS evals (
    uid TEXT NOT NULL, step INTEGER NOT NULL, split TEXT NOT NULL, metric TEXT NOT NULL, value REAL,
    PRIMARY KEY (uid, step, split, metric)
);
CREATE TABLE IF NOT EXISTS curve (
    uid TEXT NOT NULL, step INTEGER NOT NULL, loss REAL, lr REAL, grad_norm REAL,
    PRIMARY KEY (uid, step)
);
CREATE TABLE IF NOT EXISTS studies (
    name TEXT PRIMARY KEY, spec_hash TEXT NOT NULL, spec TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS study_plan (
    study TEXT NOT NULL, phase TEXT NOT NULL, run_id TEXT NOT NULL, task TEXT NOT NULL, arm TEXT NOT NULL,
    cell TEXT NOT NULL, seed INTEGER NOT NULL, lr REAL, PRIMARY KEY (study, phase, run_id)
);
CREATE TABLE IF NOT EXISTS study_values (
    study TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (study, key)
);
"""

FINAL_STATUSES = ("finished", "failed", "diverged")


@dataclass
class RunRow:
    uid: str
    run_id: str
    attempt: int
    seed: int
    name: str | None
    study: str | None
    kind: str
    status: str
    spec: dict[str, Any]
    provenance: dict[str, Any]
    summary: RunSummary
    error: str | None
    error_step: int | None
    n_params: int | None
    n_trainable: int | None
    created_at: float
    finished_at: float | None
    duration_s: float | None


class Store:
    """A handle on one store file. Cheap to open; safe to use from several processes."""

    def __init__(self, path: str | Path = DEFAULT_STORE, *, create: bool = True):
        """``create=False`` (listing, reporting): a missing store is an error, never a new empty file."""
        self.path = Path(path)
        if self.path.exists() and self.path.is_dir():
            raise UserError(f"store {self.path} is a folder; give a file path such as {self.path}/store.db")
        if not create and not self.path.is_file():
            raise UserError(f"store {self.path} does not exist (check --store or $TRANSFERLAB_STORE)")
        check_writable_dir(self.path.parent, f"store {self.path}")  # SQLite's WAL writes beside the file
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.OperationalError as e:  # read-only file, locked beyond the timeout, disk full
            raise UserError(f"store {self.path} cannot be opened for writing (SQLite said: {e})") from None
        except sqlite3.DatabaseError as e:
            raise UserError(f"store {self.path} is not a transferlab store (SQLite said: {e})") from None
        self._check_version()

    def _check_version(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise UserError(
                f"store {self.path} was written by a newer transferlab (schema {row[0]}, this one reads "
                f"up to {SCHEMA_VERSION}); upgrade transferlab or use another store"
            )

    @property
    def artifacts(self) -> Path:
        return self.path.parent / (self.path.stem + "_artifacts")

    def artifact_dir(self, uid: str) -> Path:
        return self.artifacts / uid.replace("/", "_")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ writing a run
    def start_run(
        self, run_id: str, recipe_hash: str, seed: int, spec: dict, *, name: str | None = None,
        study: str | None = None, kind: str = "train", provenance: dict | None = None,
    ) -> str:
        """Record a new attempt of ``run_id`` as running; returns its uid."""
        now = time.time()
        with self._tx() as db:
            (last,) = db.execute("SELECT COALESCE(MAX(attempt), 0) FROM runs WHERE run_id=?", (run_id,)).fetchone()
            uid = f"{run_id}/{last + 1}"
            db.execute(
                "INSERT INTO runs (uid, run_id, attempt, recipe_hash, seed, name, study, kind, status, spec,"
                " provenance, host, pid, created_at, heartbeat_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (uid, run_id, last + 1, recipe_hash, seed, name, study, kind, "running", json.dumps(spec),
                 json.dumps(provenance or {}), socket.gethostname(), os.getpid(), now, now),
            )
        return uid

    def update_run(self, uid: str, **fields: Any) -> None:
        if isinstance(fields.get("summary"), RunSummary):
            fields["summary"] = fields["summary"].to_dict()
        for key in ("summary", "provenance"):
            if key in fields and not isinstance(fields[key], str):
                fields[key] = json.dumps(fields[key])
        fields["heartbeat_at"] = time.time()
        cols = ", ".join(f"{k}=?" for k in fields)
        with self._tx() as db:
            db.execute(f"UPDATE runs SET {cols} WHERE uid=?", (*fields.values(), uid))

    def finish_run(self, uid: str, status: str, *, summary: RunSummary | dict | None = None, error: str | None = None,
                   error_step: int | None = None, duration_s: float | None = None) -> None:
        assert status in FINAL_STATUSES, status
        self.update_run(uid, status=status, summary=summary or {}, error=error, error_step=error_step,
                        duration_s=duration_s, finished_at=time.time())

    def log_evals(self, uid: str, step: int, split: str, metrics: dict[str, float]) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO evals VALUES (?,?,?,?,?)",
                [(uid, step, split, k, float(v)) for k, v in metrics.items()],
            )
            db.execute("UPDATE runs SET heartbeat_at=? WHERE uid=?", (time.time(), uid))

    def log_curve(self, uid: str, rows: list[tuple[int, float, float, float | None]]) -> None:
        if not rows:
            return
        with self._tx() as db:
            db.executemany("INSERT OR REPLACE INTO curve VALUES (?,?,?,?,?)", [(uid, *r) for r in rows])

    # ------------------------------------------------------------------ reading
    def _row(self, r: sqlite3.Row) -> RunRow:
        status = r["status"]
        if status == "running" and not self._alive(r["host"], r["pid"]):
            status = "unfinished"
        return RunRow(
            uid=r["uid"], run_id=r["run_id"], attempt=r["attempt"], seed=r["seed"], name=r["name"],
            study=r["study"], kind=r["kind"], status=status, spec=json.loads(r["spec"]),
            provenance=json.loads(r["provenance"] or "{}"), summary=RunSummary.from_dict(json.loads(r["summary"] or "{}")),
            error=r["error"], error_step=r["error_step"], n_params=r["n_params"], n_trainable=r["n_trainable"],
            created_at=r["created_at"], finished_at=r["finished_at"], duration_s=r["duration_s"],
        )

    @staticmethod
    def _alive(host: str | None, pid: int | None) -> bool:
        if host != socket.gethostname() or pid is None:
            return True  # another machine: trust its status
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def runs(self, *, study: str | None = None, run_id: str | None = None, latest: bool = False,
             kind: str | None = None) -> list[RunRow]:
        """Runs in creation order; ``latest`` keeps only the newest attempt of each run id."""
        self._db.row_factory = sqlite3.Row
        try:
            where, args = [], []
            for col, val in (("study", study), ("run_id", run_id), ("kind", kind)):
                if val is not None:
                    where.append(f"{col}=?")
                    args.append(val)
            sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
            rows = [self._row(r) for r in self._db.execute(sql + " ORDER BY created_at, attempt", args)]
        finally:
            self._db.row_factory = None
        if latest:
            newest: dict[str, RunRow] = {}
            for r in rows:
                newest[r.run_id] = r
            rows = list(newest.values())
        return rows

    def get(self, ref: str) -> RunRow:
        """A run by uid, by run id (newest attempt), or by a unique prefix of either."""
        rows = self.runs()
        exact = [r for r in rows if ref in (r.uid, r.run_id)]
        hits = exact or [r for r in rows if r.uid.startswith(ref)]
        if not hits:
            raise UserError(f"no run {ref!r} in store {self.path} (see `transferlab runs`)")
        if len({r.run_id for r in hits}) > 1:
            raise UserError(f"run reference {ref!r} is ambiguous in {self.path}: {', '.join(r.uid for r in hits[:5])}")
        return hits[-1]

    def finished(self, run_id: str) -> RunRow | None:
        done = [r for r in self.runs(run_id=run_id) if r.status == "finished"]
        return done[-1] if done else None

    def evals(self, uid: str) -> list[tuple[int, str, str, float]]:
        return self._db.execute(
            "SELECT step, split, metric, value FROM evals WHERE uid=? ORDER BY step, split, metric", (uid,)
        ).fetchall()

    def curve(self, uid: str) -> list[tuple[int, float, float, float | None]]:
        return self._db.execute(
            "SELECT step, loss, lr, grad_norm FROM curve WHERE uid=? ORDER BY step", (uid,)
        ).fetchall()

    def table(self, name: str) -> tuple[list[str], list[tuple]]:
        if name not in ("runs", "evals", "curve", "studies", "study_plan", "study_values"):
            raise UserError(f"unknown table {name!r}; known: runs, evals, curve, studies, study_plan, study_values")
        cur = self._db.execute(f"SELECT * FROM {name}")
        return [d[0] for d in cur.description], cur.fetchall()

    # ------------------------------------------------------------------ studies
    def register_study(self, name: str, spec_hash: str, spec: dict, *, new: bool = False) -> None:
        with self._tx() as db:
            row = db.execute("SELECT spec_hash FROM studies WHERE name=?", (name,)).fetchone()
            if row is None:
                db.execute("INSERT INTO studies VALUES (?,?,?,?)", (name, spec_hash, json.dumps(spec), time.time()))
            elif row[0] != spec_hash:
                if not new:
                    raise UserError(
                        f"study {name!r} already exists in {self.path} with a different spec; "
                        "rename the study or pass --new-study to replace its definition"
                    )
                db.execute("UPDATE studies SET spec_hash=?, spec=? WHERE name=?", (spec_hash, json.dumps(spec), name))
                db.execute("DELETE FROM study_plan WHERE study=?", (name,))  # the old plan and choices go;
                db.execute("DELETE FROM study_values WHERE study=?", (name,))  # the runs stay in the store
            else:  # same identity: keep the newest description, logging and report sections
                db.execute("UPDATE studies SET spec=? WHERE name=?", (json.dumps(spec), name))

    def studies(self) -> list[tuple[str, str, float]]:
        return self._db.execute("SELECT name, spec_hash, created_at FROM studies ORDER BY created_at").fetchall()

    def study_spec(self, name: str) -> dict | None:
        row = self._db.execute("SELECT spec FROM studies WHERE name=?", (name,)).fetchone()
        return json.loads(row[0]) if row else None

    def plan_runs(self, study: str, rows: list[tuple[str, str, str, str, str, int, float | None]]) -> None:
        """Record planned runs: (phase, run_id, task, arm, cell, seed, lr) each."""
        with self._tx() as db:
            db.executemany("INSERT OR REPLACE INTO study_plan VALUES (?,?,?,?,?,?,?,?)", [(study, *r) for r in rows])

    def study_plan(self, study: str, phase: str | None = None) -> list[tuple]:
        """(phase, run_id, task, arm, cell, seed, lr) rows in plan order."""
        sql = "SELECT phase, run_id, task, arm, cell, seed, lr FROM study_plan WHERE study=?"
        args: tuple = (study,) if phase is None else (study, phase)
        return self._db.execute(sql + (" AND phase=?" if phase else "") + " ORDER BY rowid", args).fetchall()

    def set_study_value(self, study: str, key: str, value: Any) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO study_values VALUES (?,?,?)", (study, key, json.dumps(value)))

    def study_values(self, study: str) -> dict[str, Any]:
        rows = self._db.execute("SELECT key, value FROM study_values WHERE study=? ORDER BY key", (study,))
        return {k: json.loads(v) for k, v in rows.fetchall()}
