"""Studies beyond one process: the driver is the only writer, artifact locations, dead workers,
leases, two drivers, run identity from data and model, exit codes, bad input."""

import os
import sqlite3
import time

import pytest
import torch
import yaml
from conftest import tiny_spec_dict, tiny_study_dict, wait_until, write_sentiment_csv

from transferlab.cli import main
from transferlab.spec import spec_from_dict, spec_hash, to_dict
from transferlab.store import Store
from transferlab.study.expand import expand
from transferlab.study.jobs import Job, execute_jobs
from transferlab.study.runner import run_study
from transferlab.study.spec import load_study

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def data(tmp_path):
    return write_sentiment_csv(tmp_path / "toy", n_train=64, n_dev=32)


def _metrics(store: Store) -> dict:
    return {r.run_id: (r.status, r.summary["dev"], store.curve(r.uid)) for r in store.runs() if r.status == "finished"}


def test_a_worker_never_opens_the_store_and_the_driver_writes_its_record_at_once(data, tmp_path, monkeypatch):
    spec = spec_from_dict(tiny_spec_dict(data, epochs=1, save_model=True))
    store = Store(tmp_path / "s.db")
    uid, earlier = store.claim("rid-s0", spec_hash(spec), spec.seed, to_dict(spec), name=spec.name)
    job = Job(0, spec, "s", str(store.path), uid=uid, run_id="rid-s0", earlier=earlier, artifacts=None)
    opened = []
    real = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: opened.append(a) or real(*a, **k))
    (outcome,) = execute_jobs([job])  # what a worker runs
    assert opened == [] and outcome.status == "finished"
    record = outcome.record
    assert record.evals and record.curve and "model.safetensors" in record.files  # weights travel back
    assert store.get(uid).status == "running" and store.evals(uid) == []  # nothing written yet
    store.write_record(record)
    row = store.get(uid)
    assert row.status == "finished" and row.summary["dev"] == outcome.summary["dev"]
    assert len(store.evals(uid)) == len(record.evals) and len(store.curve(uid)) == len(record.curve)
    assert (store.artifact_dir(uid) / "model.safetensors").is_file()  # written by the driver


# ------------------------------------------------------------------ processes: dead workers, dead parents, SIGTERM
def _cli(args: list[str]):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "transferlab.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _workers(pid: int) -> list:
    import psutil

    return [c for c in psutil.Process(pid).children(recursive=True) if "spawn" in " ".join(c.cmdline())]


def _study_file(data, tmp_path, **kw) -> tuple:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tiny_study_dict(data, **kw)))
    return path, tmp_path / "s.db"


