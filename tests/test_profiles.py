"""Size profiles of a study file (study/profiles.py), chosen with `transferlab run STUDY --profile NAME`, and the
rough wall-time estimate a dry run prints (study/estimate.py)."""

import pytest
import yaml
from conftest import tiny_study_dict, write_sentiment_csv

from transferlab.cli import main
from transferlab.errors import SpecError
from transferlab.spec import load_spec
from transferlab.study.estimate import CPU_FLOPS, START_S, estimate, run_flops
from transferlab.study.expand import expand
from transferlab.study.spec import load_study, study_hash

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture
def study(tmp_path):
    data = write_sentiment_csv(tmp_path / "toy", n_train=64, n_dev=32)
    d = tiny_study_dict(data, seeds=[0])
    d["profiles"] = {"cpu": {"base.train.epochs": 1, "seeds": [0, 1]},
                     "gpu": {"base.train.epochs": 4, "seeds": {"start": 0, "stop": 5}, "arms.bertadam.optim.lr": 1e-4}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def test_profiles_resolve_and_change_the_plan(study):
    plain, cpu, gpu = (load_study(study, profile=p) for p in (None, "cpu", "gpu"))
    assert (plain.study, cpu.study, gpu.study) == ("tiny-study", "tiny-study@cpu", "tiny-study@gpu")
    assert (plain.seeds, cpu.seeds, gpu.seeds) == ([0], [0, 1], [0, 1, 2, 3, 4])
    assert gpu.base["train"]["epochs"] == 4 and gpu.arms["bertadam"]["optim.lr"] == 1e-4
    assert len({study_hash(s) for s in (plain, cpu, gpu)}) == 3  # the profile is part of the identity
    runs = {p: expand(s) for p, s in (("plain", plain), ("cpu", cpu), ("gpu", gpu))}
    assert [len(r) for r in runs.values()] == [2, 4, 10]
    # the same arm and seed trains another spec under another profile, so it gets another run id
    assert runs["cpu"][0].run_id != runs["gpu"][0].run_id
    assert runs["gpu"][0].spec.train.epochs == 4
    # --set applies after the profile
    assert load_study(study, ["base.train.epochs=2"], profile="gpu").base["train"]["epochs"] == 2


def test_cli_dry_run_prints_the_profiles_plan_and_its_estimate(study, tmp_path, capsys):
    db = tmp_path / "s.db"
    assert main(["run", str(study), "--profile", "gpu", "--store", str(db), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert not db.exists()
    assert "tiny-study@gpu: 10 of 10 runs to do" in out
    for p in expand(load_study(study, profile="gpu")):
        assert p.run_id in out
    line = next(x for x in out.splitlines() if "expected wall time" in x)
    assert "rough estimate" in line and "docs/benchmarks.md" in line and "10 runs" in line
    assert "on the 2-core CPU" in line and "on one GPU" in line  # device auto: both figures


@pytest.mark.parametrize("args, needle", [
    (["--profile", "laptop"], "--profile laptop: unknown profile; the study declares: cpu, gpu"),
])
def test_unknown_profile_is_one_line_exit_2_and_nothing_stored(study, tmp_path, capsys, args, needle):
    db = tmp_path / "s.db"
    for extra in ([], ["--dry-run"]):
        assert main(["run", str(study), "--store", str(db), *args, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and needle in err
        assert not db.exists()


@pytest.mark.parametrize("key, needle", [
    ("base.train.epocs", "profiles.gpu (base): unknown field 'train.epocs'"),
    ("sedes", "profiles.gpu: unknown field 'sedes'"),
    ("arms.bertadam.optim.nme", "profiles.gpu (arms.bertadam): unknown field 'optim.nme'"),
    ("lr_search.gird", "profiles.gpu: unknown field 'lr_search.gird'; known fields of lr_search: grid"),
])
def test_a_profile_key_that_is_not_a_field_is_one_line(study, tmp_path, capsys, key, needle):
    d = yaml.safe_load(study.read_text())
    d["profiles"]["gpu"][key] = 1
    study.write_text(yaml.safe_dump(d))
    db = tmp_path / "s.db"
    # the bad key is in the gpu profile: choosing cpu (or none) still refuses, before anything is stored
    for extra in (["--profile", "cpu"], [], ["--profile", "gpu", "--dry-run"]):
        assert main(["run", str(study), "--store", str(db), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and needle in err, err
        assert not db.exists()


def test_profile_errors_without_profiles_and_on_run_specs(study, tmp_path, capsys):
    d = yaml.safe_load(study.read_text())
    del d["profiles"]
    with pytest.raises(SpecError, match="the study declares no profiles"):
        load_study(d, profile="cpu")
    run_spec = tmp_path / "run.yaml"
    run_spec.write_text(yaml.safe_dump(d["base"]))
    assert main(["run", str(run_spec), "--profile", "cpu", "--store", str(tmp_path / "s.db")]) == 2
    assert "profiles belong to study files" in capsys.readouterr().err
    with pytest.raises(SpecError, match="profiles: expected a mapping"):
        load_study({**d, "profiles": {"cpu": [1]}}, profile="cpu")


def test_estimate_scales_with_the_planned_work(study):
    import dataclasses

    one = load_spec(load_study(study, profile="cpu").base)
    by_epochs = {e: dataclasses.replace(one, train=dataclasses.replace(one.train, epochs=e)) for e in (1, 2, 4)}
    flops = {e: run_flops(s, {}, {}) for e, s in by_epochs.items()}
    # training work is linear in the epochs (64 examples, batch 16: whole steps), evaluations a constant on top
    assert flops[4] - flops[1] == pytest.approx(3 * (flops[2] - flops[1]))
    assert flops[1] > flops[2] - flops[1] > 0  # the evaluations are counted too
    e = estimate([by_epochs[1], by_epochs[4]])
    assert e.runs == 2 and e.unknown == 0
    assert e.seconds["cpu"] == pytest.approx((flops[1] + flops[4]) / CPU_FLOPS + 2 * START_S["cpu"])
    assert e.seconds["cpu"] > e.seconds["gpu"] > 0
