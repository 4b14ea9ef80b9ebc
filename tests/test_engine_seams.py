"""The Engine's declared seams (issue 23): one loop, protocols the parts satisfy, an Event enum, typed
capability flags whose typos raise."""

from __future__ import annotations

import dataclasses
import enum
import inspect
import re
from pathlib import Path

import pytest

from transferlab.recipes.freeze import FREEZERS
from transferlab.recipes.hooks import Event, Hook
from transferlab.recipes.optim import OPTIMIZERS
from transferlab.recipes.stabilisers import STABILISERS
from transferlab.registry import Registry
from transferlab.train import engine as eng

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "transferlab"
# an optimizer or grad scaler stepped, or the engine's one update function called
STEP = re.compile(r"\b(optimizer|optim|opt|scaler)\.step\(|\boptimizer_step\(")
# report/plots.py (study/plots.py before the move) draws a schedule's LR curve on a throwaway optimizer:
# it trains nothing
NOT_TRAINING = {"plots.py"}


def test_optimizer_steps_are_driven_from_the_engine_only():
    """Acceptance 1: a grep over the package's source finds optimizer steps in train/engine.py only."""
    found = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                   if p.name not in NOT_TRAINING and STEP.search(p.read_text()))
    assert found == ["train/engine.py"]
    for path in (PACKAGE / "train" / "multitask.py", PACKAGE / "pretrain" / "mlm.py",
                 PACKAGE / "pretrain" / "masked_inputs.py", PACKAGE / "pretrain" / "objective.py"):
        text = path.read_text()
        assert "get_last_lr" not in text and "clip_grad_norm_" not in text, path  # no loop of their own
        assert not re.search(r"for step in range|while step <", text), path


def test_the_grep_would_catch_a_second_loop():
    assert STEP.search("        optimizer.step()\n") and STEP.search("scaler.step(opt)")
    assert STEP.search("optimizer_step(self.optimizer, self.scheduler, None)")
    assert not STEP.search("self.watch.step(step, losses, norms)")


def _signature_compatible(impl, proto_fn) -> list[str]:
    """Every parameter the protocol passes is accepted by ``impl`` under the same name and kind."""
    got = inspect.signature(impl).parameters
    problems = []
    for name, p in list(inspect.signature(proto_fn).parameters.items())[1:]:
        if name not in got and not any(q.kind == q.VAR_KEYWORD for q in got.values()):
            problems.append(f"{impl.__qualname__}: no parameter {name!r}")
        elif name in got and got[name].kind != p.kind and p.kind != p.POSITIONAL_OR_KEYWORD:
            problems.append(f"{impl.__qualname__}: {name!r} is {got[name].kind}, protocol {p.kind}")
    return problems


def _protocol_methods(proto) -> list[str]:
    return [n for n, v in vars(proto).items() if callable(v) and not n.startswith("_")]


@pytest.mark.parametrize("sink", ["Store", "Recorder", "MemorySink"])
def test_sinks_satisfy_run_sink(sink, tmp_path):
    """Acceptance 4: Store, Recorder (a worker's) and MemorySink (pretraining) implement every RunSink method
    with a compatible signature, and are RunSink instances (runtime_checkable)."""
    from transferlab.recorder import Recorder
    from transferlab.store import Store

    cls = {"Store": Store, "Recorder": Recorder, "MemorySink": eng.MemorySink}[sink]
    methods = _protocol_methods(eng.RunSink)
    assert set(methods) >= {"start_run", "finish_run", "update_run", "log_evals", "log_curve", "artifact_dir"}
    problems = [f"missing {m}" for m in methods if not hasattr(cls, m)]
    problems += [x for m in methods if hasattr(cls, m) for x in _signature_compatible(getattr(cls, m),
                                                                                      getattr(eng.RunSink, m))]
    assert problems == []
    obj = {"Store": lambda: Store(tmp_path / "s.db"), "Recorder": lambda: Recorder({}, None),
           "MemorySink": lambda: eng.MemorySink(tmp_path)}[sink]()
    assert isinstance(obj, eng.RunSink)


