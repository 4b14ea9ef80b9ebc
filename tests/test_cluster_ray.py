"""A real two-node Ray cluster on this machine: a head without CPUs and a worker node whose custom
resource ``trainer`` every task asks for, each with its own temp dir and working directory. The driver's
store is a relative path: the worker node, in another working directory, would write a stray store
there if it opened it (issue 14). Nodes are stopped by the ids of the processes this module started."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_study_dict, write_sentiment_csv

from transferlab.store import Store
from transferlab.study.runner import run_study
from transferlab.study.spec import load_study

ray = pytest.importorskip("ray")
RAY = str(Path(sys.executable).with_name("ray"))
ENV = {**os.environ, "RAY_AUTH_MODE": "token", "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
       "OMP_NUM_THREADS": "1"}


def _stop(tag: str) -> None:
    """Stop the processes whose command line names our temp dir (ours alone), and their children."""
    import psutil

    roots = [p for p in psutil.process_iter(["cmdline"])
             if p.pid != os.getpid() and any(tag in c for c in (p.info["cmdline"] or []))]
    procs = {p.pid: p for p in roots}
    for p in roots:
        try:
            procs.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.Error:
            pass
    for p in procs.values():
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=3)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


@pytest.fixture(scope="module")
def cluster():
    root = Path(tempfile.mkdtemp(prefix="tlray"))  # short: Ray's socket paths must stay < 108 characters
    head, node, home = root / "h", root / "w", root / "home"
    for d in (head, node, home):
        d.mkdir()
    try:
        subprocess.run([RAY, "start", "--head", "--port=0", "--num-cpus=0", f"--temp-dir={head}",
                        "--include-dashboard=false", "--disable-usage-stats"], env=ENV, check=True,
                       capture_output=True, timeout=120)
        address = (head / "ray_current_cluster").read_text().strip()
        subprocess.run([RAY, "start", f"--address={address}", "--num-cpus=1", "--resources", json.dumps({"trainer": 1}),
                        f"--temp-dir={node}", "--disable-usage-stats"], env=ENV, check=True, capture_output=True,
                       timeout=120, cwd=home)
        yield address, home
    finally:
        _stop(str(root))
        shutil.rmtree(root, ignore_errors=True)


def _cli(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), ENV.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "transferlab.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_node_cluster_stores_every_run_in_the_drivers_store_as_inline_does(cluster, tmp_path):
    address, home = cluster
    data = write_sentiment_csv(tmp_path / "toy", n_train=32, n_dev=16)
    study_dict = tiny_study_dict(data, seeds=[0, 1, 2])
    inline = Store(tmp_path / "inline.db")
    assert run_study(load_study(study_dict), inline, threads=1, out=lambda _: None).failed == 0
    driver = tmp_path / "driver"
    driver.mkdir()
    (driver / "study.yaml").write_text(yaml.safe_dump(study_dict))
    proc = _cli(["run", "study.yaml", "--store", "out/s.db", "--executor", "ray", "--address", address,
                 "--ray-resource", "trainer=1", "--threads", "1"], driver)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    store = Store(driver / "out" / "s.db")
    rows = store.runs()
    expected = {r.run_id: (r.status, r.summary["dev"], inline.curve(r.uid)) for r in inline.runs()}
    assert {r.run_id: (r.status, r.summary["dev"], store.curve(r.uid)) for r in rows} == expected
    assert len(rows) == 6 and {r.provenance["worker"]["pid"] for r in rows} != {proc.pid}
    assert not list(home.rglob("*.db")), "a worker wrote a stray store"


def test_a_data_path_missing_on_a_worker_node_is_one_line_and_nothing_is_written(cluster, tmp_path):
    address, _ = cluster
    driver = tmp_path / "driver"
    write_sentiment_csv(driver / "data", n_train=16, n_dev=8)
    study = tiny_study_dict(Path("data"), seeds=[0])  # relative: the worker node's working dir lacks it
    (driver / "study.yaml").write_text(yaml.safe_dump(study))
    proc = _cli(["run", "study.yaml", "--store", "s.db", "--executor", "ray", "--address", address,
                 "--ray-resource", "trainer=1"], driver)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out
    errors = [line for line in out.splitlines() if line.startswith("transferlab: error:")]
    assert len(errors) == 1 and "data path data does not exist on Ray node" in errors[0]
    assert not (driver / "s.db").exists()


@pytest.mark.slow  # ~25 s on top of the cluster; the default suite keeps the acceptance run and the path check
def test_sigkill_of_a_ray_worker_is_retried_and_the_run_completes(cluster, tmp_path):
    import psutil

    address, _ = cluster
    data = write_sentiment_csv(tmp_path / "toy", n_train=64, n_dev=16)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(tiny_study_dict(data, seeds=[0], epochs=6)))
    db = tmp_path / "s.db"
    proc = _cli(["run", str(tmp_path / "study.yaml"), "--store", str(db), "--executor", "ray", "--address", address,
                 "--ray-resource", "trainer=1", "--threads", "1"], tmp_path)
    try:
        deadline, victim = time.time() + 180, None
        while time.time() < deadline and victim is None:
            victim = next((p for p in psutil.process_iter(["cmdline"]) if "ray::execute_group" in
                           " ".join(p.info["cmdline"] or [])), None)
            time.sleep(0.2)
        assert victim is not None, "no Ray task started"
        time.sleep(1.0)
        os.kill(victim.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "retrying its 1 run(s) (retry 1 of 1)" in out
    rows = Store(db).runs()
    assert [r.status for r in rows] == ["finished", "finished"]  # retried under its claim: no second row, none lost


def test_an_unreachable_address_is_one_line_and_nothing_is_written(tmp_path):
    data = write_sentiment_csv(tmp_path / "toy", n_train=16, n_dev=8)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(tiny_study_dict(data, seeds=[0])))
    proc = _cli(["run", "study.yaml", "--store", "s.db", "--executor", "ray", "--address", "127.0.0.1:1"], tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out
    errors = [line for line in out.splitlines() if line.startswith("transferlab: error:")]
    assert len(errors) == 1 and "cannot reach a Ray cluster at 127.0.0.1:1" in errors[0]
    assert not (tmp_path / "s.db").exists()


@pytest.mark.slow  # ~60 s: ten runs on the worker node, twice
def test_sigkill_then_ctrl_c_of_a_ray_driver_lose_and_duplicate_nothing(cluster, tmp_path):
    address, _ = cluster
    data = write_sentiment_csv(tmp_path / "toy", n_train=32, n_dev=16)
    path, db = tmp_path / "study.yaml", tmp_path / "s.db"
    path.write_text(yaml.safe_dump(tiny_study_dict(data)))
    args = ["run", str(path), "--store", str(db), "--executor", "ray", "--address", address,
            "--ray-resource", "trainer=1", "--threads", "1"]

    def finished() -> int:
        return sum(r.status == "finished" for r in Store(db).runs()) if db.exists() else 0

    for sig, wanted in ((signal.SIGKILL, 2), (signal.SIGINT, 5)):
        proc = _cli(args, tmp_path)
        try:
            deadline = time.time() + 300
            while time.time() < deadline and finished() < wanted:
                time.sleep(0.1)
            proc.send_signal(sig)
            out, _ = proc.communicate(timeout=120)
        finally:
            proc.kill()
        if sig == signal.SIGINT:
            assert proc.returncode == 130 and "Run the same command again to resume" in out, out
        assert all(r.status in ("finished", "unfinished") for r in Store(db).runs()), [(r.status, r.error) for r in Store(db).runs()]
    proc = _cli(args, tmp_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    rows = Store(db).runs()
    done = [r for r in rows if r.status == "finished"]
    assert len(done) == len({r.run_id for r in done}) == 10  # 0 lost, 0 duplicated


def test_gpus_per_task_on_a_cluster_without_gpus_is_one_line(cluster, tmp_path):
    address, _ = cluster
    data = write_sentiment_csv(tmp_path / "toy", n_train=16, n_dev=8)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(tiny_study_dict(data, seeds=[0])))
    proc = _cli(["run", "study.yaml", "--store", "s.db", "--executor", "ray", "--address", address,
                 "--gpus-per-task", "0.5"], tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out
    errors = [line for line in out.splitlines() if line.startswith("transferlab: error:")]
    assert len(errors) == 1 and f"--gpus-per-task 0.5: the Ray cluster at {address} has no GPU" in errors[0]
    assert not (tmp_path / "s.db").exists()


@pytest.mark.slow  # ~20 s on top of the cluster
def test_seed_groups_run_as_one_ray_task_each(cluster, tmp_path):
    address, _ = cluster
    data = write_sentiment_csv(tmp_path / "toy", n_train=32, n_dev=16)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(tiny_study_dict(data, seeds=[0, 1, 2])))
    proc = _cli(["run", "study.yaml", "--store", "s.db", "--executor", "ray", "--address", address,
                 "--ray-resource", "trainer=1", "--seed-parallel", "on", "--threads", "1"], tmp_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    rows = Store(tmp_path / "s.db").runs()
    assert len(rows) == 6 and all(r.status == "finished" for r in rows)
    assert {r.summary.engine.label() for r in rows} == {"stacked x3"}
    workers = {}
    for r in rows:
        workers.setdefault(r.spec["optim"]["name"], set()).add(r.provenance["worker"]["pid"])
    assert all(len(pids) == 1 for pids in workers.values())  # each arm's three seeds: one task, one process


# ------------------------------------------------------------------ issue 25: a cluster of our own, a lean worker env
PROBE = """
import json, os, sys
import ray
from transferlab.study.ray_executor import RayExecutor
names = ("HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFERLAB_PROBE", "RAY_ADDRESS")
out = []
for address, forward in ((None, ""), (sys.argv[1], ""), (sys.argv[1], "HF_TOKEN")):
    os.environ["TRANSFERLAB_RAY_ENV"] = forward  # names more variables to send
    ex = RayExecutor(workers=1, address=address, resources={"trainer": 1} if address else None)
    probe = ray.remote(num_cpus=0)(lambda: {k: os.environ.get(k) for k in names})
    out.append({"gcs": ray.get_runtime_context().gcs_address, "trainer": "trainer" in ray.cluster_resources(),
                "env": ray.get(probe.remote(), timeout=120)})
    ex.close()
