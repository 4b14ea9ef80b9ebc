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

A write waits for another process's write up to ``TRANSFERLAB_BUSY_S`` seconds (default 60, in a few
bounded tries), then fails in one line naming the process that holds the store (Linux). A write that
fails (locked, disk full, I/O error) is rolled back and raised as a ``StoreError``: the store holds what
it held before. Opening runs SQLite's ``quick_check`` first: a damaged store is refused before anything
is written, naming a way to recover.

Only the driver writes (schema 2). A study's driver ``claim``s each run in one transaction (a new
attempt row, ``running``, holding a lease until ``lease_until``) and refreshes the leases of its
runs in flight (``heartbeat``); a worker, here or on another host, runs against a
``transferlab.recorder.Recorder`` and sends back the run's complete record, which the driver
writes in one transaction (``write_record``). A running row whose lease expired (its driver's host
died) reads as ``unfinished`` and is claimed again; a live lease is never claimed twice, so two
drivers of one study share its runs. A single ``transferlab run`` claims its run id the same way
(train/loop.py), so two concurrent runs of one spec train it once: the second waits, then reuses it. Artifacts (weights, checkpoints) live at the store's artifact
location (``transferlab.locations``): a folder next to the store by default, or a URL.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferlab.checks import check_writable_dir
from transferlab.errors import StoreError, UserError
from transferlab.locations import ArtifactLocation
from transferlab.records import RunRecord, RunSummary

SCHEMA_VERSION = 2
LEASE_S = float(os.environ.get("TRANSFERLAB_LEASE_S", "120"))  # a claim lives this long unrefreshed
DEFAULT_STORE = "runs/transferlab.db"
BUSY_S = float(os.environ.get("TRANSFERLAB_BUSY_S", "60"))  # how long a write waits for another writer
BUSY_TRIES = 4  # the wait is split into this many tries of SQLite's own busy handler

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
    lease_until REAL,
    artifacts TEXT,
    fingerprint TEXT,
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
DATA_TABLES = ("runs", "evals", "curve", "studies", "study_plan", "study_values")  # export --csv, report DIR


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
    fingerprint: dict[str, Any] | None = None
    artifacts: str | None = None  # the run's artifact location (None: the store's default folder)
    host: str | None = None  # where its process ran
    pid: int | None = None


