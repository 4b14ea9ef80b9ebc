"""The loop for one run: data -> model -> optimizer + schedule -> train, evaluate, store.

    result = run(load_spec("spec.yaml"), store=Store("runs/transferlab.db"))

The hot path does no host synchronisation per step: losses, gradient norms and the
first non-finite step are kept on the device and read once per logging interval.
"""

from __future__ import annotations

import math
import random
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from transferlab.data.build import build_task
from transferlab.data.metrics import baseline, compute, higher_is_better
from transferlab.data.task import Task
from transferlab.errors import UserError
from transferlab.models.model import TransferModel, build_model
from transferlab.provenance import provenance
from transferlab.recipes.distill import build_distiller
from transferlab.recipes.freeze import build_freezer
from transferlab.recipes.optim import build_optimizer
from transferlab.recipes.param_groups import build_param_groups
from transferlab.recipes.schedules import build_schedule
from transferlab.recipes.transplant import prepare_transfer
from transferlab.spec import RunSpec, run_id, spec_hash, to_dict
from transferlab.store import DEFAULT_STORE, Store
from transferlab.study.degenerate import constant_baselines
from transferlab.train import resume as ckpt
from transferlab.train.batches import Encoded, collate, encode, epoch_batches, eval_batches
from transferlab.train.checkpoint import save_weights, task_meta
from transferlab.train.fast import compiled, to_device
from transferlab.train.shapes import shape_of


class Hook(Protocol):
    """What a strategy (freezing, unfreezing, ...) may do inside the loop. All methods optional."""

    def on_train_start(self, model: TransferModel, optimizer: torch.optim.Optimizer, total_steps: int) -> None: ...

    def on_step_start(self, step: int) -> None: ...

    def on_loss(self, batch: dict[str, torch.Tensor], labels: torch.Tensor, logits: torch.Tensor,
                loss: torch.Tensor) -> torch.Tensor: ...  # the training loss of a micro-batch, replaced


@dataclass
class RunResult:
    run_id: str
    uid: str
    status: str  # finished | diverged | failed | skipped
    dev: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    best_step: int | None = None
    steps: int = 0
    duration_s: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device: {name!r} asked for but CUDA is not available here; use 'cpu' or 'auto'")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    return torch.bfloat16  # auto and bf16


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    if regression:
        return F.mse_loss(logits.squeeze(-1).float(), labels)
    if logits.dim() == 3:  # per-token outputs (bit tasks): (B, L, C) against (B, L) labels
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
    return F.cross_entropy(logits.float(), labels)


