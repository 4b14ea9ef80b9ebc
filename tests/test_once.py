"""One spec object, one validation, one run id and one task build per run, through a run and a study."""

from __future__ import annotations

import pytest
from conftest import tiny_spec_dict, tiny_study_dict, write_sentiment_csv

from transferlab import spec as spec_module
from transferlab.data import build as build_module
from transferlab.spec import RunSpec, load_spec
from transferlab.store import Store
from transferlab.study import expand as expand_module
from transferlab.study.runner import run_study
from transferlab.study.spec import load_study
from transferlab.train import loop as loop_module
from transferlab.train import validate as validate_module

pytestmark = pytest.mark.usefixtures("one_thread")


def counting(monkeypatch, module, name: str) -> list:
    """Wrap ``module.name`` so that each call is recorded (its first argument)."""
    calls, real = [], getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(args[0] if args else None)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_a_run_builds_its_file_task_once_and_computes_its_id_once(tmp_path, monkeypatch):
    data = write_sentiment_csv(tmp_path / "toy", n_train=64, n_dev=32)
    spec = load_spec(tiny_spec_dict(data, epochs=1, num_evals=1, save_model=False))
    built_in_validation = counting(monkeypatch, build_module, "build_task")  # validate.py imports it when called
    built_in_loop = counting(monkeypatch, loop_module, "build_task")
    ids = counting(monkeypatch, loop_module, "spec_run_id")
    result = loop_module.run(spec, Store(tmp_path / "s.db"), progress=False)
    assert result.status == "finished"
    # validation read the user's files in full once; the loop used that task instead of reading them again
    assert len(built_in_validation) == 1 and built_in_loop == []
    assert len(ids) == 1 and result.run_id == spec_module.run_id(spec)


def test_a_study_validates_once_and_carries_each_spec_object_and_run_id(tmp_path, monkeypatch):
    data = write_sentiment_csv(tmp_path / "toy", n_train=64, n_dev=32)
    study = load_study(tiny_study_dict(data, seeds=(0, 1), max_steps=2, num_evals=1))
    planned_ids = counting(monkeypatch, expand_module, "run_id")
    validated = counting(monkeypatch, validate_module, "validate_runs")  # plan_study imports it when called
    loop_validated = counting(monkeypatch, loop_module, "validate_runs")
    loop_ids = counting(monkeypatch, loop_module, "spec_run_id")
    seen = []
    store = Store(tmp_path / "s.db")
    result = run_study(study, store, out=lambda _: None, hooks=lambda job: seen.append(job) or [])
    assert result.executed == 4 and result.failed == 0
    assert len(planned_ids) == 4  # once per planned run (2 arms x 2 seeds), when the study was expanded
    assert len(validated) == 1 and loop_validated == [] and loop_ids == []  # the workers took both as they are
    assert all(isinstance(job.spec, RunSpec) for job in seen)  # the spec object itself, not a dict of it
    assert sorted(job.run_id for job in seen) == sorted(r.run_id for r in store.runs(study=study.study))