def test_sigkill_of_a_processes_worker_fails_its_run_only_and_a_rerun_completes(data, tmp_path):
    import signal

    path, db = _study_file(data, tmp_path, seeds=[0, 1], epochs=4)
    proc = _cli(["run", str(path), "--store", str(db), "--executor", "processes", "--workers", "2", "--threads", "1"])
    try:
        wait_until(lambda: db.exists() and sum(r.status == "running" for r in Store(db).runs()) == 2 and len(
            _workers(proc.pid)) == 2, 120, "two runs did not start")
        time.sleep(1.0)
        victim = _workers(proc.pid)[0]
        os.kill(victim.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 1, out  # a run failed: exit 1 with a summary line
    assert "died of SIGKILL" in out and "1 of 4 runs failed" in out and "Traceback" not in out
    rows = Store(db).runs()
    assert sorted(r.status for r in rows) == ["failed", "finished", "finished", "finished"]  # never lost
    assert "died of SIGKILL" in next(r for r in rows if r.status == "failed").error
    assert main(["run", str(path), "--store", str(db), "--threads", "1"]) == 0  # the rerun completes it
    latest = Store(db).runs(latest=True)
    assert len(latest) == 4 and all(r.status == "finished" for r in latest)


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_workers_die_with_their_parent_and_sigterm_is_like_ctrl_c(data, tmp_path, sig):
    import signal

    import psutil

    path, db = _study_file(data, tmp_path, seeds=[0, 1], epochs=20)
    proc = _cli(["run", str(path), "--store", str(db), "--executor", "processes", "--workers", "2", "--threads", "1"])
    try:
        wait_until(lambda: db.exists() and any(r.status == "running" for r in Store(db).runs()) and len(
            _workers(proc.pid)) == 2, 120, "the workers did not start")
        pids = [w.pid for w in _workers(proc.pid)]
        proc.send_signal(getattr(signal, sig))
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()

    def gone() -> bool:
        return all(not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE for p in pids)

    wait_until(gone, 15, f"workers {pids} outlived their parent")
    if sig == "SIGTERM":
        assert proc.returncode == 130 and "Run the same command again to resume" in out
    rows = Store(db).runs()
    assert rows and all(r.status in ("finished", "unfinished") for r in rows)  # nothing left "running"


# ------------------------------------------------------------------ run identity: data and model
def test_one_changed_label_changes_the_run_id_and_reruns_only_the_affected_runs(tmp_path):
    a = write_sentiment_csv(tmp_path / "a", n_train=64, n_dev=32)
    b = write_sentiment_csv(tmp_path / "b", n_train=64, n_dev=32, seed=1)
    d = tiny_study_dict(a, seeds=[0, 1])
    d["arms"]["other_data"] = {"task.path": str(b)}
    study = load_study(d)
    store = Store(tmp_path / "s.db")
    assert run_study(study, store, out=lambda _: None).executed == 6
    before = {p.arm: p.run_id for p in expand(study) if p.seed == 0}
    lines = (b / "dev.csv").read_text().splitlines()
    text, label = lines[1].rsplit(",", 1)
    lines[1] = f"{text},{1 - int(label)}"  # one label flipped
    (b / "dev.csv").write_text("\n".join(lines) + "\n")
    after = {p.arm: p.run_id for p in expand(study) if p.seed == 0}
    assert after["other_data"] != before["other_data"] and after["adamw"] == before["adamw"]
    again = run_study(study, store, out=lambda _: None)
    assert (again.executed, again.skipped) == (2, 4)  # the runs on the changed file, and only those
    row = store.runs(run_id=after["other_data"])[0]
    assert row.status == "finished" and row.fingerprint["data"] and row.fingerprint["model"] == "tiny-bert"


def test_an_older_store_is_migrated(tmp_path):
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.executescript("""CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE runs (uid TEXT PRIMARY KEY, run_id TEXT NOT NULL, attempt INTEGER NOT NULL,
        recipe_hash TEXT NOT NULL, seed INTEGER NOT NULL, name TEXT, study TEXT, kind TEXT NOT NULL DEFAULT 'train',
        status TEXT NOT NULL, spec TEXT NOT NULL, provenance TEXT, summary TEXT, error TEXT, error_step INTEGER,
        n_params INTEGER, n_trainable INTEGER, host TEXT, pid INTEGER, created_at REAL NOT NULL, finished_at REAL,
        heartbeat_at REAL, duration_s REAL, UNIQUE (run_id, attempt));
        INSERT INTO runs (uid, run_id, attempt, recipe_hash, seed, status, spec, created_at)
        VALUES ('old-s0/1', 'old-s0', 1, 'h', 0, 'finished', '{}', 1.0);""")
    con.commit()
    con.close()
    store = Store(db)
    (row,) = store.runs()
    assert row.status == "finished" and row.fingerprint is None  # kept, with no fingerprint
    assert store._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("2",)


# ------------------------------------------------------------------ leases and two drivers
def test_two_drivers_of_one_study_run_every_run_exactly_once(data, tmp_path):
    path, db = _study_file(data, tmp_path, seeds=[0, 1, 2], epochs=3)  # long enough for the drivers to overlap
    Store(db).close()  # both drivers open an existing store
    procs = [_cli(["run", str(path), "--store", str(db), "--threads", "1"]) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    rows = Store(db).runs()
    assert len(rows) == 6 and len({r.run_id for r in rows}) == 6 and all(r.status == "finished" for r in rows)
    drivers = {r.provenance["worker"]["pid"] for r in rows}
    assert len(drivers) == 2, "both drivers ran some of the runs"  # the runs were shared, none twice


def test_a_run_whose_lease_expired_is_rerun_and_a_live_lease_is_left_alone(data, tmp_path):
    study = load_study(tiny_study_dict(data, seeds=[0]))
    store = Store(tmp_path / "s.db")
    dead, alive = expand(study)
    for p, lease in ((dead, time.time() - 1), (alive, time.time() + 3600)):
        uid, _ = store.claim(p.run_id, spec_hash(p.spec), p.seed, to_dict(p.spec), study=study.study)
        store._db.execute("UPDATE runs SET host='another-host', lease_until=? WHERE uid=?", (lease, uid))
    assert [r.status for r in store.runs()] == ["unfinished", "running"]  # the host with the first died
    result = run_study(study, store, out=lambda _: None)
    assert (result.executed, result.skipped) == (1, 1)  # the live one is left to its driver
    assert [r.status for r in store.runs(run_id=dead.run_id)] == ["unfinished", "finished"]
    assert [r.status for r in store.runs(run_id=alive.run_id)] == ["running"]  # its host is alive: not rerun


# ------------------------------------------------------------------ artifacts at an fsspec URL
@pytest.mark.parametrize("executor", ["inline", "processes"])
def test_artifacts_at_a_url_round_trip_export_and_a_kd_teacher(data, tmp_path, executor):
    import shutil

    from transferlab.card import export_run
    from transferlab.models.artifacts import load_run_model

    url = "memory://transferlab-test/" + executor if executor == "inline" else (tmp_path / "remote").as_uri()
    store = Store(tmp_path / "s.db", artifacts=url)
    teacher = load_study({**tiny_study_dict(data, name="teacher", seeds=[0], save_model=True),
                          "arms": {"adamw": {"optim.name": "adamw"}}, "baseline": "adamw"})
    assert run_study(teacher, store, executor=executor, workers=1, threads=1, out=lambda _: None).failed == 0
    (row,) = store.runs(study="teacher")
    assert row.artifacts == url and not (tmp_path / "s_artifacts" / row.uid.replace("/", "_")).exists()
    shutil.rmtree(tmp_path / "s_artifacts", ignore_errors=True)  # no local copy: everything comes from the URL
    fresh = Store(tmp_path / "s.db", artifacts=url)
    model, _ = load_run_model(fresh, row.uid)
    assert model is not None
    out = export_run(fresh, row.uid, tmp_path / "export")
    assert (out / "config.json").is_file()
    student = tiny_study_dict(data, name="student", seeds=[0])
    student["base"]["distill"] = {"kind": "kd", "teacher": row.uid}
    student["arms"] = {"kd": {"distill.alpha": 0.5}}
    student["baseline"] = "kd"
    result = run_study(load_study(student), fresh, executor=executor, workers=1, threads=1, out=lambda _: None)
    assert result.failed == 0 and result.executed == 1
    (kd,) = fresh.runs(study="student")
    assert kd.status == "finished" and kd.summary["dev"]


def test_a_worker_resumes_from_a_checkpoint_at_the_url(tmp_path):
    """A run that failed half-way on one worker resumes on another from the checkpoint at the artifact
    URL (no local copy, no store access) and ends as an uninterrupted run does."""
    import shutil

    from safetensors.torch import load_file

    data = write_sentiment_csv(tmp_path / "data", n_train=40, n_dev=16)
    spec = spec_from_dict(tiny_spec_dict(data, max_steps=8, num_evals=4, checkpoint_every=3))

    class Crash:
        def on_step_start(self, step):
            if step == 5:
                raise RuntimeError("the node went away")

    def attempt(store: Store, hooks=()):
        uid, earlier = store.claim("rid-s0", spec_hash(spec), spec.seed, to_dict(spec))
        job = Job(0, spec, "s", str(store.path), uid=uid, run_id="rid-s0", earlier=earlier,
                  artifacts=store.location.url)
        (outcome,) = execute_jobs([job], hooks)
        store.write_record(outcome.record)
        shutil.rmtree(tempfile_cache(), ignore_errors=True)  # the next worker starts with nothing local
        return outcome

    url = (tmp_path / "bucket").as_uri()
    whole = Store(tmp_path / "a.db", artifacts=url + "/a")
    done = attempt(whole)
    halves = Store(tmp_path / "b.db", artifacts=url + "/b")
    first = attempt(halves, [Crash()])
    assert first.status == "failed" and (tmp_path / "bucket" / "b" / "rid-s0_1" / "checkpoint.pt").is_file()
    resumed = attempt(halves)
    assert resumed.status == "finished" and resumed.uid == "rid-s0/2"
    a = load_file(str(whole.artifact_dir(done.uid) / "model.safetensors"))
    b = load_file(str(halves.artifact_dir(resumed.uid) / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert halves.curve(resumed.uid) == whole.curve(done.uid)  # history carried from the checkpoint
    assert not (tmp_path / "bucket" / "b" / "rid-s0_2" / "checkpoint.pt").exists()


def tempfile_cache():
    import tempfile
    from pathlib import Path

    return Path(tempfile.gettempdir()) / "transferlab-artifact-cache"


# ------------------------------------------------------------------ kill scenarios on the processes executor
def test_sigkill_of_the_driver_after_three_runs_then_resume_on_processes(data, tmp_path):
    from conftest import sigkill_when

    path, db = _study_file(data, tmp_path)
    args = ["--executor", "processes", "--workers", "2", "--threads", "1"]
    sigkill_when(["run", str(path), "--store", str(db), *args],
                 lambda: db.exists() and sum(r.status == "finished" for r in Store(db).runs()) >= 3,
                 300, "the study did not get 3 runs done")
    before = {r.run_id: r.uid for r in Store(db).runs() if r.status == "finished"}
    assert main(["run", str(path), "--store", str(db), *args]) == 0
    rows = Store(db).runs()
    finished = [r for r in rows if r.status == "finished"]
    assert len(finished) == len({r.run_id for r in finished}) == 10  # 0 lost, 0 duplicated
    assert all(Store(db).finished(rid).uid == uid for rid, uid in before.items())  # not repeated
    assert all(r.status == "unfinished" for r in rows if r.status != "finished")


# ------------------------------------------------------------------ bad input: one line, exit 2, nothing written
def test_an_artifact_url_without_its_fsspec_backend_is_one_line(data, tmp_path, capsys):
    import fsspec

    missing = next(p for p in ("s3", "gs", "abfs", "oci") if not _importable(fsspec, p))
    path, db = _study_file(data, tmp_path)
    assert main(["run", str(path), "--store", str(db), "--artifacts", f"{missing}://bucket/runs"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"artifact location {missing}://bucket/runs" in err[0] and "not installed" in err[0]
    assert not db.exists()


def _importable(fsspec, protocol: str) -> bool:
    try:
        fsspec.get_filesystem_class(protocol)
        return True
    except ImportError:
        return False


def test_a_store_of_a_newer_schema_is_one_line_and_left_as_it_was(data, tmp_path, capsys):
    path, db = _study_file(data, tmp_path)
    store = Store(db)
    store._db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    store.close()
    before = db.read_bytes()
    assert main(["run", str(path), "--store", str(db)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"store {db} was written by a newer transferlab (schema 99" in err[0]
    assert db.read_bytes() == before


def test_without_a_shared_location_a_rerun_starts_at_step_0(data, tmp_path):
    """Ray without --artifacts: an earlier attempt's checkpoint stayed on its node; the new attempt
    trains from the start instead of failing."""
    spec = spec_from_dict(tiny_spec_dict(data, max_steps=6, checkpoint_every=2))
    job = Job(0, spec, "s", "", uid="rid-s0/2", run_id="rid-s0", earlier=[("rid-s0/1", "unfinished")])
    (outcome,) = execute_jobs([job])
    assert outcome.status == "finished" and [c[0] for c in outcome.record.curve] == [2, 4, 6]  # the whole curve


def test_a_recorder_answers_for_its_own_runs_like_a_store(data, tmp_path):
    """What a hook inside the worker reads (its run's uid and final status) comes from the recorder."""
    from transferlab.study.jobs import recorder_for

    spec = spec_from_dict(tiny_spec_dict(data, max_steps=2))
    job = Job(0, spec, "s", "", uid="rid-s0/3", run_id="rid-s0", earlier=[("rid-s0/2", "failed")])
    recorder = recorder_for([job])
    from transferlab.train.loop import run

    result = run(spec, recorder, progress=False, force=True)
    assert result.uid == "rid-s0/3"
    assert [a.uid for a in recorder.runs(run_id=result.run_id)] == ["rid-s0/2", "rid-s0/3"]
    assert recorder.get("rid-s0/3").status == "finished" and recorder.get("rid-s0/3").summary["dev"] == result.dev


def test_a_changed_teacher_folder_changes_the_run_id(data, tmp_path):
    from transferlab.spec import run_id

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "model.safetensors").write_bytes(b"weights v1")
    d = tiny_spec_dict(data)
    spec = spec_from_dict({**d, "distill": {"kind": "kd", "teacher": str(teacher)}})
    before = run_id(spec)
    assert run_id(spec_from_dict(d)) != before
    (teacher / "model.safetensors").write_bytes(b"weights v2")
    assert run_id(spec) != before


def test_the_heartbeat_keeps_a_lease_alive(data, tmp_path):
    from transferlab.study.runner import Heartbeat

    store = Store(tmp_path / "s.db")
    spec = spec_from_dict(tiny_spec_dict(data))
    uid, _ = store.claim("rid-s0", spec_hash(spec), 0, to_dict(spec), lease_s=0.4)
    store._db.execute("UPDATE runs SET host='another-host' WHERE uid=?", (uid,))  # only the lease speaks
    beat = Heartbeat(store.path, lease_s=0.4)
    beat.uids.add(uid)
    time.sleep(1.2)  # three leases long
    assert store.get(uid).status == "running"
    beat.close(store)
    time.sleep(0.6)
    assert store.get(uid).status == "unfinished"  # no heartbeat: the lease ran out
