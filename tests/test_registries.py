"""Every registered part has an entry in its settings table, is exercised by it, and is named in a
method card (docs/methods). A new part is one function, one decorator and one row here."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import transferlab  # noqa: F401  (registers every part)
from transferlab.data.build import _register_tasks
from transferlab.data.metrics import METRICS
from transferlab.data.task import TASKS
from transferlab.models.heads import HEADS
from transferlab.models.schema import SCHEMAS
from transferlab.recipes.freeze import FREEZERS
from transferlab.recipes.init import INIT_SCHEMES
from transferlab.recipes.optim import OPTIMIZERS
from transferlab.recipes.schedules import SCHEDULES
from transferlab.recipes.stabilisers import STABILISERS
from transferlab.study.executors import EXECUTORS
import transferlab.study.ray_executor  # noqa: F401,E402  (registers the ray executor, as study/runner.py does)

_register_tasks()
CARDS = "\n".join(p.read_text() for p in (Path(__file__).resolve().parents[1] / "docs" / "methods").glob("*.md"))

# one row per registered name: what a quick check of that part needs (None: covered by the named test file)
OPTIMIZER_SETTINGS = {"adamw": {}, "bertadam": {}, "adabelief": {}, "sgd": {"lr": 0.1}}
SCHEDULE_SETTINGS = {"constant": {}, "constant_with_warmup": {}, "linear": {}, "cosine": {}, "slanted_triangular": {}}
FREEZER_SETTINGS = {"none": {}, "backbone_for_steps": {"steps": 2}, "fpt": {}, "gradual": {}, "linear_probe": {},
                    "bitfit": {}, "lora": {}}
INIT_SETTINGS = {"pretrained": {}, "normal": {"std": 0.02}, "xavier_uniform": {}, "xavier_normal": {},
                 "kaiming_uniform": {}, "kaiming_normal": {}, "uniform": {"a": 0.05}, "zero_bias": {},
                 "layernorm": {}}
STABILISER_SETTINGS = {"mixout": {"p": 0.1}, "l2sp": {"strength": 0.01}, "child_tuning_f": {},
                       "child_tuning_d": {}, "r3f": {}, "ema": {}, "swa": {}}
HEAD_SETTINGS = {name: "tests/test_heads.py" for name in HEADS.primary_names()}
FAMILY_SETTINGS = {name: "tests/test_families.py, tests/test_schema.py" for name in SCHEMAS.primary_names()}
TASK_SETTINGS = {name: "tests/test_data.py, tests/test_fpt_tasks.py, tests/test_hub_task.py"
                 for name in TASKS.primary_names()}
METRIC_SETTINGS = {name: "tests/test_metrics.py" for name in METRICS.primary_names()}
EXECUTOR_SETTINGS = {"inline": {}, "processes": {}, "ray": "tests/test_executors.py"}

TABLES = [(OPTIMIZERS, OPTIMIZER_SETTINGS), (SCHEDULES, SCHEDULE_SETTINGS), (FREEZERS, FREEZER_SETTINGS),
          (INIT_SCHEMES, INIT_SETTINGS), (STABILISERS, STABILISER_SETTINGS), (HEADS, HEAD_SETTINGS),
          (SCHEMAS, FAMILY_SETTINGS), (TASKS, TASK_SETTINGS), (METRICS, METRIC_SETTINGS),
          (EXECUTORS, EXECUTOR_SETTINGS)]


@pytest.mark.parametrize("registry,table", TABLES, ids=[r.kind for r, _ in TABLES])
def test_every_registered_part_has_a_settings_row(registry, table):
    assert sorted(table) == registry.primary_names(), f"{registry.kind}: add a row for each new part"


@pytest.mark.parametrize("registry", [r for r, _ in TABLES], ids=[r.kind for r, _ in TABLES])
def test_every_registered_name_is_in_a_method_card(registry):
    def named(name: str) -> bool:  # inside a code span, as a whole word
        return re.search(r"`[^`\n]*(?<![\w-])" + re.escape(name) + r"(?![\w-])[^`\n]*`", CARDS) is not None

    assert [n for n in registry.primary_names() if not named(n)] == []


def test_the_card_check_would_see_a_missing_name():
    assert re.search(r"`[^`\n]*(?<![\w-])" + re.escape("no_such_part") + r"(?![\w-])[^`\n]*`", CARDS) is None


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))


@pytest.mark.parametrize("name", sorted(OPTIMIZER_SETTINGS))
def test_each_optimizer_lowers_a_loss_and_declares_elementwise(name):
    from transferlab.spec import OptimSpec

    model = _tiny_model()
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    opt = OPTIMIZERS.get(name)([{"params": list(model.parameters())}],
                               OptimSpec(name=name, lr=OPTIMIZER_SETTINGS[name].get("lr", 1e-2)), "cpu")
    first = None
    for _ in range(20):
        loss = nn.functional.cross_entropy(model(x), y)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < first
    assert OPTIMIZERS.supports(name, "elementwise")  # every optimizer here may train stacked seeds


@pytest.mark.parametrize("name", sorted(SCHEDULE_SETTINGS))
def test_each_schedule_warms_up_and_stays_in_range(name):
    from transferlab.spec import ScheduleSpec

    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    from transferlab.recipes.schedules import build_schedule

    assert callable(SCHEDULES.get(name))

    sched = build_schedule(opt, ScheduleSpec(name=name, warmup_steps=5), 50)
    lrs = []
    for _ in range(50):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert all(0.0 <= lr <= 1.0 + 1e-9 for lr in lrs) and max(lrs) > lrs[0]


@pytest.mark.parametrize("name", sorted(INIT_SETTINGS))
def test_each_init_scheme_is_registered_with_its_options(name):
    scheme = INIT_SCHEMES.get(name)
    assert callable(scheme.fill) and set(INIT_SETTINGS[name]) <= set(scheme.options)


@pytest.mark.parametrize("name", sorted(FREEZER_SETTINGS))
def test_each_freezer_declares_what_the_engine_reads(name):
    from transferlab.recipes.freeze import FreezerCaps

    caps = FREEZERS.caps(name)
    assert isinstance(caps, FreezerCaps)  # typed: the engine reads fields, never free strings
    assert caps.seed_stacked == (name != "lora")  # LoRA adds modules, which a StackedModel cannot hold


@pytest.mark.parametrize("name", sorted(STABILISER_SETTINGS))
def test_each_stabiliser_builds_from_its_settings(name):
    from transferlab.recipes.stabilisers import build_stabilisers
    from transferlab.spec import StabiliserSpec

    (hook,) = build_stabilisers([StabiliserSpec(name=name, options=STABILISER_SETTINGS[name])],
                                problem="classification", freeze="none", seed=0, device=torch.device("cpu"),
                                batches=lambda: iter(()), loss=lambda logits, labels: logits.sum())
    from transferlab.recipes.stabilisers import StabiliserCaps

    caps = STABILISERS.caps(name)
    assert isinstance(caps, StabiliserCaps) and caps.problems  # declared, not defaulted
    assert hook.name == name


@pytest.mark.parametrize("name", sorted(n for n, v in EXECUTOR_SETTINGS.items() if isinstance(v, dict)))
def test_each_local_executor_runs_a_trivial_job_list(name):
    executor = EXECUTORS.get(name)(workers=1)
    try:
        assert list(executor.map([])) == []
    finally:
        executor.close()


def test_metrics_match_their_direction_on_a_perfect_prediction():
    from transferlab.data.metrics import compute

    labels = np.array([0, 1, 1, 0, 1])
    for name in METRICS.primary_names():
        metric = METRICS.get(name)
        preds = labels.astype(float) if metric.regression else labels
        for key, value in compute([name], preds, labels.astype(float) if metric.regression else labels, 2).items():
            assert value == pytest.approx(1.0 if metric.higher_is_better else 0.0), key
