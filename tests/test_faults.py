"""Faults a week-long study meets (issue 25): a store held by another process, a full disk during a commit
or a weights write, a damaged store, signals at every stage of single runs and of studies under each
executor, and two concurrent single runs of one spec. Each fault ends in one line (no traceback), the
store stays intact (SQLite's quick_check), no run is lost or duplicated, and a rerun equals a clean run."""

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_spec_dict, tiny_study_dict, wait_until, write_sentiment_csv

from transferlab.cli import main
from transferlab.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")
SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([SRC, str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_sentiment_csv(tmp_path_factory.mktemp("faults") / "toy", n_train=64, n_dev=32)


def _spec_file(data, folder: Path, **train) -> Path:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(tiny_spec_dict(data, **{"epochs": 2, "save_model": True, **train})))
    return path


def _study_file(data, folder: Path, **train) -> Path:
    d = tiny_study_dict(data, seeds=[0, 1], **{"epochs": 2, "save_model": True, **train})
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def _popen(args: list[str], cwd: Path | None = None, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "transferlab.cli", *args], env=env or ENV, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _intact(db: Path) -> None:
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA quick_check").fetchall() == [("ok",)]
    finally:
        con.close()


def _one_line(err: str) -> str:
    """The single error line a fault must give: no traceback, one ``transferlab: error`` line."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("transferlab:")]
    assert len(lines) == 1, err
    return lines[0]


def _results(db: Path) -> dict:
    """Each finished run's dev metrics, curve and weights, by run id (one finished attempt each)."""
    from safetensors.torch import load_file

    store = Store(db)
    rows = [r for r in store.runs() if r.status == "finished"]
    assert len(rows) == len({r.run_id for r in rows}), "a run finished twice"
    out = {}
    for r in rows:
        weights = load_file(str(store.artifact_dir(r.uid) / "model.safetensors"))
        out[r.run_id] = (r.summary["dev"], [tuple(c) for c in store.curve(r.uid)], weights)
    store.close()
    return out


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for rid in a:
        (dev_a, curve_a, w_a), (dev_b, curve_b, w_b) = a[rid], b[rid]
        assert dev_a == dev_b and curve_a == curve_b, rid
        assert w_a.keys() == w_b.keys() and all(torch.equal(w_a[k], w_b[k]) for k in w_a), rid


# ------------------------------------------------------------------ a store held by another process
def _hold(db: Path) -> subprocess.Popen:
    """Another process holding the store's write lock (BEGIN IMMEDIATE) until killed."""
    code = ("import sqlite3, sys, time; d = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "d.execute('BEGIN IMMEDIATE'); print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_store_held_beyond_the_timeout_fails_the_write_in_one_line_naming_the_holder(tmp_path, monkeypatch):
    import transferlab.store as store_module

    monkeypatch.setattr(store_module, "BUSY_S", 1.0)
    db = tmp_path / "s.db"
    store = Store(db)
    store.set_study_value("s", "kept", 1)
    holder = _hold(db)
    try:
        t0 = time.time()
        with pytest.raises(store_module.StoreError) as err:
            store.set_study_value("s", "lost", 2)
        waited = time.time() - t0
    finally:
        holder.kill()
        holder.wait()
    message = str(err.value)
    assert f"process {holder.pid}" in message and "for more than 1s" in message and "\n" not in message
    assert 0.9 < waited < 10 and not err.value.started  # bounded; no run had started through this handle
    assert not store._db.in_transaction  # rolled back: the connection is usable again
    store.set_study_value("s", "after", 3)
    assert store.study_values("s") == {"kept": 1, "after": 3}
    _intact(db)


@pytest.mark.slow  # ~40 s on a loaded 2-core machine: a CLI process, a holder, then the rerun
def test_a_run_whose_store_is_held_mid_run_exits_1_in_one_line_and_its_rerun_completes(data, tmp_path):
    """The holder takes the lock once the run's row exists (the driver's first write after its claim)."""
    spec, db = _spec_file(data, tmp_path, epochs=1), tmp_path / "s.db"
    script = tmp_path / "held_mid_run.py"
    script.write_text(f"""
import subprocess, sys
import transferlab.store as st
from transferlab.cli import main
from test_faults import _hold
from pathlib import Path
real, held = st.Store.update_run, []
def update_run(self, uid, **fields):
    if not held:
        held.append(_hold(Path({str(db)!r})))
        print("holder", held[0].pid, flush=True)
    return real(self, uid, **fields)
st.Store.update_run = update_run
code = main(["run", {str(spec)!r}, "--store", {str(db)!r}, "--quiet"])
held[0].kill()
sys.exit(code)
""")
    proc = subprocess.run([sys.executable, str(script)], env={**ENV, "TRANSFERLAB_BUSY_S": "1"},
                          capture_output=True, text=True, timeout=300)
    holder = proc.stdout.split("holder ")[1].split()[0]
    assert proc.returncode == 1, proc.stderr  # the run had started
    line = _one_line(proc.stderr)
    assert f"held by another process (process {holder}" in line and "nothing was written" in line
    _intact(db)
    (row,) = Store(db).runs()
    assert row.status == "unfinished"  # its process is gone: the rerun trains it
    assert main(["run", str(spec), "--store", str(db), "--quiet"]) == 0
    rows = Store(db).runs()
    assert [r.status for r in rows] == ["unfinished", "finished"]


# ------------------------------------------------------------------ a damaged store
def test_a_damaged_store_page_is_refused_on_open_in_one_line_and_nothing_is_written(data, tmp_path, capsys):
    spec, db = _spec_file(data, tmp_path, epochs=1, save_model=False), tmp_path / "s.db"
    assert main(["run", str(spec), "--store", str(db), "--quiet"]) == 0
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the file itself (the WAL is empty)
    (page,) = con.execute("SELECT pageno FROM dbstat WHERE name='runs'").fetchone()
    size = con.execute("PRAGMA page_size").fetchone()[0]
    con.close()
    with open(db, "r+b") as f:  # a damaged page in the middle of the file: the runs table's
        f.seek((page - 1) * size + 8)
        f.write(os.urandom(size - 8))
    before = db.read_bytes()
    capsys.readouterr()
    for args in (["runs"], ["run", str(spec), "--rerun", "--quiet"], ["report", "-o", str(tmp_path / "r")]):
        assert main([*args, "--store", str(db)]) == 2, args
        err = capsys.readouterr().err
        line = _one_line(err)
        assert "is damaged" in line and ".recover" in line and "new store" in line
    wal = Path(f"{db}-wal")
    assert db.read_bytes() == before and (not wal.exists() or wal.stat().st_size == 0)  # not a byte written


# ------------------------------------------------------------------ a full disk
def _tmpfs_works() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt && df /mnt"], capture_output=True)
    return probe.returncode == 0


TMPFS = _tmpfs_works()


def _in_small_tmpfs(mount: Path, size_kb: int, command: list[str]) -> subprocess.CompletedProcess:
    """``command`` in a private mount namespace where ``mount`` is a tmpfs of ``size_kb`` KiB."""
    mount.mkdir(exist_ok=True)
    shell = f'mount -t tmpfs -o size={size_kb}k tmpfs "{mount}" && exec "$@"'
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", shell, "sh", *command],
                          env=ENV, capture_output=True, text=True, timeout=300)


def test_a_full_disk_during_a_commit_rolls_back_and_keeps_the_store(tmp_path):
    """On a tmpfs that fills up (else an injected SQLITE_FULL): each failing write is one StoreError whose
    line says the disk is full, the transaction is rolled back, and every committed row is intact."""
    script = tmp_path / "fill.py"
    script.write_text("""
import os, sqlite3, sys
from pathlib import Path
from transferlab.errors import StoreError
from transferlab.store import Store
folder = Path(sys.argv[1])
store = Store(folder / "s.db")
uid = store.start_run("r-s0", "h", 0, {"x": 1})
inject = sys.argv[2] == "inject"
if inject:  # no tmpfs here: the connection reports SQLITE_FULL at COMMIT, as SQLite does on a full disk
    class Full:
        def __init__(self, db): self.db = db
        def execute(self, sql, *a):
            if sql == "COMMIT": raise sqlite3.OperationalError("database or disk is full")
            return self.db.execute(sql, *a)
        def __getattr__(self, name): return getattr(self.db, name)
    real = store._db
    store._db = Full(real)
logged, errors = 0, []
for step in range(10_000):
    try:
        store.log_curve(uid, [(step * 100 + i, 0.5, 1e-3, None) for i in range(100)])
        logged += 100
    except StoreError as e:
        errors.append(str(e))
        if len(errors) == 2: break
if inject:
    store._db = real
print(logged, len(errors), errors[0], sep="\\n")
assert not store._db.in_transaction
store.close()
store = Store(folder / "s.db")  # quick_check on open
print(len(store.curve(uid)), store.get(uid).status)
""")
    folder = tmp_path / "fs"
    if TMPFS:
        proc = _in_small_tmpfs(folder, 512, [sys.executable, str(script), str(folder), "tmpfs"])
    else:
        folder.mkdir()
        proc = subprocess.run([sys.executable, str(script), str(folder), "inject"], env=ENV, capture_output=True,
                              text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    logged, n_errors, error, last = proc.stdout.strip().splitlines()[-4:]
    kept, status = last.split()
    assert int(n_errors) == 2 and "the disk is full" in error and "rolled back" in error
    assert "cannot rollback" not in proc.stdout + proc.stderr
    assert int(kept) == int(logged) and (TMPFS and int(logged) > 0 or not TMPFS)  # every commit kept, no other
    assert status in ("unfinished", "running")


def test_a_full_disk_while_saving_weights_fails_the_run_in_one_line_and_keeps_no_partial_file(data, tmp_path,
                                                                                               monkeypatch, capsys):
    """Injected (always available): safetensors reports ENOSPC. The run is failed with the cause, the
    CLI says it in one line (exit 1), no temporary or partial weights remain; the rerun completes."""
    import errno

    import transferlab.models.artifacts as artifacts

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    spec, db = _spec_file(data, tmp_path, epochs=1), tmp_path / "s.db"
    monkeypatch.setattr(artifacts, "save_file", full)
    assert main(["run", str(spec), "--store", str(db), "--quiet"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "cannot write the run's weights" in line and "the disk is full" in line
    (row,) = Store(db).runs()
    assert row.status == "failed" and "the disk is full" in row.error
    folder = Store(db).artifact_dir(row.uid)
    assert not [p for p in folder.iterdir() if "safetensors" in p.name]  # neither a partial nor a temporary file
    monkeypatch.undo()
    assert main(["run", str(spec), "--store", str(db), "--quiet"]) == 0
    assert [r.status for r in Store(db).runs()] == ["failed", "finished"]
    _intact(db)


@pytest.mark.slow  # ~30 s: a CLI process in a private mount namespace
@pytest.mark.skipif(not TMPFS, reason="needs root and unshare -m for a private tmpfs (the injected case runs)")
def test_a_real_full_disk_at_the_artifact_location_fails_the_run_in_one_line(data, tmp_path):
    """A real tmpfs of 256 KiB as the artifact folder: the weights (4 MB) cannot fit."""
    spec, db, art = _spec_file(data, tmp_path, epochs=1), tmp_path / "s.db", tmp_path / "art"
    proc = _in_small_tmpfs(art, 256, [sys.executable, "-m", "transferlab.cli", "run", str(spec), "--store", str(db),
                                      "--artifacts", str(art), "--quiet"])
    assert proc.returncode == 1, proc.stderr
    line = _one_line(proc.stderr)
    assert "cannot write the run's weights" in line and "the disk is full" in line
    _intact(db)
    (row,) = Store(db).runs()
    assert row.status == "failed" and "the disk is full" in row.error


# ------------------------------------------------------------------ two concurrent single runs of one spec
def test_two_concurrent_runs_of_one_spec_train_it_once_and_the_second_reuses_it(data, tmp_path, caplog):
    """A second `run` of a spec another process trains now waits for it and reuses its result, saying so."""
    from transferlab.spec import load_spec
    from transferlab.train.loop import run

    spec, db = _spec_file(data, tmp_path, epochs=8), tmp_path / "s.db"
    first = _popen(["run", str(spec), "--store", str(db), "--quiet"])
    try:
        wait_until(lambda: db.exists() and any(r.status == "running" for r in Store(db).runs()), 240,
                   "the first run did not start")
        with caplog.at_level("WARNING", logger="transferlab.train.loop"):
            second = run(load_spec(str(spec)), Store(db), progress=False)  # this process: the second run
        out, err = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, err
    (row,) = Store(db).runs()  # one attempt: trained once
    assert row.status == "finished"
    assert second.status == "skipped" and second.uid == row.uid and second.dev == row.summary["dev"]
    said = caplog.text
    assert f"is being trained by process {first.pid}" in said and f"reusing {row.uid}" in said


@pytest.mark.slow
def test_a_run_waiting_for_another_trains_it_when_that_process_dies(data, tmp_path):
    import threading

    from transferlab.spec import load_spec
    from transferlab.train.loop import run

    spec, db = _spec_file(data, tmp_path, epochs=8), tmp_path / "s.db"
    first = _popen(["run", str(spec), "--store", str(db), "--quiet"])
    try:
        wait_until(lambda: db.exists() and any(r.status == "running" for r in Store(db).runs()), 240,
                   "the first run did not start")
        results = []
        waiter = threading.Thread(target=lambda: results.append(run(load_spec(str(spec)), Store(db), progress=False)))
        waiter.start()
        time.sleep(3.0)  # waiting for the first
        first.kill()
        first.wait()
        waiter.join(timeout=300)
    finally:
        first.kill()
    (result,) = results
    rows = Store(db).runs()
    assert [r.status for r in rows] == ["unfinished", "finished"] and result.uid == rows[-1].uid


# ------------------------------------------------------------------ signals at each stage, under each executor
def test_a_signal_inside_a_finalizer_is_not_lost_as_an_ignored_traceback_but_raised_after_it():
    """A Ctrl-C that lands in an object's ``__del__`` (a progress bar collected after training) would print
    "Exception ignored ... Traceback" and vanish; the CLI's handler sends it again once the finalizer is done."""
    import gc

    from transferlab import cli

    seen = []

    class Bar:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)  # delivered inside this finalizer
            time.sleep(0.01)
            seen.append("finalized")

    previous = cli._install_handlers()
    try:
        with pytest.raises(KeyboardInterrupt):
            Bar()
            gc.collect()
            time.sleep(2.0)  # the signal again, outside the finalizer: raised here
        assert seen == ["finalized"]  # the finalizer ran to its end
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


KINDS = {  # the command of each kind after `run FILE --store DB`; a single run reads OMP_NUM_THREADS=1
    "single": [],
    "inline": ["--threads", "1"],
    "processes": ["--executor", "processes", "--workers", "1", "--threads", "1"],  # one spawn: cheaper
    "seed-parallel": ["--seed-parallel", "on", "--threads", "1"],
}
N_RUNS = {"single": 1, "inline": 4, "processes": 4, "seed-parallel": 4}
DEFAULT = {("single", "start-up", "SIGINT"), ("single", "training", "SIGTERM"), ("inline", "training", "SIGKILL"),
           ("processes", "training", "SIGINT"), ("seed-parallel", "after", "SIGTERM")}
CASES = [pytest.param(k, phase, sig, marks=() if (k, phase, sig) in DEFAULT else pytest.mark.slow)
         for k in KINDS for phase in ("start-up", "training", "after") for sig in ("SIGKILL", "SIGTERM", "SIGINT")]


def _file(kind: str, data, folder: Path) -> Path:
    return _spec_file(data, folder, epochs=6) if kind == "single" else _study_file(data, folder)


def _args(kind: str, path: Path, db: Path) -> list[str]:
    return ["run", str(path), "--store", str(db), *KINDS[kind], *(["--quiet"] if kind == "single" else [])]


@pytest.fixture(scope="module")
def clean(data, tmp_path_factory):
    """Each kind's results from an uninterrupted run (made once, on first use)."""
    made = {}

    def get(kind: str) -> dict:
        kind = "inline" if kind == "processes" else kind  # one thread each: the same numbers (test_executors)
        if kind not in made:
            folder = tmp_path_factory.mktemp(f"clean-{kind}")
            assert main(_args(kind, _file(kind, data, folder), folder / "s.db")) == 0
            made[kind] = _results(folder / "s.db")
        return made[kind]

    return get


def _in_main(pid: int) -> bool:
    """The process runs ``cli.main`` (its SIGTERM handler is installed: bit 15 of SigCgt)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def _ready(kind: str, phase: str, pid: int, db: Path):
    def rows():
        return Store(db).runs() if db.exists() else []

    if phase == "start-up":
        return lambda: _in_main(pid) and not rows()
    if phase == "training":
        if kind == "single":  # its curve is in the store: steps are running
            return lambda: any(r.status == "running" and Store(db).curve(r.uid) for r in rows())
        return lambda: any(r.status == "running" for r in rows())
    return lambda: sum(r.status == "finished" for r in rows()) == N_RUNS[kind]


@pytest.mark.parametrize("kind,phase,sig", CASES)
def test_a_signal_at_any_stage_leaves_the_store_intact_and_the_rerun_equals_a_clean_run(
        kind, phase, sig, data, tmp_path, clean):
    path, db = _file(kind, data, tmp_path), tmp_path / "s.db"
    proc = _popen(_args(kind, path, db))
    try:
        wait_until(_ready(kind, phase, proc.pid, db), 300, f"{kind}: {phase} was not reached")
        proc.send_signal(getattr(signal, sig))
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert "Traceback" not in err, err
    if sig == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL
    elif phase == "after":
        # done already, stopped in its last lines, or killed by the signal in the interpreter's final
        # teardown (Python has put the default handlers back by then): never a traceback, all stored
        assert proc.returncode in (0, 130, -getattr(signal, sig)), err
    else:
        assert proc.returncode == 130 and ("interrupted" in err or "to resume" in out), (proc.returncode, err)
    if not db.exists() or not Store(db).runs():
        assert phase == "start-up"
    else:
        _intact(db)
        rows = Store(db).runs()
        assert all(r.status in ("finished", "unfinished") or (r.status == "failed" and r.error.startswith(
            "interrupted")) for r in rows), [(r.status, r.error) for r in rows]  # none left running, none lost
    if phase == "start-up":
        assert not db.exists() or not Store(db).runs()  # stopped before anything was written
        return
    assert main(_args(kind, path, db)) == 0  # the rerun
    _same(_results(db), clean(kind))
