"""The spine end to end on a tiny model: learning, determinism, store, CLI errors, kill -9."""


import pytest
import yaml
from conftest import sigkill_when, tiny_spec_dict

from transferlab.cli import main
from transferlab.errors import UserError
from transferlab.spec import load_spec, run_id
from transferlab.store import Store
from transferlab.train.loop import run


def test_tiny_run_learns_and_is_stored(toy_task_dir, tmp_path):
    store = Store(tmp_path / "s.db")
    spec = load_spec(tiny_spec_dict(toy_task_dir, epochs=6))
    result = run(spec, store, progress=False)
    assert result.status == "finished"
    assert result.dev["accuracy"] >= 0.8  # chance is 0.5
    curve = store.curve(result.uid)
    assert len(curve) >= 5
    first, last = curve[0][1], curve[-1][1]
    assert last < first  # the loss falls
    row = store.get(result.uid)
    assert row.status == "finished" and row.n_trainable == row.n_params > 0
    assert row.provenance["torch"] and row.provenance["transformers"] and "hardware" in row.provenance
    assert row.spec == yaml.safe_load(yaml.safe_dump(row.spec))  # the resolved spec is stored
    steps = {s for s, split, m, v in store.evals(result.uid) if split == "dev"}
    assert len(steps) == 3  # num_evals


def test_same_spec_twice_gives_identical_metrics_and_both_provenances(toy_task_dir, tmp_path):
    store = Store(tmp_path / "s.db")
    spec = load_spec(tiny_spec_dict(toy_task_dir, epochs=2))
    a = run(spec, store, progress=False)
    b = run(spec, store, progress=False, force=True)
    assert a.run_id == b.run_id and a.uid != b.uid
    assert a.dev == b.dev
    assert store.curve(a.uid) == store.curve(b.uid)
    rows = store.runs(run_id=a.run_id)
    assert [r.attempt for r in rows] == [1, 2]
    assert all(r.provenance.get("python") for r in rows)
    # a third call without force reuses the finished run
    c = run(spec, store, progress=False)
    assert c.status == "skipped" and len(store.runs(run_id=a.run_id)) == 2


def test_failed_run_is_stored_and_earlier_runs_survive(toy_task_dir, tmp_path, monkeypatch):
    store = Store(tmp_path / "s.db")
    good = run(load_spec(tiny_spec_dict(toy_task_dir, epochs=1)), store, progress=False)
    bad = load_spec({**tiny_spec_dict(toy_task_dir), "task": {"name": "csv", "path": str(tmp_path / "missing")}})
    with pytest.raises(UserError, match="missing"):
        run(bad, store, progress=False)
    assert store.runs(run_id=run_id(bad)) == []  # a user's mistake is caught before a run row exists
    # a failure during training is stored as a failed attempt
    import transferlab.train.engine as loop  # the Engine builds the optimizer

    def broken(*args, **kwargs):
        raise RuntimeError("optimizer exploded")

    monkeypatch.setattr(loop, "build_optimizer", broken)
    other = load_spec(tiny_spec_dict(toy_task_dir, epochs=2))
    with pytest.raises(RuntimeError, match="exploded"):
        run(other, store, progress=False)
    failed = store.runs(run_id=run_id(other))[-1]
    assert failed.status == "failed" and "exploded" in failed.error
    assert store.get(good.uid).status == "finished" and store.get(good.uid).summary["dev"] == good.dev
    # a mistake in the spec is found before the run is recorded: no row at all
    missing = load_spec({**tiny_spec_dict(toy_task_dir), "task": {"name": "csv", "path": str(tmp_path / "missing")}})
    with pytest.raises(UserError, match="missing"):
        run(missing, store, progress=False)
    assert store.runs(run_id=run_id(missing)) == []


def test_cli_run_runs_export_and_errors(toy_task_dir, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec_dict(toy_task_dir, epochs=1)))
    db = str(tmp_path / "s.db")
    assert main(["run", str(spec), "--store", db, "--quiet", "--set", "train.epochs=2"]) == 0
    assert main(["runs", "--store", db]) == 0
    out = capsys.readouterr().out
    assert "finished" in out and "accuracy=" in out
    uid = Store(db).runs()[0].uid
    assert main(["export", uid, "-o", str(tmp_path / "exported"), "--store", db]) == 0
    assert (tmp_path / "exported" / "config.json").is_file()
    assert main(["export", "--csv", str(tmp_path / "tables"), "--store", db]) == 0
    assert (tmp_path / "tables" / "evals.csv").read_text().count("\n") > 3
    capsys.readouterr()
    # user mistakes: one line, exit 2
    for argv, needle in [
        (["run", str(spec), "--store", db, "--set", "optim.nme=adamw"], "unknown key 'nme'"),
        (["run", str(spec), "--store", db, "--set", "head.name=nope"], "unknown head 'nope'"),
        (["run", str(tmp_path / "none.yaml"), "--store", db], "does not exist"),
        (["export", "zzz", "-o", str(tmp_path / "x"), "--store", db], "no run 'zzz'"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_unknown_model_offline_is_a_clear_error(toy_task_dir, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec_dict(toy_task_dir)))
    code = main(["run", str(spec), "--store", str(tmp_path / "s.db"), "--set", "model.name=nobody/no-such-model"])
    assert code == 2
    err = capsys.readouterr().err
    assert "nobody/no-such-model" in err and "local folder" in err


def test_sigkill_leaves_store_readable_and_run_unfinished(toy_task_dir, tmp_path):
    db = tmp_path / "s.db"
    store = Store(db)
    done = run(load_spec(tiny_spec_dict(toy_task_dir, epochs=1)), store, progress=False)
    spec = tmp_path / "long.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec_dict(toy_task_dir, epochs=1000, num_evals=1000, log_every=1)))

    def started() -> bool:
        rows = [r for r in Store(db).runs() if r.uid != done.uid]
        return bool(rows) and bool(Store(db).curve(rows[0].uid))

    sigkill_when(["run", str(spec), "--store", str(db), "--quiet"], started, 120, "the run did not start")
    after = Store(db)
    (killed,) = [r for r in after.runs() if r.uid != done.uid]
    assert killed.status == "unfinished"
    assert after.get(done.uid).status == "finished" and after.get(done.uid).summary == done.summary
    assert after.curve(killed.uid)  # what it wrote before dying is still there
