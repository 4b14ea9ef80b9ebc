"""Intermediate-task transfer (STILTs, Phang et al. 2018): train on task A, then on task B from there.

    intermediate: {task: {name: mrpc}, steps: 1000}           # in a run spec
    grid: {intermediate: [none, {task: {name: mrpc}, steps: 1000}]}   # a study axis

Phase A is the run spec itself with ``task`` replaced by ``intermediate.task`` and ``train.max_steps``
by ``intermediate.steps`` (``intermediate.lr`` replaces ``optim.lr`` when set); it is stored as a run
of its own (named ``<name> [intermediate <task>]``; reused when it already finished, so the seeds of
a study that share phase A train it once per seed). Phase B is this run: after its model is built
(and its init/transplant steps ran), a hook loads phase A's backbone and, when carried, its head.
The loop's ``run`` trains (or reuses) phase A first, then phase B with the hook of ``carry_weights``.

``intermediate.head``: ``auto`` carries the head when both tasks have the same kind, problem and
label names (MRPC -> RTE: two classes but different names, so a new head); ``carry`` requires that,
else a one-line error before anything trains; ``new`` never carries it.
"""

from __future__ import annotations

import copy

import torch
from safetensors.torch import load_file

from transferlab.data.build import build_task
from transferlab.errors import ModelError, SpecError
from transferlab.recipes.hooks import Hook
from transferlab.spec import RunSpec, run_id


def phase_a_spec(spec: RunSpec) -> RunSpec:
    inter = spec.intermediate
    a = copy.deepcopy(spec)
    a.task, a.intermediate, a.name = copy.deepcopy(inter.task), None, f"{spec.name} [intermediate {inter.task.name}]"
    a.train.max_steps, a.train.save_model = inter.steps, True
    if inter.lr is not None:
        a.optim.lr = inter.lr
    return a


def intermediate_run_id(spec: RunSpec) -> str:
    """The run id of phase A of ``spec`` (how a phase-B run finds its intermediate run in the store)."""
    return run_id(phase_a_spec(spec))


def same_labels(a, b) -> bool:
    return (a.kind, a.problem, a.num_outputs, a.label_names) == (b.kind, b.problem, b.num_outputs, b.label_names)


def carry_head(spec: RunSpec) -> bool:
    """Whether phase A's head goes on to phase B; a SpecError when ``head: carry`` cannot be honoured."""
    mode = spec.intermediate.head
    if mode == "new":
        return False
    a, b = build_task(spec.intermediate.task, seed=spec.seed), build_task(spec.task, seed=spec.seed)
    if same_labels(a, b):
        return True
    if mode == "carry":
        raise SpecError(f"intermediate.head: carry needs the same labels in both tasks; {a.name} has "
                        f"{a.label_names or a.problem} ({a.num_outputs} outputs), {b.name} has "
                        f"{b.label_names or b.problem} ({b.num_outputs} outputs); use head: auto or new")
    return False


class CarryWeights(Hook):
    """Loads phase A's weights (backbone and input layer, and the head when ``head``) at train start."""

    name = "intermediate"

    def __init__(self, folder, head: bool, source: str):
        self.folder, self.head, self.source = folder, head, source

    def on_train_start(self, model, optimizer, total_steps) -> None:
        path = self.folder / "model.safetensors"
        if not path.is_file():
            raise ModelError(f"intermediate: phase A run {self.source} saved no weights at {path}")
        state = load_file(str(path))
        prefixes = ("backbone.", "input_adapter.", *(("head.",) if self.head else ()))
        own = model.state_dict()
        keep = {k: v for k, v in state.items() if k.startswith(prefixes)}
        bad = [k for k, v in keep.items() if k not in own or own[k].shape != v.shape]
        if bad:
            raise ModelError(f"intermediate: phase A's {bad[0]} does not fit this model (was the backbone or the "
                             f"freeze policy changed between the phases?)")
        with torch.no_grad():
            for k, v in keep.items():
                own[k].copy_(v)


def phase_a(spec: RunSpec) -> tuple[RunSpec, bool]:
    """Phase A's spec and whether its head goes on to phase B, checked before phase A trains."""
    if spec.multitask is not None:
        raise SpecError("intermediate: not combinable with multitask in one run")
    return phase_a_spec(spec), carry_head(spec)


def carry_weights(spec: RunSpec, store, result, head: bool) -> CarryWeights:
    """The hook that starts phase B from phase A's stored run (``result``: the loop ran or reused it)."""
    if result.status not in ("finished", "skipped"):
        raise ModelError(f"intermediate: phase A ({spec.intermediate.task.name}) ended {result.status}")
    return CarryWeights(store.artifact_dir(result.uid), head, result.uid)
