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
from transferlab.models.backbone import load_backbone, seeded
from transferlab.models.model import TransferModel, build_task_head
from transferlab.models.token_heads import KIND_HEADS
from transferlab.recipes.freeze import build_freezer
from transferlab.recipes.optim import build_optimizer
from transferlab.recipes.param_groups import build_param_groups
from transferlab.recipes.schedules import build_schedule
from transferlab.train import loop
from transferlab.train.batches import collate, encode, epoch_batches
from transferlab.train.checkpoint import save_weights, task_meta
from transferlab.train.samplers import task_sequence


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


def train_multitask(spec, store, uid: str, *, progress: bool = True, hooks=()) -> loop.RunResult:
    mt, tspec = spec.multitask, spec.train
    if spec.distill.kind != "none" or tspec.grad_accum != 1 or tspec.checkpoint_every:
        raise SpecError("multitask: distill, train.grad_accum > 1 and train.checkpoint_every are not supported "
                        "in multi-task runs")
    loop.seed_everything(spec.seed)
    device = loop.resolve_device(tspec.device)
    amp = loop.autocast_dtype(tspec.precision, device)
    tasks = {ts.name: build_task(ts, seed=spec.seed) for ts in mt.tasks}
    for name, task in tasks.items():
        if not higher_is_better(task.main_metric):
            raise SpecError(f"multitask.tasks: {name}'s main metric {task.main_metric} is an error; the joint "
                            "selection metric averages scores (set task.options.main_metric)")
    model = build_multitask_model(spec, tasks).to(device)
    tok = model.backbone.tokenizer
    data = {n: {s: encode(split, t, tok, spec.model.max_length) for s, split in t.splits.items()
                if split.labelled or s == "train"} for n, t in tasks.items()}
    sizes = [len(data[n]["train"]) for n in tasks]
    per_epoch = sum(max(1, -(-s // tspec.batch_size)) for s in sizes)
    total = tspec.max_steps or max(1, int(np.ceil(tspec.epochs * per_epoch)))
    order = task_sequence(sizes, total, mt.sampler, spec.seed, temperature=mt.temperature, anneal_min=mt.anneal_min)

    freezer = build_freezer(spec.freeze, model, per_epoch)
    hooks = (freezer, *hooks)
    optimizer = build_optimizer(build_param_groups(model, spec.optim, model.num_layers), spec.optim, device.type)
    scheduler = build_schedule(optimizer, spec.schedule, total)
    for hook in hooks:
        if hasattr(hook, "on_train_start"):
            hook.on_train_start(model, optimizer, total)
    n_params, n_trainable = loop.count_parameters(model)
    store.update_run(uid, n_params=n_params, n_trainable=n_trainable)

    names = list(tasks)
    views = {n: model.view(n) for n in names}
    batches = {n: iter(()) for n in names}
    epochs = dict.fromkeys(names, 0)
    eval_steps = set(loop.eval_schedule(total, tspec.num_evals))
    best, best_step, best_state, curve = None, None, None, []
    dev_at: dict[int, dict[str, dict[str, float]]] = {}
    status, error = "finished", None
    model.train()
    for step in tqdm(range(1, total + 1), desc=spec.name, disable=not progress, leave=False):
        for hook in hooks:
            if hasattr(hook, "on_step_start"):
                hook.on_step_start(step - 1)
        name = names[order[step - 1]]
        index = next(batches[name], None)
        if index is None:  # this task's next epoch
            batches[name] = iter(epoch_batches(data[name]["train"], tspec.batch_size, spec.seed, epochs[name]))
            epochs[name] += 1
            index = next(batches[name])
        regression = tasks[name].problem == "regression"
        batch = loop.to_device(collate(data[name]["train"], index, regression), device)
        labels = batch.pop("labels")
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = views[name].train()(**batch)
        loss = loop.loss_fn(logits, labels, regression)
        loss.backward()
        params = [p for p in model.parameters() if p.grad is not None]
        max_norm = spec.optim.max_grad_norm
        gnorm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
        lr = max(scheduler.get_last_lr())
        loop.optimizer_step(optimizer, scheduler, None)
        if not (torch.isfinite(loss) and torch.isfinite(gnorm)):
            status, error = "diverged", f"non-finite loss or gradient at step {step} (task {name})"
            break
        curve.append((step, float(loss.detach()), lr, float(gnorm)))
        if step % tspec.log_every == 0 or step in eval_steps:
            store.log_curve(uid, curve)
            curve = []
        if step in eval_steps:
            per_task = {n: loop.evaluate(views[n], data[n]["dev"], tasks[n], tspec.eval_batch_size, device, amp)
                        for n in names}
            dev_at[step] = per_task
            joint = _joint(per_task, tasks)
            store.log_evals(uid, step, "dev", {**_flat(per_task), "joint": joint})
            if best is None or joint > best:
                best, best_step = joint, step
                if tspec.restore_best and step != total:
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if curve:
        store.log_curve(uid, curve)
    summary: dict[str, Any] = {"steps": step, "total_steps": total, "main_metric": "joint", "sampler": mt.sampler,
                               "task_steps": {n: int((order[:step] == i).sum()) for i, n in enumerate(names)}}
    if status != "finished":
        summary.update(error=error, error_step=step)
        return loop.RunResult("", uid, status, {}, {}, None, step, 0.0, summary)
    final = step
    if tspec.restore_best and best_step is not None and best_step != step and best_state is not None:
        model.load_state_dict(best_state)
        final = best_step
    freezer.finish(model)
    dev_tasks = dev_at.get(final) or {n: loop.evaluate(views[n], data[n]["dev"], tasks[n], tspec.eval_batch_size,
                                                       device, amp) for n in names}
    test_tasks = {n: loop.evaluate(views[n], data[n]["test"], tasks[n], tspec.eval_batch_size, device, amp)
                  for n in names if "test" in data[n]}
    bases = {n: baseline(tasks[n], "dev") for n in names}
    dev = {**_flat(dev_tasks), "joint": _joint(dev_tasks, tasks)}
    test = _flat(test_tasks)
    if len(test_tasks) == len(names):
        test["joint"] = _joint(test_tasks, tasks)
        store.log_evals(uid, step, "test", test)
    store.log_evals(uid, step, "final_dev", dev)
    joint_base = _joint(bases, tasks)
    summary.update(dev=dev, test=test, best_step=final, baseline={"joint": joint_base},
                   baselines={"dev": {"joint": joint_base}}, n_params=n_params, n_trainable=n_trainable,
                   trainable_share=n_trainable / max(1, n_params),
                   tasks={n: {"dev": dev_tasks[n], "test": test_tasks.get(n, {}), "baseline": bases[n],
                              "main_metric": tasks[n].main_metric} for n in names})
    if tspec.save_model:
        save_weights(model, store.artifact_dir(uid), {"multitask": [task_meta(t) for t in tasks.values()],
                                                      "spec": dataclasses.asdict(spec.multitask)})
    return loop.RunResult("", uid, status, dev, test, final, step, 0.0, summary)


def _flat(per_task: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{n}.{m}": v for n, metrics in per_task.items() for m, v in metrics.items()}