def step_plan(n_train: int, tspec) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps) for ``n_train`` examples under ``train:``."""
    per_epoch = max(1, math.ceil(math.ceil(n_train / tspec.batch_size) / tspec.grad_accum))
    return per_epoch, tspec.max_steps or max(1, math.ceil(tspec.epochs * per_epoch))


def eval_schedule(total: int, num_evals: int) -> list[int]:
    """The steps with a dev evaluation: ``num_evals`` evenly spread, and always the last step."""
    return sorted({max(1, round(total * (i + 1) / num_evals)) for i in range(num_evals)} | {total})


def optimizer_step(optimizer, scheduler, scaler) -> None:
    """One update: through the fp16 grad scaler when there is one, then the schedule; grads dropped."""
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return to_device(batch, device)  # pinned and non-blocking on CUDA


@torch.no_grad()
def predict(model: TransferModel, enc: Encoded, task: Task, batch_size: int, device: torch.device,
            amp: torch.dtype | None = None, desc: str | None = None) -> np.ndarray:
    """Predictions in row order: class ids, or floats for regression. ``desc``: show a progress bar."""
    was_training = model.training
    model.eval()
    regression = task.problem == "regression"
    out = np.zeros(enc.labels.shape, dtype=np.float32 if regression else np.int64)  # (N, L) for per-token tasks
    batches = eval_batches(enc, batch_size)
    for index in tqdm(batches, desc=desc, unit="batch", leave=False, disable=desc is None, dynamic_ncols=True):
        batch = _to(collate(enc, index, regression), device)
        batch.pop("labels")
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(**batch)
        pred = logits.squeeze(-1).float() if regression else logits.argmax(-1)
        out[index] = pred.cpu().numpy()
    model.train(was_training)
    return out


def evaluate(model, enc: Encoded, task: Task, batch_size: int, device, amp=None,
             desc: str | None = None) -> dict[str, float]:
    if (shape := shape_of(task)) is not None:  # token and span tasks decode and score their own way
        return shape.evaluate(model, enc, task, batch_size, device, amp, desc)
    preds = predict(model, enc, task, batch_size, device, amp, desc)
    return compute(task.metrics, preds, enc.labels)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def run(spec: RunSpec, store: Store | None = None, *, study: str | None = None, force: bool = False,
        progress: bool = True, hooks: list | tuple = ()) -> RunResult:
    """Train and evaluate one run and store it. A finished run with the same id is reused unless ``force``."""
    store = store or Store(DEFAULT_STORE)
    rid = run_id(spec)
    if not force and (done := store.finished(rid)) is not None:
        s = done.summary
        return RunResult(rid, done.uid, "skipped", s.get("dev", {}), s.get("test", {}), s.get("best_step"),
                         s.get("steps", 0), done.duration_s or 0.0, s)
    if spec.intermediate is not None:  # phase A: a stored run of its own, carried into this one by a hook
        from transferlab.train.intermediate import intermediate_phase

        hooks = (*hooks, intermediate_phase(spec, store, study=None, progress=progress))
    uid = store.start_run(rid, spec_hash(spec), spec.seed, to_dict(spec), name=spec.name, study=study,
                          provenance=provenance())
    start = time.time()
    try:
        if spec.multitask is not None:  # one shared encoder, a head per task (train/multitask.py)
            from transferlab.train.multitask import train_multitask

            result = train_multitask(spec, store, uid, progress=progress, hooks=hooks)
        else:
            result = _train(spec, store, uid, progress=progress, hooks=hooks)
    except UserError as e:
        store.finish_run(uid, "failed", error=str(e), duration_s=time.time() - start)
        raise
    except KeyboardInterrupt:
        store.finish_run(uid, "failed", error="interrupted (KeyboardInterrupt)", duration_s=time.time() - start)
        raise
    except Exception:
        store.finish_run(uid, "failed", error=traceback.format_exc(limit=8), duration_s=time.time() - start)
        raise
    result.run_id, result.uid = rid, uid
    result.duration_s = time.time() - start
    store.finish_run(uid, result.status, summary=result.summary, duration_s=result.duration_s,
                     error=result.summary.get("error"), error_step=result.summary.get("error_step"))
    return result


def _train(spec: RunSpec, store: Store, uid: str, *, progress: bool, hooks) -> RunResult:
    tspec = spec.train
    seed_everything(spec.seed)
    device = resolve_device(tspec.device)
    amp = autocast_dtype(tspec.precision, device)
    task = build_task(spec.task, seed=spec.seed)
    regression = task.problem == "regression"

    model = build_model(spec, task)
    transfer = prepare_transfer(model, spec, store, store.artifact_dir(uid))  # init, then transplant steps
    model = model.to(device)
    tokenizer = model.backbone.tokenizer
    data = {name: encode(split, task, tokenizer, spec.model.max_length)
            for name, split in task.splits.items() if split.labelled or name == "train"}
    train_enc, dev_enc = data["train"], data["dev"]

    steps_per_epoch, total = step_plan(len(train_enc), tspec)
    freezer = build_freezer(spec.freeze, model, steps_per_epoch)  # before the optimizer: LoRA adds parameters
    distiller = build_distiller(spec, model, task, store)  # None unless spec.distill names a teacher
    hooks = (freezer, *([distiller] if distiller else []), *hooks)
    loss_hooks = [h for h in hooks if hasattr(h, "on_loss")]
    groups = build_param_groups(model, spec.optim, model.num_layers)
    optimizer = build_optimizer(groups, spec.optim, device.type)
    scheduler = build_schedule(optimizer, spec.schedule, total)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    for hook in hooks:
        if hasattr(hook, "on_train_start"):
            hook.on_train_start(model, optimizer, total)
    n_params, n_trainable = count_parameters(model)
    store.update_run(uid, n_params=n_params, n_trainable=n_trainable)

    eval_steps = eval_schedule(total, tspec.num_evals)
    main, better = task.main_metric, higher_is_better(task.main_metric)
    best_value, best_step, best_state, since_best = None, None, None, 0
    dev_at: dict[int, dict[str, float]] = {}  # dev metrics by step: evaluation is deterministic, so reusable
    status, error, error_step = "finished", None, None

    curve_buf: list[tuple[int, torch.Tensor, float, torch.Tensor]] = []
    loss_sum = torch.zeros((), device=device)
    loss_n = 0
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    exploded = torch.full((), -1, dtype=torch.long, device=device)  # first log step with a loss explosion
    first_loss = None
    bar = tqdm(total=total, desc=spec.name, unit="step", disable=not progress, leave=False, dynamic_ncols=True)
    eval_desc = f"{spec.name} dev" if progress else None

    model.train()
    if tspec.compile and hasattr(model.backbone, "use_layer_loop"):  # not the LSTM baseline
        model.backbone.use_layer_loop()  # BERT family: one unbroken graph (models/backbone.layer_loop)
    forward = compiled(model, tspec.compile)  # torch.compile with an eager fallback (train/fast.py)
    step, epoch, pos = 0, 0, 0  # pos: micro-batches consumed in the current epoch
    micro = iter(())
    ck_path = ckpt.checkpoint_path(store, uid)
    ck_parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler, "freezer": freezer}
    if (resume := ckpt.find_resume(store, run_id(spec), uid)) is not None:
        st = ckpt.load_checkpoint(resume[1], **ck_parts)
        step, epoch, pos, best_value, best_step, since_best, best_state, first_loss, loss_n = (
            st[k] for k in ("step", "epoch", "pos", "best_value", "best_step", "since_best", "best_state",
                            "first_loss", "loss_n"))
        loss_sum = st["loss_sum"].to(device)
        if epoch:
            micro = iter(epoch_batches(train_enc, tspec.batch_size, spec.seed, epoch - 1, tspec.length_bucketing)[pos:])
        ckpt.carry_history(store, resume[0], uid, step)
        bar.update(step)
    while step < total:
        for hook in hooks:
            if hasattr(hook, "on_step_start"):
                hook.on_step_start(step)
        for _ in range(tspec.grad_accum):
            index = next(micro, None)
            if index is None:
                micro = iter(epoch_batches(train_enc, tspec.batch_size, spec.seed, epoch, tspec.length_bucketing))
                epoch, pos = epoch + 1, 0
                index = next(micro)
            pos += 1
            batch = _to(collate(train_enc, index, regression), device)
            labels = batch.pop("labels")
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = forward(**batch)
            loss = loss_fn(logits, labels, regression)
            for hook in loss_hooks:  # e.g. distillation: mixes the teacher's targets in
                loss = hook.on_loss(batch, labels, logits, loss)
            loss = loss / tspec.grad_accum
            (scaler.scale(loss) if scaler else loss).backward()
            loss_sum += loss.detach()
        loss_n += 1
        if scaler:
            scaler.unscale_(optimizer)
        params = [p for p in model.parameters() if p.grad is not None]
        max_norm = spec.optim.max_grad_norm
        gnorm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
        lr = max(scheduler.get_last_lr())
        bad = ~torch.isfinite(loss.detach()) | ~torch.isfinite(gnorm)
        first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, step + 1), first_bad)
        optimizer_step(optimizer, scheduler, scaler)
        step += 1
        bar.update(1)

        if step % tspec.log_every == 0 or step in eval_steps:
            mean_loss = loss_sum / loss_n
            curve_buf.append((step, mean_loss, lr, gnorm.detach()))
            loss_sum, loss_n = torch.zeros((), device=device), 0
            if tspec.divergence_factor:  # loss explosion, decided on the device like first_bad
                first_loss = mean_loss if first_loss is None else first_loss
                boom = mean_loss > tspec.divergence_factor * first_loss.clamp_min(1e-3)
                exploded = torch.where(boom & (exploded < 0), torch.full_like(exploded, step), exploded)
            bad_step, boom_step = torch.stack([first_bad, exploded]).tolist()  # one host sync per interval
            if bad_step >= 0 or boom_step >= 0:
                status, error_step = "diverged", bad_step if bad_step >= 0 else boom_step
                error = (f"non-finite loss or gradient at step {bad_step}" if bad_step >= 0 else
                         f"loss exploded at step {boom_step}: {float(mean_loss):.4g} > {tspec.divergence_factor:g}"
                         f" x the first logged loss {float(first_loss):.4g}")
                _flush_curve(store, uid, curve_buf)
                break
        if step in eval_steps:
            _flush_curve(store, uid, curve_buf, bar)
            metrics = evaluate(model, dev_enc, task, tspec.eval_batch_size, device, amp, eval_desc)
            dev_at[step] = metrics
            store.log_evals(uid, step, "dev", metrics)
            value = metrics[main]
            improved = best_value is None or (value > best_value if better else value < best_value)
            if improved:
                best_value, best_step, since_best = value, step, 0
                if tspec.restore_best and step != total:
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                since_best += 1
                if tspec.early_stopping_patience is not None and since_best >= tspec.early_stopping_patience:
                    break
        if tspec.checkpoint_every and step % tspec.checkpoint_every == 0 and step < total:
            _flush_curve(store, uid, curve_buf)
            ckpt.save_checkpoint(ck_path, **ck_parts, loop={
                "step": step, "epoch": epoch, "pos": pos, "best_value": best_value, "best_step": best_step,
                "since_best": since_best, "best_state": best_state, "first_loss": first_loss, "loss_sum": loss_sum,
                "loss_n": loss_n})
    bar.close()
    n_trainable_final = count_parameters(model)[1]

    summary: dict[str, Any] = {"steps": step, "total_steps": total, "main_metric": main}
    if status == "diverged":
        summary.update(error=error, error_step=error_step)
    if tspec.restore_best and best_step is not None and best_step != step and best_state is not None:
        model.load_state_dict(best_state)
        final_step = best_step
    else:
        final_step = step
    freezer.finish(model)  # LoRA: adapters merged into the weights, so the stored model is a plain one
    dev = {}
    if status == "finished":  # the weights in place were evaluated at final_step already: reuse those metrics
        dev = dev_at.get(final_step) or evaluate(model, dev_enc, task, tspec.eval_batch_size, device, amp, eval_desc)
    test = {}
    if status == "finished" and "test" in data:
        test = evaluate(model, data["test"], task, tspec.eval_batch_size, device, amp,
                        f"{spec.name} test" if progress else None)
        store.log_evals(uid, step, "test", test)
    if dev:
        store.log_evals(uid, step, "final_dev", dev)
    summary.update(dev=dev, test=test, best_step=best_step if tspec.restore_best else step,
                   baseline=baseline(task, "dev"), baselines=constant_baselines(task), n_params=n_params,
                   n_trainable=n_trainable, trainable_share=n_trainable / max(1, n_params))
    if n_trainable_final != n_trainable:  # a policy unfroze parameters during training: store both counts
        summary.update(n_trainable_start=n_trainable, n_trainable=n_trainable_final,
                       trainable_share=n_trainable_final / max(1, n_params))
        store.update_run(uid, n_trainable=n_trainable_final)
    summary.update(transfer)
    if tspec.save_model and status == "finished":
        save_weights(model, store.artifact_dir(uid), task_meta(task))
    if status == "finished":
        ckpt.remove_checkpoints(ck_path, resume[1] if resume else None)
    return RunResult("", uid, status, dev, test, summary["best_step"], step, 0.0, summary)


def _flush_curve(store: Store, uid: str, buf: list, bar=None) -> None:
    """Move the buffered curve points to the host in one transfer and store them."""
    if not buf:
        return
    losses = torch.stack([b[1] for b in buf]).float().cpu().tolist()
    norms = torch.stack([b[3].float() for b in buf]).cpu().tolist()
    rows = [(s, loss, lr, n) for (s, _, lr, _), loss, n in zip(buf, losses, norms)]
    store.log_curve(uid, rows)
    if bar is not None:
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    buf.clear()