print(json.dumps(out))
"""


@pytest.mark.slow  # three clusters started in turn: ~60 s on a loaded 2-core machine
def test_the_executor_starts_its_own_cluster_unless_given_an_address_and_sends_no_token(cluster, tmp_path):
    """Another cluster runs here and RAY_ADDRESS names it (as `ray start` tells its user to set): without
    --address the executor still starts a local cluster of its own; with it, it attaches. Either way the
    workers see no HF token unless TRANSFERLAB_RAY_ENV names it."""
    address, _ = cluster
    env = {**ENV, "RAY_ADDRESS": address, "HF_TOKEN": "hf_secret", "TRANSFERLAB_PROBE": "x",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), ENV.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", PROBE, address], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    own, attached, forwarded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert own["gcs"] != address and not own["trainer"]  # not the other cluster (its node has `trainer`)
    assert own["env"] == {"HF_TOKEN": None, "HF_HUB_OFFLINE": "1", "TRANSFERLAB_PROBE": "x", "RAY_ADDRESS": None}
    assert attached["gcs"] == address and attached["trainer"] and attached["env"]["HF_TOKEN"] is None
    assert attached["env"]["HF_HUB_OFFLINE"] == "1" and attached["env"]["TRANSFERLAB_PROBE"] == "x"
    assert forwarded["env"]["HF_TOKEN"] == "hf_secret"  # named in TRANSFERLAB_RAY_ENV: sent
