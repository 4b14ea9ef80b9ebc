"""Multi-task learning: one shared encoder, a head per task, one stored run with per-task metrics.

    multitask: {tasks: [{name: rte}, {name: mrpc}, {name: sts-b}], sampler: temperature, temperature: 2}

Caruana (1997); for BERT, MT-DNN (Liu et al. 2019). Each optimizer step trains on a batch of the task
the sampler picks (train/samplers.py); each task's batches cycle through its own shuffled epochs. The
dev set of every task is scored at every evaluation; the run selects on ``joint``, the mean of the
tasks' main metrics (all must be scores, higher is better). Stored like any run: dev metrics as
``<task>.<metric>`` plus ``joint``; ``summary["tasks"]`` holds each task's dev, test and baseline.

This is its own small training function (``loop.run`` calls it when ``spec.multitask`` is set); it
reuses the loop's pieces: param groups, optimizer, schedule, freezer, evaluation and the store calls.
Not supported here (refused): distillation, gradient accumulation and checkpoint/resume.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from transferlab.data.build import build_task
from transferlab.data.metrics import baseline, higher_is_better
from transferlab.errors import SpecError
from transferlab.models.artifacts import save_weights, task_meta
from transferlab.models.backbone import load_backbone
from transferlab.models.common import seeded
from transferlab.models.model import TransferModel, build_task_head
from transferlab.models.token_heads import KIND_HEADS
from transferlab.recipes.freeze import build_freezer
from transferlab.recipes.optim import build_optimizer
from transferlab.recipes.param_groups import build_param_groups
from transferlab.recipes.schedules import build_schedule
from transferlab.records import RunResult
from transferlab.train.batches import collate, encode, epoch_batches
from transferlab.train.bookkeeping import Watch
from transferlab.train.evaluate import evaluate
from transferlab.train.fast import to_device
from transferlab.train.samplers import task_sequence
from transferlab.train.steps import (
    autocast_dtype,
    count_parameters,
    eval_schedule,
    loss_fn,
    optimizer_step,
    resolve_device,
    seed_everything,
)


class MultiTaskModel(nn.Module):
    """``backbone`` shared; ``head`` a ModuleDict by task name (parameter names ``head.<task>.*``, so
    layer-wise LR treats every head as the top layer). ``view(name)`` is a TransferModel sharing them."""

    def __init__(self, backbone, heads: dict[str, nn.Module]):
        super().__init__()
        self.backbone = backbone
        self.head = nn.ModuleDict(heads)
        self.input_adapter = None

    @property
    def num_layers(self) -> int:
        return self.backbone.num_layers

    def view(self, name: str) -> TransferModel:
        view = TransferModel.__new__(TransferModel)
        nn.Module.__init__(view)
        view.backbone, view.head, view.input_adapter = self.backbone, self.head[name], None
        view.train(self.training)
        return view


def build_multitask_model(spec, tasks: dict) -> MultiTaskModel:
    backbone = load_backbone(spec.model, seed=spec.seed)
    heads = {}
    for i, (name, task) in enumerate(tasks.items()):
        head = spec.multitask.heads.get(name) or (task.kind if task.kind in KIND_HEADS else spec.head.name)
        heads[name] = seeded(spec.seed + 101 * (i + 1), lambda h=head, t=task: build_task_head(
            h, t, backbone.hidden_size, backbone.num_layers, spec.head.dropout,
            dict(spec.head.options) if h == spec.head.name else {}, backbone.pooler))
    return MultiTaskModel(backbone, heads)


def _joint(per_task: dict[str, dict[str, float]], tasks: dict) -> float:
    return float(np.mean([per_task[n][tasks[n].main_metric] for n in tasks]))


def train_multitask(spec, store, uid: str, *, progress: bool = True, hooks=()) -> RunResult:
    tspec = spec.train
    if spec.distill.kind != "none" or tspec.grad_accum != 1 or tspec.checkpoint_every:
        raise SpecError("multitask: distill, train.grad_accum > 1 and train.checkpoint_every are not supported "
                        "in multi-task runs")
    seed_everything(spec.seed)
    device = resolve_device(tspec.device)
    amp = autocast_dtype(tspec.precision, device)
    tasks = {ts.name: build_task(ts, seed=spec.seed) for ts in spec.multitask.tasks}
    for name, task in tasks.items():
        if not higher_is_better(task.main_metric):
            raise SpecError(f"multitask.tasks: {name}'s main metric {task.main_metric} is an error; the joint "
                            "selection metric averages scores (set task.options.main_metric)")
    model = build_multitask_model(spec, tasks).to(device)
    tok = model.backbone.tokenizer
    data = {n: {s: encode(split, t, tok, spec.model.max_length) for s, split in t.splits.items()
                if split.labelled or s == "train"} for n, t in tasks.items()}
    run = _MultiTaskRun(spec, store, uid, tasks, data, model, device, amp)
    run.train(progress, hooks)
    return run.finish()


class _MultiTaskRun:
    """One multi-task run: the shared model, a batch of one task per step (train/samplers.py)."""

    def __init__(self, spec, store, uid, tasks, data, model, device, amp):
        self.spec, self.store, self.uid, self.tasks, self.data = spec, store, uid, tasks, data
        self.model, self.device, self.amp, self.tspec = model, device, amp, spec.train
        sizes = [len(data[n]["train"]) for n in tasks]
        self.per_epoch = sum(max(1, -(-s // self.tspec.batch_size)) for s in sizes)
        self.total = self.tspec.max_steps or max(1, int(np.ceil(self.tspec.epochs * self.per_epoch)))
        mt = spec.multitask
        self.order = task_sequence(sizes, self.total, mt.sampler, spec.seed, temperature=mt.temperature,
                                   anneal_min=mt.anneal_min)
        self.names = list(tasks)
        self.views = {n: model.view(n) for n in self.names}
        self.best, self.best_step, self.best_state, self.dev_at = None, None, None, {}
        self.status, self.error, self.step = "finished", None, 0

    def _evaluate(self, split: str) -> dict[str, dict[str, float]]:
        return {n: evaluate(self.views[n], self.data[n][split], self.tasks[n], self.tspec.eval_batch_size,
                            self.device, self.amp) for n in self.names if split in self.data[n]}

    def _batch(self, name: str, batches: dict, epochs: dict) -> tuple[dict, torch.Tensor]:
        index = next(batches[name], None)
        if index is None:  # this task's next epoch
            batches[name] = iter(epoch_batches(self.data[name]["train"], self.tspec.batch_size, self.spec.seed,
                                               epochs[name]))
            epochs[name] += 1
            index = next(batches[name])
        regression = self.tasks[name].problem == "regression"
        batch = to_device(collate(self.data[name]["train"], index, regression), self.device)
        return batch, batch.pop("labels")

    def train(self, progress: bool, hooks) -> None:
        spec, tspec, model, store, uid = self.spec, self.tspec, self.model, self.store, self.uid
        self.freezer = build_freezer(spec.freeze, model, self.per_epoch)
        hooks = (self.freezer, *hooks)
        optimizer = build_optimizer(build_param_groups(model, spec.optim, model.num_layers), spec.optim,
                                    self.device.type)
        scheduler = build_schedule(optimizer, spec.schedule, self.total)
        for hook in hooks:
            if hasattr(hook, "on_train_start"):
                hook.on_train_start(model, optimizer, self.total)
        self.counts = count_parameters(model)
        store.update_run(uid, n_params=self.counts[0], n_trainable=self.counts[1])
        batches, epochs = {n: iter(()) for n in self.names}, dict.fromkeys(self.names, 0)
        eval_steps = set(eval_schedule(self.total, tspec.num_evals))
        watch = Watch(1, self.device, tspec.divergence_factor)  # losses and norms stay on the device
        model.train()
        for step in tqdm(range(1, self.total + 1), desc=spec.name, disable=not progress, leave=False):
            self.step = step
            for hook in hooks:
                if hasattr(hook, "on_step_start"):
                    hook.on_step_start(step - 1)
            loss, gnorm, lr = self._step(self.names[self.order[step - 1]], batches, epochs, optimizer, scheduler)
            watch.add(loss)
            watch.step(step - 1, loss, gnorm)
            if step % tspec.log_every == 0 or step in eval_steps:  # eval_steps holds the last step
                bad = watch.log(step, lr, gnorm)  # the one host sync of the interval
                for points in watch.curve():
                    store.log_curve(uid, points)
                if bad:
                    _, bad_step, error = bad[0]
                    self.status, self.error = "diverged", f"{error} (task {self.names[self.order[bad_step - 1]]})"
                    break
            if step in eval_steps:
                self._observe(step)

    def _step(self, name: str, batches: dict, epochs: dict, optimizer, scheduler):
        """One optimizer step on one task's batch: the (1,) loss and gradient norm (on the device), the LR."""
        batch, labels = self._batch(name, batches, epochs)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            logits = self.views[name].train()(**batch)
        loss = loss_fn(logits, labels, self.tasks[name].problem == "regression")
        loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.spec.optim.max_grad_norm
        gnorm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
        lr = max(scheduler.get_last_lr())
        optimizer_step(optimizer, scheduler, None)
        return loss.detach().reshape(1), gnorm.reshape(1), lr

    def _observe(self, step: int) -> None:
        per_task = self._evaluate("dev")
        self.dev_at[step] = per_task
        joint = _joint(per_task, self.tasks)
        self.store.log_evals(self.uid, step, "dev", {**_flat(per_task), "joint": joint})
        if self.best is None or joint > self.best:
            self.best, self.best_step = joint, step
            if self.tspec.restore_best and step != self.total:
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def finish(self) -> RunResult:
        step, names, tasks, store, uid = self.step, self.names, self.tasks, self.store, self.uid
        summary: dict[str, Any] = {"steps": step, "total_steps": self.total, "main_metric": "joint",
                                   "sampler": self.spec.multitask.sampler,
                                   "task_steps": {n: int((self.order[:step] == i).sum()) for i, n in enumerate(names)}}
        if self.status != "finished":
            summary.update(error=self.error, error_step=step)
            return RunResult("", uid, self.status, {}, {}, None, step, 0.0, summary)
        final = step
        if self.tspec.restore_best and self.best_step not in (None, step) and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
            final = self.best_step
        self.freezer.on_finish(self.model)
        dev_tasks = self.dev_at.get(final) or self._evaluate("dev")
        test_tasks = self._evaluate("test")
        bases = {n: baseline(tasks[n], "dev") for n in names}
        dev = {**_flat(dev_tasks), "joint": _joint(dev_tasks, tasks)}
        test = _flat(test_tasks)
        if len(test_tasks) == len(names):
            test["joint"] = _joint(test_tasks, tasks)
            store.log_evals(uid, step, "test", test)
        store.log_evals(uid, step, "final_dev", dev)
        joint_base = _joint(bases, tasks)
        n_params, n_trainable = self.counts
        summary.update(dev=dev, test=test, best_step=final, baseline={"joint": joint_base},
                       baselines={"dev": {"joint": joint_base}}, n_params=n_params, n_trainable=n_trainable,
                       trainable_share=n_trainable / max(1, n_params),
                       tasks={n: {"dev": dev_tasks[n], "test": test_tasks.get(n, {}), "baseline": bases[n],
                                  "main_metric": tasks[n].main_metric} for n in names})
        if self.tspec.save_model:
            save_weights(self.model, store.artifact_dir(uid), {"multitask": [task_meta(t) for t in tasks.values()],
                                                               "spec": dataclasses.asdict(self.spec.multitask)})
        return RunResult("", uid, self.status, dev, test, final, step, 0.0, summary)


def _flat(per_task: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{n}.{m}": v for n, metrics in per_task.items() for m, v in metrics.items()}