def test_the_engine_calls_only_what_run_sink_declares():
    """RunSink holds exactly the sink methods the engine (and the checkpoints it resumes from) call."""
    from transferlab.models import artifacts

    called = set(re.findall(r"self\.sink\.(\w+)\(", inspect.getsource(eng.Engine)))
    called |= set(re.findall(r"store\.(\w+)\(", inspect.getsource(artifacts.find_resume)
                             + inspect.getsource(artifacts.carry_history) + inspect.getsource(artifacts.checkpoint_path)))
    assert called == set(_protocol_methods(eng.RunSink))


def test_every_trainee_source_and_evaluator_satisfies_its_protocol():
    from transferlab.pretrain.objective import HeldoutEvaluator, IndexSource, ObjectiveTrainee
    from transferlab.train.compute import FusedTrainee, SingleTrainee, StackedTrainee
    from transferlab.train.evaluate import TaskEvaluator
    from transferlab.train.multitask import JointEvaluator, MultiTaskSource, MultiTaskTrainee
    from transferlab.train.sources import TaskSource

    table = {eng.Trainee: [SingleTrainee, StackedTrainee, FusedTrainee, MultiTaskTrainee, ObjectiveTrainee],
             eng.BatchSource: [TaskSource, MultiTaskSource, IndexSource],
             eng.Evaluator: [TaskEvaluator, JointEvaluator, HeldoutEvaluator]}
    problems = []
    for proto, classes in table.items():
        members = _protocol_methods(proto) + [n for n in getattr(proto, "__annotations__", {})]
        for cls in classes:
            for m in members:
                inits = "".join(inspect.getsource(c.__init__) for c in cls.__mro__ if c is not object and "__init__" in vars(c))
                if not (hasattr(cls, m) or f"self.{m}" in inits or f".{m} =" in inits):  # set in __init__
                    problems.append(f"{cls.__name__} lacks {proto.__name__}.{m}")
            for m in _protocol_methods(proto):
                if inspect.isfunction(getattr(cls, m, None)):
                    problems += _signature_compatible(getattr(cls, m), getattr(proto, m))
    assert problems == []


def test_hook_events_are_an_enum_the_engine_runs_by_member():
    """Acceptance 4: hook events are Event members; each names a Hook method (on_loss: the trainee's); the
    engine calls hooks through ``run_event(Event.X)``, never by a string."""
    assert issubclass(Event, enum.Enum) and len(Event) == 10
    for event in Event:
        assert event is Event.LOSS or callable(getattr(Hook, event.value)), event
    source = inspect.getsource(eng)
    assert not re.search(r"run_event\(\s*['\"]", source) and not re.search(r"_call\(\s*['\"]on_", source)
    used = set(re.findall(r"Event\.([A-Z_]+)", source))
    assert used == {e.name for e in Event}  # the engine runs every event


def test_unknown_capability_flag_raises_at_registration_and_at_supports():
    """Acceptance 4: a typo in a flag is an error, never a silent 'not supported'."""
    with pytest.raises(ValueError, match="unknown capability flag 'seed_stackd'"):
        FREEZERS.register("typo_policy", seed_stackd=True)
    assert "typo_policy" not in FREEZERS
    with pytest.raises(KeyError, match="unknown capability flag 'elementwsie'"):
        OPTIMIZERS.supports("adamw", "elementwsie")
    assert OPTIMIZERS.supports("adamw", "elementwise") is True
    with pytest.raises(ValueError, match="declares: none"):
        Registry("plain").register("x", fused=True)
    with pytest.raises(TypeError):
        Registry("bad", caps=dict)


def test_capabilities_are_typed_per_kind_and_every_flag_is_read():
    """Every flag a kind declares is read somewhere in the package (no unread flags such as adds_modules)."""
    source = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py") if p.name != "registry.py")
    for registry in (FREEZERS, OPTIMIZERS, STABILISERS):
        assert dataclasses.is_dataclass(registry.caps_type) and registry.flags
        for flag in registry.flags:
            assert re.search(rf"""["']{flag}["']|\.{flag}\b""", source.replace(f"{flag}: ", "")), (registry.kind, flag)
    assert "adds_modules" not in source and "stackable=family" not in source
