"""Multi-task learning on the Engine: one shared encoder, a head per task, one stored run with per-task metrics.

    multitask: {tasks: [{name: rte}, {name: mrpc}, {name: sts-b}], sampler: temperature, temperature: 2}

Caruana (1997); for BERT, MT-DNN (Liu et al. 2019). Each optimizer step trains on a batch of the task
the sampler picks (train/samplers.py; ``MultiTaskSource``); each task's batches cycle through its own
shuffled epochs. The dev set of every task is scored at every evaluation (``JointEvaluator``); the run
selects on ``joint``, the mean of the tasks' main metrics (all must be scores, higher is better). Stored
like any run: dev metrics as ``<task>.<metric>`` plus ``joint``; ``RunSummary.tasks`` holds each task's
dev, test and baseline, ``sampler`` and ``task_steps`` the sampling.

Only the preparation lives here (``prepare_multitask``, called by train/loop.py); the Engine
(train/engine.py) trains, so stabilisers, patience, compile, checkpoint_layers, precision, tracking and
every hook event reach multi-task runs as they reach single ones. Refused before anything is stored
(``refusal``): distillation, gradient accumulation, resumable checkpoints, and freeze policies that do
not declare ``multitask``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from transferlab.data.build import build_task
from transferlab.data.metrics import baseline, higher_is_better
from transferlab.errors import SpecError
from transferlab.models.artifacts import task_meta
from transferlab.models.multitask import build_multitask_model
from transferlab.provenance import provenance
from transferlab.records import data_sizes
from transferlab.recipes.distill import Distiller
from transferlab.recipes.freeze import FREEZERS
from transferlab.recipes.stabilisers import check_compatible
from transferlab.recipes.transplant import prepare_transfer
from transferlab.records import EngineInfo
from transferlab.spec import RunSpec, run_id
from transferlab.train.batches import collate, encode, epoch_batches
from transferlab.train.bookkeeping import SeedRun
from transferlab.train.compute import SingleTrainee
from transferlab.train.engine import Engine, plan_steps
from transferlab.train.evaluate import evaluate
from transferlab.train.fast import to_device
from transferlab.train.samplers import task_sequence
from transferlab.train.steps import loss_fn, seed_everything


def refusal(spec: RunSpec) -> str | None:
    """Why ``spec`` cannot train as a multi-task run (one line naming the field), or None."""
    tspec = spec.train
    if spec.distill.kind != "none" and not Distiller.multitask:
        return f"distill.kind: the {spec.distill.kind} hook (Distiller) does not declare 'multitask'"
    if tspec.grad_accum != 1 or tspec.checkpoint_every:
        return "multitask: train.grad_accum > 1 and train.checkpoint_every are not supported in multi-task runs"
    if not FREEZERS.supports(spec.freeze.name, "multitask"):
        return f"freeze.name: policy {spec.freeze.name!r} does not declare 'multitask'"
    return None


class MultiTaskSource:
    """A ``BatchSource``: the sampler's task order over the run's steps, each task's own shuffled epochs.
    A batch is the collated host batch with ``task``, the head it trains."""

    def __init__(self, data: dict[str, dict], tasks: dict, spec: RunSpec):
        self.data, self.tasks, self.spec, self.names = data, tasks, spec, list(tasks)
        self.sizes = [len(data[n]["train"]) for n in self.names]
        self.batches = {n: iter(()) for n in self.names}
        self.epochs = dict.fromkeys(self.names, 0)
        self.order: np.ndarray | None = None
        self.cursor = self.samples = 0

    def epoch_batches(self) -> int:
        return sum(max(1, -(-s // self.spec.train.batch_size)) for s in self.sizes)

    def plan(self, total: int) -> None:
        mt = self.spec.multitask
        self.order = task_sequence(self.sizes, total, mt.sampler, self.spec.seed, temperature=mt.temperature,
                                   anneal_min=mt.anneal_min)

    def next(self) -> dict:
        name = self.names[self.order[self.cursor]]
        self.cursor += 1
        index = next(self.batches[name], None)
        if index is None:  # this task's next epoch
            self.batches[name] = iter(epoch_batches(self.data[name]["train"], self.spec.train.batch_size,
                                                    self.spec.seed, self.epochs[name]))
            self.epochs[name] += 1
            index = next(self.batches[name])
        self.samples += len(index)
        return {"task": name, **collate(self.data[name]["train"], index, self.tasks[name].problem == "regression")}

    def state(self) -> dict[str, Any]:
        raise SpecError("train.checkpoint_every: not supported in multi-task runs")  # refused before the run

    def load(self, state: dict[str, Any]) -> None:
        raise SpecError("train.checkpoint_every: not supported in multi-task runs")

    def where(self, step: int) -> str:
        return f" (task {self.names[self.order[step - 1]]})"

    def task_steps(self, steps: int) -> dict[str, int]:
        return {n: int((self.order[:steps] == i).sum()) for i, n in enumerate(self.names)}


class JointEvaluator:
    """The ``Evaluator`` of a multi-task run: every task's metrics, flat (``<task>.<metric>``), and
    ``joint``, the mean of the tasks' main metrics, which selects."""

    main_metric, higher_is_better = "joint", True

    def __init__(self, tasks: dict, data: dict[str, dict], source: MultiTaskSource, spec: RunSpec, device, amp):
        self.tasks, self.data, self.source, self.spec, self.device, self.amp = tasks, data, source, spec, device, amp
        self.names = list(tasks)

    def per_task(self, model, split: str) -> dict[str, dict[str, float]]:
        out = {}
        for n in self.names:
            if split in self.data[n]:
                model.active = n
                out[n] = evaluate(model, self.data[n][split], self.tasks[n], self.spec.train.eval_batch_size,
                                  self.device, self.amp)
        return out

    def joint(self, per_task: dict[str, dict[str, float]]) -> float:
        return float(np.mean([per_task[n][self.tasks[n].main_metric] for n in self.names]))

    def evaluate(self, model, split: str, keep=None) -> dict[str, float]:
        per_task = self.per_task(model, split)
        flat = {f"{n}.{m}": v for n, metrics in per_task.items() for m, v in metrics.items()}
        return {**flat, "joint": self.joint(per_task)} if len(per_task) == len(self.names) else flat

    def splits(self) -> list[str]:
        return ["test"] if any("test" in self.data[n] for n in self.names) else []

    def unflat(self, flat: dict[str, float]) -> dict[str, dict[str, float]]:
        return {n: {k[len(n) + 1:]: v for k, v in flat.items() if k.startswith(f"{n}.")} for n in self.names}

    def summary(self, step: int, dev: dict, test: dict) -> dict[str, Any]:
        bases = {n: baseline(self.tasks[n], "dev") for n in self.names}
        joint_base = self.joint(bases)
        dev_tasks, test_tasks = self.unflat(dev), self.unflat(test)
        return {"baseline": {"joint": joint_base}, "baselines": {"dev": {"joint": joint_base}},
                "sampler": self.spec.multitask.sampler, "task_steps": self.source.task_steps(step),
                "data_sizes": {k: v for n in self.names for k, v in data_sizes(self.tasks[n].splits, f"{n}.").items()},
                "tasks": {n: {"dev": dev_tasks[n], "test": test_tasks[n], "baseline": bases[n],
                              "main_metric": self.tasks[n].main_metric} for n in self.names} if dev else {}}

    def meta(self) -> dict[str, Any]:
        return {"multitask": [task_meta(t) for t in self.tasks.values()],
                "spec": dataclasses.asdict(self.spec.multitask)}


