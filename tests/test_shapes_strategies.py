"""Existing strategies on token and span tasks: each trains a few steps and scores with the task's metrics."""

from __future__ import annotations

import pytest
from conftest import needs_shared_data
from test_shapes_parallel import conll_subset, squad_subset

from transferlab.spec import load_spec
from transferlab.store import Store
from transferlab.train.loop import run

pytestmark = [pytest.mark.usefixtures("one_thread"), needs_shared_data]

STRATEGIES = {
    "reinit-top": {"init": {"reinit_layers": 1}},
    "layer-decay": {"optim": {"lr": 3e-3, "layer_decay": 0.8}},
    "bitfit": {"freeze": {"name": "bitfit"}},
    "lora": {"freeze": {"name": "lora"}},
    "gradual": {"freeze": {"name": "gradual", "options": {"every_steps": 1}}},
    "fpt": {"freeze": {"name": "fpt"}},
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return {"token": conll_subset(root / "c"), "span": squad_subset(root / "s")}


@pytest.mark.parametrize("kind", ["token", "span"])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_strategy_runs_on_task_shape(kind, strategy, folders, tmp_path):
    task = ({"name": "conll2003", "path": str(folders["token"])} if kind == "token" else
            {"name": "squad", "path": str(folders["span"]), "options": {"dev_articles": 0.5}})
    spec = {"name": f"{kind}-{strategy}", "model": {"name": "tiny-bert", "max_length": 48}, "head": {"name": kind},
            "task": task, "optim": {"lr": 3e-3},
            "train": {"max_steps": 3, "batch_size": 8, "num_evals": 1, "log_every": 1}, **STRATEGIES[strategy]}
    store = Store(tmp_path / "s.db")
    result = run(load_spec(spec), store, progress=False)
    assert result.status == "finished", result.summary
    assert ("entity_f1" if kind == "token" else "span_f1") in result.dev
    curve = store.curve(result.uid)
    assert len(curve) == 3 and all(loss == loss for _, loss, _, _ in curve)  # finite, logged each step


@pytest.mark.parametrize("kind", ["token", "span"])
def test_distillation_on_task_shapes(kind, folders, tmp_path):
    task = ({"name": "conll2003", "path": str(folders["token"])} if kind == "token" else
            {"name": "squad", "path": str(folders["span"]), "options": {"dev_articles": 0.5}})
    spec = {"name": "teacher", "model": {"name": "tiny-bert", "max_length": 48}, "head": {"name": kind}, "task": task,
            "optim": {"lr": 3e-3}, "train": {"max_steps": 3, "batch_size": 8, "num_evals": 1, "log_every": 1}}
    store = Store(tmp_path / "s.db")
    teacher = run(load_spec(spec), store, progress=False)
    for kd in ("kd", "pkd"):
        student = run(load_spec({**spec, "name": kd, "distill": {"kind": kd, "teacher": teacher.uid}}), store,
                      progress=False)
        assert student.status == "finished" and all(loss == loss for _, loss, _, _ in store.curve(student.uid))