class Store:
    """A handle on one store file. Cheap to open; safe to use from several processes."""

    def __init__(self, path: str | Path = DEFAULT_STORE, *, create: bool = True, artifacts: str | None = None):
        """``create=False`` (listing, reporting): a missing store is an error, never a new empty file."""
        self.path = Path(path)
        if self.path.exists() and self.path.is_dir():
            raise UserError(f"store {self.path} is a folder; give a file path such as {self.path}/store.db")
        if not create and not self.path.is_file():
            raise UserError(f"store {self.path} does not exist (check --store or $TRANSFERLAB_STORE)")
        check_writable_dir(self.path.parent, f"store {self.path}")  # SQLite's WAL writes beside the file
        default = self.path.parent / (self.path.stem + "_artifacts")
        # the default folder moves with the store (rows say NULL); a named location is stored with each run
        self.default_location = ArtifactLocation(str(default.absolute()), cache=default / ".cache")
        self.location = ArtifactLocation(artifacts, cache=default / ".cache") if artifacts else self.default_location
        self.location_named = artifacts is not None  # the user named it: every worker can reach it
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.started = False  # a run row was written through this handle (a failing write then exits 1, not 2)
        try:
            self._db = sqlite3.connect(self.path, timeout=BUSY_S / BUSY_TRIES, isolation_level=None)
            self._check_intact()  # before anything is read or written
            self._check_version()
            self._retry(lambda: self._db.execute("PRAGMA journal_mode=WAL"))
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._retry(lambda: self._db.executescript(_SCHEMA))
            self._migrate()
        except StoreError:
            raise
        except sqlite3.OperationalError as e:  # held by another process beyond BUSY_S, read-only file or folder
            if _busy(e):
                raise self._fault(e) from None
            raise UserError(f"store {self.path} cannot be opened for writing (SQLite said: {e})") from None
        except sqlite3.DatabaseError as e:
            raise UserError(f"store {self.path} is not a transferlab store (SQLite said: {e})") from None

    def _check_intact(self) -> None:
        """SQLite's ``quick_check`` (every page's structure): a damaged store is refused in one line."""
        try:
            rows = self._db.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError as e:
            if "not a database" in str(e) or "encrypted" in str(e):
                raise
            rows = [(str(e),)]
        if rows != [("ok",)]:
            self._db.close()
            raise UserError(
                f"store {self.path} is damaged (SQLite quick_check: {' '.join(str(rows[0][0]).split())[:160]}); "
                f"nothing was written to it. Copy what is readable into a new store with `sqlite3 {self.path} "
                f".recover | sqlite3 {self.path.with_name(self.path.stem + '-recovered.db')}` and use that, or "
                "start a new store (--store)")

    def _version(self) -> int | None:
        if not self._db.execute("SELECT name FROM sqlite_master WHERE name='meta'").fetchone():
            return None
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else None

    def _check_version(self) -> None:
        version = self._version()
        if version is not None and version > SCHEMA_VERSION:
            self._db.close()
            raise UserError(
                f"store {self.path} was written by a newer transferlab (schema {version}, this one reads "
                f"up to {SCHEMA_VERSION}); upgrade transferlab or use another store"
            )

    def _migrate(self) -> None:
        """Schema 1 -> 2: the lease, artifact location and data/model fingerprint columns (NULL for old rows)."""
        version = self._version()
        have = {r[1] for r in self._db.execute("PRAGMA table_info(runs)")}
        if version == SCHEMA_VERSION and {"lease_until", "artifacts", "fingerprint"} <= have:
            return  # nothing to do: opening a current store writes nothing
        with self._tx() as db:
            for col in ("lease_until REAL", "artifacts TEXT", "fingerprint TEXT"):
                if col.split()[0] not in have:
                    db.execute(f"ALTER TABLE runs ADD COLUMN {col}")
            if version != SCHEMA_VERSION:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    @property
    def artifacts(self) -> Path:
        return self.location.root_path()

    def artifact_dir(self, uid: str) -> Path:
        """A local folder with ``uid``'s artifacts: the folder itself at a local location, else a cache
        (filled from the URL once per process; write there, then ``sync_artifacts``)."""
        return self.location_of(uid).local(uid)

    def location_of(self, uid: str) -> ArtifactLocation:
        """Where ``uid``'s artifacts live: the location stored with its row (NULL: next to the store)."""
        row = self._db.execute("SELECT artifacts FROM runs WHERE uid=?", (uid,)).fetchone()
        if row is None:
            return self.location
        if not row[0]:
            return self.default_location
        return self.location if row[0] == self.location.url else ArtifactLocation(row[0], cache=self.location.cache)

    def _named(self) -> str | None:
        return self.location.url if self.location_named else None

    def sync_artifacts(self, uid: str) -> None:
        """Copy what was written into ``artifact_dir(uid)`` to a remote location (a no-op for a folder)."""
        self.location_of(uid).push(uid)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. A failure rolls it back (if SQLite has not already) and is raised as a
        StoreError naming the cause: the store holds what it held before."""
        try:
            self._retry(lambda: self._db.execute("BEGIN IMMEDIATE"))
        except sqlite3.OperationalError as e:
            raise self._fault(e) from None
        try:
            yield self._db
            self._retry(lambda: self._db.execute("COMMIT"))
        except BaseException as e:
            if self._db.in_transaction:  # SQLite ends the transaction itself on some I/O errors
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the connection rolled back as it failed; the cause below is what matters
            if isinstance(e, sqlite3.OperationalError) or type(e) is sqlite3.DatabaseError:  # the machine's
                raise self._fault(e) from None  # (locked, full, I/O, a page gone bad); a constraint is a bug
            raise

    def _retry(self, write):
        """``write()``, tried again while another process holds the store (each try waits BUSY_S / BUSY_TRIES
        in SQLite's busy handler): at most BUSY_S in all, then the error goes up."""
        for attempt in range(BUSY_TRIES):
            try:
                return write()
            except sqlite3.OperationalError as e:
                if not _busy(e) or attempt == BUSY_TRIES - 1:
                    raise

    def _fault(self, e: sqlite3.Error) -> StoreError:
        """A failed write as one line: what happened, that nothing was written, what to do."""
        text = " ".join(str(e).split())
        if _busy(e):
            pid = lock_holder(self.path)
            who = f" (process {pid}: {_command(pid)})" if pid else ""
            return StoreError(f"store {self.path} is held by another process{who} for more than {BUSY_S:g}s "
                              "($TRANSFERLAB_BUSY_S); nothing was written: let it finish or stop it, then run the "
                              "same command again", started=self.started)
        cause = "the disk is full" if "full" in text else f"a write failed ({text})"
        return StoreError(f"store {self.path}: {cause}; the write was rolled back and the store holds what it held "
                          "before: free space or fix the disk, then run the same command again", started=self.started)

    # ------------------------------------------------------------------ writing a run
    def start_run(
        self, run_id: str, recipe_hash: str, seed: int, spec: dict, *, name: str | None = None,
        study: str | None = None, kind: str = "train", provenance: dict | None = None,
        fingerprint: dict | None = None,
    ) -> str:
        """Record a new attempt of ``run_id`` as running; returns its uid. ``fingerprint``: the data and
        model fingerprint of the run (fingerprint.py), as ``claim`` stores it."""
        now = time.time()
        with self._tx() as db:
            (last,) = db.execute("SELECT COALESCE(MAX(attempt), 0) FROM runs WHERE run_id=?", (run_id,)).fetchone()
            uid = f"{run_id}/{last + 1}"
            db.execute(
                "INSERT INTO runs (uid, run_id, attempt, recipe_hash, seed, name, study, kind, status, spec,"
                " provenance, host, pid, created_at, heartbeat_at, artifacts, fingerprint)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (uid, run_id, last + 1, recipe_hash, seed, name, study, kind, "running", json.dumps(spec),
                 json.dumps(provenance or {}), socket.gethostname(), os.getpid(), now, now, self._named(),
                 json.dumps(fingerprint) if fingerprint is not None else None),
            )
        self.started = True
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

    # ------------------------------------------------------------------ the driver: claims, leases, records
    def claim(self, run_id: str, recipe_hash: str, seed: int, spec: dict, *, name: str | None = None,
              study: str | None = None, fingerprint: dict | None = None, retry_failed: bool = True,
              rerun: bool = False, lease_s: float = LEASE_S) -> tuple[str, list[tuple[str, str]]] | None:
        """In one transaction: a new ``running`` attempt of ``run_id`` holding a lease, unless the run is
        done (and not ``rerun``), failed (and not ``retry_failed``) or held by a live lease. Returns (uid,
        earlier attempts as (uid, status)) or None."""
        now = time.time()
        self._db.row_factory = sqlite3.Row
        try:
            with self._tx() as db:
                rows = db.execute("SELECT * FROM runs WHERE run_id=? ORDER BY attempt", (run_id,)).fetchall()
                earlier = [(r["uid"], self._status(r, now)) for r in rows]
                last = earlier[-1][1] if earlier else None
                last_error = rows[-1]["error"] or "" if rows else ""
                if last == "running" or (last in ("finished", "diverged") and not rerun) or (
                        last == "failed" and not retry_failed and not last_error.startswith("interrupted")):
                    return None
                attempt = rows[-1]["attempt"] + 1 if rows else 1
                uid = f"{run_id}/{attempt}"
                db.execute(
                    "INSERT INTO runs (uid, run_id, attempt, recipe_hash, seed, name, study, kind, status, spec,"
                    " host, pid, created_at, heartbeat_at, lease_until, artifacts, fingerprint)"
                    " VALUES (?,?,?,?,?,?,?,'train','running',?,?,?,?,?,?,?,?)",
                    (uid, run_id, attempt, recipe_hash, seed, name, study, json.dumps(spec), socket.gethostname(),
                     os.getpid(), now, now, now + lease_s, self._named(), json.dumps(fingerprint or {})))
        finally:
            self._db.row_factory = None
        self.started = True
        return uid, earlier

    def withdraw(self, uid: str) -> None:
        """Remove this process's own claim that never started (running, no provenance: the engine never
        started it; no evaluation or curve):
        a run refused for a user's mistake after claiming leaves the store as it was (the row is this
        process's own, made moments before; nothing else is ever deleted)."""
        with self._tx() as db:
            db.execute("DELETE FROM runs WHERE uid=? AND status='running' AND pid=? AND host=? AND provenance IS NULL"
                       " AND NOT EXISTS (SELECT 1 FROM evals WHERE evals.uid=runs.uid)"
                       " AND NOT EXISTS (SELECT 1 FROM curve WHERE curve.uid=runs.uid)",
                       (uid, os.getpid(), socket.gethostname()))

    def heartbeat(self, uids: list[str], lease_s: float = LEASE_S) -> None:
        """Refresh the leases of runs in flight."""
        if uids:
            now = time.time()
            with self._tx() as db:
                db.executemany("UPDATE runs SET heartbeat_at=?, lease_until=? WHERE uid=? AND status='running'",
                               [(now, now + lease_s, uid) for uid in uids])

    def write_record(self, record: RunRecord) -> None:
        """A worker's complete record of a claimed run, in one transaction (its files first)."""
        if record.files:
            try:
                self.location_of(record.uid).write_files(record.uid, record.files)
            except OSError as e:
                raise StoreError(f"cannot write run {record.uid}'s files to {self.location_of(record.uid).url}: "
                                 f"{e.strerror or e}; its row was not written (the run reruns): free space or fix "
                                 "the disk, then run the same command again", started=self.started) from None
        row = dict(record.row)
        for key in ("summary", "provenance", "spec", "fingerprint"):
            if key in row and not isinstance(row[key], str):
                row[key] = json.dumps(row[key].to_dict() if isinstance(row[key], RunSummary) else row[key])
        row.update(heartbeat_at=time.time(), lease_until=None)
        cols = ", ".join(f"{k}=?" for k in row)
        with self._tx() as db:
            db.execute(f"UPDATE runs SET {cols} WHERE uid=?", (*row.values(), record.uid))
            db.executemany("INSERT OR REPLACE INTO evals VALUES (?,?,?,?,?)",
                           [(record.uid, s, split, m, float(v)) for s, split, m, v in record.evals])
            db.executemany("INSERT OR REPLACE INTO curve VALUES (?,?,?,?,?)", [(record.uid, *c) for c in record.curve])

    def _status(self, r: sqlite3.Row, now: float | None = None) -> str:
        """A row's status; ``running`` reads ``unfinished`` once its process or its lease is gone."""
        status = r["status"]
        if status != "running":
            return status
        lease = r["lease_until"]
        if lease is not None and lease < (now or time.time()):
            return "unfinished"
        return status if self._alive(r["host"], r["pid"]) else "unfinished"

    # ------------------------------------------------------------------ reading
    def _row(self, r: sqlite3.Row) -> RunRow:
        status = self._status(r)
        return RunRow(
            uid=r["uid"], run_id=r["run_id"], attempt=r["attempt"], seed=r["seed"], name=r["name"],
            study=r["study"], kind=r["kind"], status=status, spec=json.loads(r["spec"]),
            provenance=json.loads(r["provenance"] or "{}"), summary=RunSummary.from_dict(json.loads(r["summary"] or "{}")),
            error=r["error"], error_step=r["error_step"], n_params=r["n_params"], n_trainable=r["n_trainable"],
            created_at=r["created_at"], finished_at=r["finished_at"], duration_s=r["duration_s"],
            fingerprint=json.loads(r["fingerprint"]) if r["fingerprint"] else None, artifacts=r["artifacts"],
            host=r["host"], pid=r["pid"],
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
        """A run by uid, by run id (newest attempt), by its ``name`` (one run id of that name), or by a
        unique prefix of a uid."""
        rows = self.runs()
        exact = [r for r in rows if ref in (r.uid, r.run_id)] or [r for r in rows if r.name == ref]
        hits = exact or [r for r in rows if r.uid.startswith(ref)]
        if not hits:
            raise UserError(f"no run {ref!r} in store {self.path} (see `transferlab runs`)")
        if len({r.run_id for r in hits}) > 1:
            raise UserError(f"run reference {ref!r} is ambiguous in {self.path}: {', '.join(r.uid for r in hits[:5])}")
        return hits[-1]

    def holder(self, run_id: str) -> RunRow | None:
        """The attempt of ``run_id`` that a live process trains now (its newest, reading ``running``), else None."""
        rows = self.runs(run_id=run_id)
        return rows[-1] if rows and rows[-1].status == "running" else None

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
        self._check_table(name)
        cur = self._db.execute(f"SELECT * FROM {name}")
        return [d[0] for d in cur.description], cur.fetchall()

    def _check_table(self, name: str) -> None:
        if name not in DATA_TABLES:
            raise UserError(f"unknown table {name!r}; known: {', '.join(DATA_TABLES)}")

    def load_table(self, name: str, header: list[str], rows: list[tuple], where: str) -> None:
        """Rows of a table as ``table`` gives them (an export read back: report/export_tables.py import_tables);
        ``where`` names their file in the one-line error about a column the table lacks."""
        self._check_table(name)
        known = [r[1] for r in self._db.execute(f"PRAGMA table_info({name})").fetchall()]
        if unknown := [h for h in header if h not in known]:
            raise UserError(f"{where}: column {unknown[0]!r} is not one of table {name}'s ({', '.join(known)})")
        columns, marks = ", ".join(header), ", ".join("?" * len(header))
        with self._tx() as db:
            db.executemany(f"INSERT OR REPLACE INTO {name} ({columns}) VALUES ({marks})", rows)

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


class Heartbeat:
    """Refreshes the leases of a process's runs in flight (its own store connection, in a thread), so a
    long step or evaluation that writes nothing does not let the lease lapse."""

    def __init__(self, path, lease_s: float = LEASE_S, uids=()):
        self.path, self.lease_s, self.uids, self.stop = path, lease_s, set(uids), threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="transferlab-heartbeat")
        self.thread.start()

    def _beat(self) -> None:
        try:
            store = Store(self.path)
        except (StoreError, UserError):
            return  # the driver's own writes report what is wrong with the store
        try:
            while not self.stop.wait(self.lease_s / 4):
                try:
                    store.heartbeat(sorted(self.uids), self.lease_s)
                except StoreError:
                    pass  # the driver's own next write reports it; a missed beat only shortens the lease
        finally:
            store.close()

    def close(self, store: Store, release: bool = False) -> None:
        self.stop.set()
        self.thread.join()
        if release:  # Ctrl-C: the runs in flight read ``unfinished`` now and rerun on resume
            try:
                store.heartbeat(sorted(self.uids), lease_s=-1)
            except StoreError:
                pass  # the store cannot be written now: the leases lapse, the runs read unfinished then


def _busy(e: sqlite3.Error) -> bool:
    return isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e))


def lock_holder(path: Path) -> int | None:
    """The id of the process holding the store's write lock, where the system tells (Linux /proc/locks:
    SQLite's WAL write lock is a POSIX lock on byte 120 of the ``-shm`` file); else None. By hand: no
    library reads /proc/locks."""
    try:
        inode = os.stat(f"{path}-shm").st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:  # "1: POSIX  ADVISORY  WRITE 8302 fe:00:2147587 120 120" (a waiter's line has "->")
        parts = line.split()
        if len(parts) >= 8 and parts[1] == "POSIX" and parts[3] == "WRITE" and parts[5].endswith(f":{inode}") \
                and parts[6] == "120":
            return int(parts[4])
    return None


def _command(pid: int) -> str:
    """A process's command line, short (``?`` when it cannot be read)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    return " ".join(a.decode(errors="replace") for a in args if a)[:120] or "?"