class MultiTaskTrainee(SingleTrainee):
    """A SingleTrainee whose batch names its task: the head and the loss (regression or not) follow it."""

    @property
    def regression(self) -> bool:
        return self.module.regression

    @regression.setter
    def regression(self, value: bool) -> None:
        pass  # decided per batch by the active task

    def backward(self, batches: list[dict], accum: int, loss_hooks=()) -> torch.Tensor:
        self.module.active = batches[0].pop("task")
        return super().backward(batches, accum, loss_hooks)


def prepare_multitask(engine: Engine, seeds: list[SeedRun]) -> MultiTaskTrainee:
    """The tasks, the shared model, the run row, the encoded splits, the source and the evaluator."""
    spec, device, amp = engine.spec, engine.device, engine.amp
    if (why := refusal(spec)) is not None:
        raise SpecError(why)
    seed_everything(spec.seed)
    tasks = {ts.name: build_task(ts, seed=spec.seed) for ts in spec.multitask.tasks}
    for name, task in tasks.items():
        if not higher_is_better(task.main_metric):
            raise SpecError(f"multitask.tasks: {name}'s main metric {task.main_metric} is an error; the joint "
                            "selection metric averages scores (set task.options.main_metric)")
    for task in tasks.values():  # every task's problem, before the run row (recipes/stabilisers.py)
        check_compatible(spec.stabilisers, task.problem, spec.freeze.name)
    engine.problem = next(iter(tasks.values())).problem
    model = build_multitask_model(spec, tasks).to(device)
    engine.provenance = {**provenance(), "engine": EngineInfo("single", 1, False, device.type).__dict__}
    seed = SeedRun(spec, None, run_id=engine.run_ids[0] if engine.run_ids else run_id(spec))
    seeds.append(seed)
    engine.start(seed)
    seed.transfer = prepare_transfer(model, spec, engine.sink, engine.sink.artifact_dir(seed.uid))  # init, transplant
    tok = model.backbone.tokenizer
    data = {n: {s: encode(split, t, tok, spec.model.max_length) for s, split in t.splits.items()
                if split.labelled or s == "train"} for n, t in tasks.items()}
    seed.source = MultiTaskSource(data, tasks, spec)
    seed.source.plan(plan_steps(seed.source.epoch_batches(), spec.train)[1])
    seed.evaluator = JointEvaluator(tasks, data, seed.source, spec, device, amp)
    _fisher(engine, model, tasks, data, spec)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    return MultiTaskTrainee(model, device, amp, False, spec.train.compile, scaler)


def _fisher(engine: Engine, model, tasks: dict, data: dict, spec: RunSpec) -> None:
    """Child-tuning D's batches: epoch 0 of every task, in turn, each through its own head and loss."""

    def batches():
        for n, task in tasks.items():
            model.active = n
            for index in epoch_batches(data[n]["train"], spec.train.batch_size, spec.seed, 0):
                batch = to_device(collate(data[n]["train"], index, task.problem == "regression"), engine.device)
                yield batch, batch.pop("labels")

    engine.fisher_batches = batches
    engine.fisher_loss = lambda logits, labels: loss_fn(logits, labels, model.regression)
