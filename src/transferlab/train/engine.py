"""The Engine: the one training loop of every mode (single, seed-stacked, fused, multi-task, pretraining).

    engine = Engine(specs, sink, device=device, amp=amp, hooks=hooks, progress=True)   # train: specs[0].train
    engine.info, engine.provenance = EngineInfo("single", 1, ...), {...}   # by prepare, before the first row
    results = engine.run(prepare)   # prepare(engine, seeds) -> Trainee: tasks, models, run rows, sources

A mode provides its parts through four declared seams (typing.Protocol, checked by tests):

    Trainee      how the model computes: backward (forward + loss + loss hooks + backward), clip, the
                 fp16 ``scaler`` the one ``optimizer_step`` uses, per-seed models and states
                 (train/compute.py; multi-task: train/multitask.py; pretraining: pretrain/objective.py)
    BatchSource  a run's training batches, in order, resumable (train/sources.py: one task;
                 train/multitask.py: the task sampler; pretrain/objective.py: masked corpus rows)
    Evaluator    a run's metrics on a split, its main metric and direction, what its summary and
                 saved weights carry (task metrics; the joint multi-task mean; the held-out MLM loss)
    RunSink      where a run is recorded: ``Store`` (store.py), a worker's ``Recorder`` (recorder.py),
                 or ``MemorySink`` (pretraining, which writes a folder, not a store row)

The engine runs every hook :class:`~transferlab.recipes.hooks.Event` (Composer's ``run_event``), builds
the freezer, stabilisers, optimizer and schedule the same way for every mode, and keeps the per-run
bookkeeping of train/bookkeeping.py (curve, evaluations, best state, patience, divergence, summary,
resumable checkpoints). The hot path does no host synchronisation per step: losses, gradient norms and
the first non-finite step stay on the device until a logging interval.
"""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from transferlab.errors import FaultError, StoreError, UserError
from transferlab.fingerprint import fingerprint
from transferlab.models import artifacts as ckpt
from transferlab.models.artifacts import save_weights
from transferlab.recipes.freeze import SlotFreezer, build_freezer
from transferlab.recipes.hooks import Event, Hook
from transferlab.recipes.optim import build_optimizer
from transferlab.recipes.param_groups import build_param_groups
from transferlab.recipes.schedules import build_schedule
from transferlab.recipes.slots import build_slot_optimizer
from transferlab.recipes.stabilisers import build_stabilisers
from transferlab.records import EngineInfo, RunResult, RunSummary
from transferlab.spec import spec_hash, to_dict
from transferlab.train import distributed
from transferlab.train.bookkeeping import Clock, SeedRun, Watch
from transferlab.train.support import per_slot_freeze, per_slot_optim
from transferlab.train.steps import eval_schedule

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- the seams
@runtime_checkable
class Trainee(Protocol):
    """How the model computes. ``batches``: one host batch per active seed, in slot order."""

    module: nn.Module  # what the optimizer, the hooks and the checkpoint see
    scaler: Any  # the fp16 GradScaler, or None: ``optimizer_step`` steps through it
    tokens: list[int]  # (real tokens, token positions computed): bench reads them

    @property
    def compiled(self) -> bool: ...

    def backward(self, batches: list, accum: int, loss_hooks: Iterable = ()) -> Tensor: ...  # (S,) losses

    def clip(self, max_norm: float | None, optimizer: torch.optim.Optimizer) -> Tensor: ...  # (S,) norms

    def model_for(self, slot: int) -> nn.Module: ...

    def checkpoint_layers(self) -> None: ...

    def best_state(self, slot: int) -> dict[str, Tensor]: ...

    def restore(self, slot: int, state: dict[str, Tensor]) -> nn.Module: ...

    def keep(self, slots: list[int], optimizer: torch.optim.Optimizer) -> None: ...

    def counts(self) -> tuple[int, int]: ...


@runtime_checkable
class BatchSource(Protocol):
    """One run's training batches: ``next()`` a host batch as its trainee takes it."""

    samples: int  # training examples handed out so far

    def next(self) -> Any: ...

    def state(self) -> dict[str, Any]: ...  # where a resumable checkpoint is in the data

    def load(self, state: dict[str, Any]) -> None: ...

    def where(self, step: int) -> str: ...  # what trained at a 1-based step ("" or " (task rte)")

    def epoch_batches(self) -> int: ...  # batches in one epoch (the step plan)


@runtime_checkable
class Evaluator(Protocol):
    """One run's evaluations. ``splits()``: the labelled splits scored at the end besides dev, in order
    (``test`` first when there is one); ``keep``: the predictions are saved in that folder."""

    main_metric: str
    higher_is_better: bool

    def evaluate(self, model: nn.Module, split: str, keep: Path | None = None) -> dict[str, float]: ...

    def splits(self) -> list[str]: ...

    def summary(self, step: int, dev: dict, test: dict) -> dict[str, Any]: ...  # the mode's RunSummary fields

    def meta(self) -> dict[str, Any]: ...  # saved beside the weights (task.json)


@runtime_checkable
class RunSink(Protocol):
    """Exactly what the engine (and the checkpoints it resumes from) calls on a store."""

    def start_run(self, run_id: str, recipe_hash: str, seed: int, spec: dict, *, name: str | None = None,
                  study: str | None = None, kind: str = "train", provenance: dict | None = None,
                  fingerprint: dict | None = None) -> str: ...

    def update_run(self, uid: str, **fields: Any) -> None: ...

    def finish_run(self, uid: str, status: str, *, summary: RunSummary | dict | None = None,
                   error: str | None = None, error_step: int | None = None,
                   duration_s: float | None = None) -> None: ...

    def log_evals(self, uid: str, step: int, split: str, metrics: dict[str, float]) -> None: ...

    def log_curve(self, uid: str, rows: list) -> None: ...

    def evals(self, uid: str) -> list: ...

    def curve(self, uid: str) -> list: ...

    def runs(self, *, run_id: str | None = None) -> list: ...

    def artifact_dir(self, uid: str) -> Path: ...

    def sync_artifacts(self, uid: str) -> None: ...


class MemorySink:
    """A RunSink that keeps one run's record in memory (pretraining: its folder is the output)."""

    def __init__(self, folder: Path):
        self.folder, self.rows, self.eval_rows, self.curve_rows = folder, {}, [], []

    def start_run(self, run_id, recipe_hash, seed, spec, *, name=None, study=None, kind="train", provenance=None,
                  fingerprint=None):
        self.rows = {"run_id": run_id, "seed": seed, "kind": kind, "provenance": provenance or {},
                     "fingerprint": fingerprint}
        return run_id

    def update_run(self, uid, **fields):
        self.rows.update(fields)

    def finish_run(self, uid, status, *, summary=None, error=None, error_step=None, duration_s=None):
        self.rows.update(status=status, summary=summary, error=error, error_step=error_step, duration_s=duration_s)

    def log_evals(self, uid, step, split, metrics):
        self.eval_rows += [(step, split, k, float(v)) for k, v in metrics.items()]

    def log_curve(self, uid, rows):
        self.curve_rows += [tuple(r) for r in rows]

    def evals(self, uid):
        return list(self.eval_rows)

    def curve(self, uid):
        return list(self.curve_rows)

    def runs(self, *, run_id=None):
        return []  # no earlier attempt to resume

    def artifact_dir(self, uid):
        return self.folder

    def sync_artifacts(self, uid):
        pass


def unwritable(e: BaseException) -> bool:
    """The store itself failed (held, full, I/O): writing the runs' failure would fail again; their rows
    read ``unfinished`` once this process ends, and they run again."""
    return isinstance(e, StoreError)


def failure(e: BaseException) -> str:
    """A run's stored error for ``e``: Ctrl-C reads ``interrupted`` (rerun on resume), a user's mistake its
    line, anything else its traceback."""
    return ("interrupted (KeyboardInterrupt)" if isinstance(e, KeyboardInterrupt) else
            str(e) if isinstance(e, (UserError, FaultError)) else traceback.format_exc(limit=8))


def fail_unstarted(sink, uids, e: BaseException) -> None:
    """A claimed run (status running) that the engine never started is finished as failed with the cause,
    or withdrawn when the cause is the user's mistake (nothing stored for a refused run); nothing is
    written when the cause is the store itself being unwritable."""
    if unwritable(e):
        return
    for uid in uids:
        if sink.runs(run_id=uid.rsplit("/", 1)[0])[-1].status != "running":
            continue
        if isinstance(e, UserError) and hasattr(sink, "withdraw"):
            sink.withdraw(uid)
        else:
            sink.finish_run(uid, "failed", error=failure(e))


def plan_steps(epoch_batches: int, tspec) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps) under ``train:`` (max_steps, else epochs)."""
    per_epoch = max(1, math.ceil(epoch_batches / tspec.grad_accum))
    return per_epoch, tspec.max_steps or max(1, math.ceil(tspec.epochs * per_epoch))


def optimizer_step(optimizer, scheduler, scaler) -> None:
    """The one optimizer update of every mode: through the fp16 grad scaler when there is one, then the
    schedule; gradients dropped."""
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------------- the engine
class Engine:
    """S runs of one recipe trained together (S = 1 for every mode but the seed-stacked ones); every
    write of a training run to its sink happens here. ``train``: the spec's ``train:`` settings."""

    def __init__(self, specs: list, sink: RunSink, *, device: torch.device, amp=None, train=None,
                 study: str | None = None, progress: bool = True, hooks: Iterable = (), clock: Clock | None = None,
                 problem: str | None = None, run_ids: list[str] | None = None, claimed: dict[str, str] | None = None):
        self.specs, self.sink, self.study, self.progress = specs, sink, study, progress
        self.spec, self.tspec = specs[0], train if train is not None else specs[0].train
        self.user_hooks, self.clock = tuple(hooks), clock or Clock()
        self.device, self.amp, self.problem = device, amp, problem
        self.stacked = len(specs) > 1
        self.info = EngineInfo("single", len(specs), False, device.type)
        self.provenance: dict[str, Any] = {}
        self.results: dict[str, RunResult] = {}
        self.mode_hooks: Callable[[nn.Module], list] | None = None  # the mode's own hooks (a distiller)
        self.fisher_batches: Callable[[], Iterable] | None = None  # child-tuning D's batches, (inputs, labels)
        self.fisher_loss: Callable[[Tensor, Tensor], Tensor] | None = None
        self.run_ids = run_ids  # computed once per run by the caller (train/loop.py run_group), carried here
        self.claimed = claimed or {}  # run id -> the attempt claimed for it (run_group); else start_run here
        self.ddp = distributed.current()  # data parallel across processes (train/distributed.py), or None

    # ------------------------------------------------------------------ run lifecycle
    def run(self, prepare: Callable[[Engine, list[SeedRun]], Trainee]) -> list[RunResult]:
        """``prepare`` builds each seed's run (task, model, sources, evaluator; ``start`` for its row) and
        returns the trainee; a failure at any point finishes every started row as failed."""
        seeds: list[SeedRun] = []
        try:
            trainee = prepare(self, seeds)
            if self.tspec.checkpoint_layers:
                trainee.checkpoint_layers()
            self.train(seeds, trainee)
        except BaseException as e:
            self._fail(seeds, e)
            raise
        return [self.results[s.uid] for s in seeds]

    def _fail(self, seeds: list[SeedRun], e: BaseException) -> None:
        error = failure(e)
        if isinstance(e, torch.OutOfMemoryError):  # the two ways out, named with the run
            error += (f"\nout of memory with {len(self.specs)} seed(s) at batch {self.tspec.batch_size}: set "
                      "train.checkpoint_layers: true (each layer recomputed in the backward), or train fewer "
                      "seeds together (--seed-parallel off) or smaller batches (train.grad_accum)")
        self.clock.charge([s for s in seeds if s.uid not in self.results])
        for seed in seeds if not unwritable(e) else ():
            if seed.uid and seed.uid not in self.results:
                self.sink.finish_run(seed.uid, "failed", error=error, duration_s=seed.duration_s)

    def start(self, seed: SeedRun) -> None:
        """The seed's run row (``self.provenance`` set by the mode first): the attempt claimed for it, or a new one."""
        if seed.run_id in self.claimed:
            seed.uid = self.claimed[seed.run_id]
            self.sink.update_run(seed.uid, provenance=self.provenance)
            return
        seed.uid = self.sink.start_run(seed.run_id, spec_hash(seed.spec), seed.spec.seed, to_dict(seed.spec),
                                       name=seed.spec.name, study=self.study, provenance=self.provenance,
                                       fingerprint=fingerprint(seed.spec) if hasattr(seed.spec, "task") else None)
        # a training run's data and model fingerprint, as a claim stores it (pretraining writes a folder)

    def _record(self, seed: SeedRun, summary: RunSummary) -> None:
        self.sink.finish_run(seed.uid, seed.status, summary=summary, duration_s=seed.duration_s,
                             error=summary.error, error_step=summary.error_step)
        self.results[seed.uid] = RunResult(seed.run_id, seed.uid, seed.status, summary.dev, summary.test,
                                           summary.best_step, summary.steps, seed.duration_s, summary)

    def run_event(self, event: Event, *args) -> None:
        """Every hook's handler of ``event``, in hook order."""
        for hook in self.hooks:
            if (fn := getattr(hook, event.value, None)) is not None:
                fn(*args)

    # ------------------------------------------------------------------ set-up
    def _parts(self, seeds: list[SeedRun], trainee: Trainee) -> None:
        """Freezer, the mode's hooks, the user's, stabilisers, optimizer and schedule, in this order."""
        model, spec = trainee.module, self.spec
        self.steps_per_epoch, self.total = self.plan(seeds)
        if self.stacked and per_slot_freeze(self.specs):  # each slot's own policy: gradient masks
            self.freezer = SlotFreezer([s.freeze for s in self.specs], model, self.steps_per_epoch)
        else:
            self.freezer = build_freezer(spec.freeze, model, self.steps_per_epoch)  # before the optimizer: LoRA
        own = self.mode_hooks(model) if self.mode_hooks else []  # after the freezer: LoRA's modules in place
        stabilisers = build_stabilisers(spec.stabilisers, problem=self.problem, freeze=spec.freeze.name,
                                        seed=spec.seed, device=self.device, batches=self.fisher_batches,
                                        loss=self.fisher_loss) if spec.stabilisers else []
        self.hooks = (self.freezer, *own, *self.user_hooks, *stabilisers)
        self.loss_hooks = [h for h in self.hooks if hasattr(h, Event.LOSS.value)]
        self.log_hooks = [h for h in self.hooks if isinstance(h, Hook) and h.logs()]  # train/track.py
        if self.stacked and per_slot_optim(self.specs):  # slots with their own optimizer/schedule values
            self.optimizer, self.scheduler = build_slot_optimizer(
                model, [s.optim for s in self.specs], [s.schedule for s in self.specs], model.num_layers, self.total,
                getattr(self.freezer, "masks", None))
        else:
            groups = build_param_groups(model, spec.optim, model.num_layers)
            self.optimizer = build_optimizer(groups, spec.optim, self.device.type)
            self.scheduler = build_schedule(self.optimizer, spec.schedule, self.total)
        self.run_event(Event.TRAIN_START, model, self.optimizer, self.total)
        self.counts = trainee.counts()
        self.trainable0 = {seed.uid: self._trainable(slot, trainee) for slot, seed in enumerate(seeds)}
        for seed in seeds:
            self.sink.update_run(seed.uid, n_params=self.counts[0], n_trainable=self.trainable0[seed.uid])

    def _trainable(self, slot: int, trainee: Trainee) -> int:
        """Values slot ``slot`` trains now: its own policy's (per-slot freezing), else the trainee's count."""
        if hasattr(self.freezer, "trainable_count"):
            return self.freezer.trainable_count(slot)
        return trainee.counts()[1]

    def plan(self, seeds: list[SeedRun]) -> tuple[int, int]:
        return plan_steps(seeds[0].source.epoch_batches(), self.tspec)

    def _emit(self, step: int, prefix: str, metrics: dict) -> None:
        """``on_log`` of the tracking hooks: ``prefix/name`` keys, host floats."""
        if self.log_hooks:
            points = {f"{prefix}/{k}": float(v) for k, v in metrics.items() if v is not None}
            for hook in self.log_hooks:
                getattr(hook, Event.LOG.value)(step, points)

    # ------------------------------------------------------------------ the loop
    def train(self, seeds: list[SeedRun], trainee: Trainee) -> None:
        tspec = self.tspec
        self._parts(seeds, trainee)
        self.eval_steps = set(eval_schedule(self.total, tspec.num_evals))
        self.watch = Watch(len(seeds), self.device, tspec.divergence_factor)
        name = self.spec.name if not self.stacked else f"{self.spec.name} x{len(seeds)} seeds"
        self.bar = tqdm(total=self.total, desc=name, unit="step", disable=not self.progress, leave=False,
                        dynamic_ncols=True)
        trainee.module.train()
        self.resumed = None
        step = self._resume(seeds, trainee)
        active = list(seeds)
        while step < self.total and active:
            self.run_event(Event.STEP_START, step)
            losses = None
            for _ in range(tspec.grad_accum):
                losses = trainee.backward([s.source.next() for s in active], tspec.grad_accum, self.loss_hooks)
                if self.ddp is not None:  # data parallel: the global batch's loss, the same on every rank
                    losses = self.ddp.mean_loss(losses)
                self.watch.add(losses)
            if self.ddp is not None:  # data parallel: the ranks' gradients averaged before clipping
                self.ddp.reduce_grads(trainee.module)
            norms = trainee.clip(self.spec.optim.max_grad_norm, self.optimizer)
            lr = self.scheduler.slot_lrs() if hasattr(self.scheduler, "slot_lrs") else max(self.scheduler.get_last_lr())
            self.watch.step(step, losses, norms)
            self.run_event(Event.BEFORE_OPTIMIZER_STEP, trainee.module, step)
            optimizer_step(self.optimizer, self.scheduler, trainee.scaler)
            self.run_event(Event.AFTER_OPTIMIZER_STEP, trainee.module, step)
            step += 1
            self.bar.update(1)
            self._after_step(step, lr, norms, active, trainee)
            active = self._leave(step, active, trainee)
            self._checkpoint(step, seeds, trainee)
        self.bar.close()

    def _after_step(self, step: int, lr: float, norms, active: list[SeedRun], trainee: Trainee) -> None:
        """The curve and the divergence watch, then the dev evaluation with best state and patience."""
        stopping = False
        if step % self.tspec.log_every == 0 or step in self.eval_steps:
            for slot, error_step, error in self.watch.log(step, lr, norms):
                active[slot].diverge(error_step, error + active[slot].source.where(error_step))
                stopping = True
            if self.log_hooks:  # one more host read per interval, only with a tracking hook (S = 1)
                _, loss, _, norm = self.watch.buf[-1]
                self._emit(step, "train", {"loss": loss[0], "lr": lr, "grad_norm": norm[0]})
        if step in self.eval_steps or stopping:
            self._flush(active)
        if step not in self.eval_steps:
            return
        for slot, seed in enumerate(active):
            if seed.stopped:
                continue
            model = trainee.model_for(slot)
            self.run_event(Event.EVAL_START, model)  # e.g. a weight average swapped in, until EVAL_END
            ev = seed.evaluator
            metrics = ev.evaluate(model, "dev")
            seed.dev_at[step] = metrics
            self.sink.log_evals(seed.uid, step, "dev", metrics)
            self._emit(step, "dev", metrics)
            improved = seed.observe(step, metrics[ev.main_metric], ev.higher_is_better,
                                    self.tspec.early_stopping_patience)
            if improved and self.tspec.restore_best and step != self.total:
                seed.best_state = trainee.best_state(slot)  # the weights that were evaluated
            self.run_event(Event.EVAL_END, model)

    def _flush(self, active: list[SeedRun]) -> None:
        rows = self.watch.curve()
        for seed, points in zip(active, rows):
            self.sink.log_curve(seed.uid, points)
        if rows:
            self.bar.set_postfix(loss=f"{sum(p[-1][1] for p in rows) / len(rows):.4f}")

    def _leave(self, step: int, active: list[SeedRun], trainee: Trainee) -> list[SeedRun]:
        """Seeds that stopped (or all, at the end) are finished and leave the stack."""
        if step < self.total and not any(s.stopped for s in active):
            return active
        self.clock.charge(active)
        keep = []
        for slot, seed in enumerate(active):
            if seed.stopped or step >= self.total:
                self._finish(seed, slot, step, trainee)
            else:
                keep.append(slot)
        if keep and len(keep) < len(active):
            trainee.keep(keep, self.optimizer)
            self.watch.keep(keep)
            if hasattr(self.scheduler, "keep"):  # per-slot LRs (recipes/slots.py)
                self.scheduler.keep(keep)
            if hasattr(self.freezer, "keep"):  # per-slot freezing (recipes/freeze.py SlotFreezer)
                self.freezer.keep(keep)
        return [active[i] for i in keep]

    # ------------------------------------------------------------------ one run's end
    def _final_evals(self, seed: SeedRun, model: nn.Module, step: int, final_step: int) -> tuple[dict, dict, dict]:
        """Final dev (reused when it was evaluated at ``final_step``), test (predictions kept) and any
        further split (e.g. MNLI's mismatched dev set), each logged."""
        ev, uid = seed.evaluator, seed.uid
        dev = seed.dev_at.get(final_step) or ev.evaluate(model, "dev")
        test, extra = {}, {}
        for split in ev.splits():
            if split == "test":
                test = ev.evaluate(model, "test", keep=self.sink.artifact_dir(uid))
            else:
                extra[split] = ev.evaluate(model, split)
        if test:
            self.sink.log_evals(uid, step, "test", test)
            self._emit(step, "test", test)
        for name, metrics in extra.items():
            self.sink.log_evals(uid, step, name, metrics)
        if dev:
            self.sink.log_evals(uid, step, "final_dev", dev)
            self._emit(step, "final_dev", dev)
        return dev, test, extra

    def _finish(self, seed: SeedRun, slot: int, step: int, trainee: Trainee) -> None:
        """Best state back, policies finished, final dev and test, the summary, the weights, the row."""
        tspec, n_params, n_trainable = self.tspec, self.counts[0], self.trainable0[seed.uid]
        n_trainable_final = self._trainable(slot, trainee)
        model = trainee.model_for(slot)
        self.run_event(Event.TRAIN_END, model)  # e.g. a weight average put in place
        final_step = step
        if tspec.restore_best and seed.best_step not in (None, step) and seed.best_state is not None:
            model, final_step = trainee.restore(slot, seed.best_state), seed.best_step
        self.run_event(Event.FINISH, model)  # LoRA: adapters merged into the weights, so the stored model is plain
        finished = seed.status == "finished"
        dev, test, extra = self._final_evals(seed, model, step, final_step) if finished else ({}, {}, {})
        self.info.compiled = bool(trainee.compiled)
        summary = RunSummary(
            steps=step, total_steps=self.total, main_metric=seed.evaluator.main_metric, dev=dev, test=test,
            best_step=seed.best_step if tspec.restore_best else step, n_params=n_params, n_trainable=n_trainable,
            trainable_share=n_trainable / max(1, n_params), error=seed.error, error_step=seed.error_step,
            engine=EngineInfo(**self.info.__dict__), transfer=seed.transfer.get("transfer", {}), extra_evals=extra,
            samples_per_s=seed.source.samples / seed.duration_s if seed.duration_s > 0 else None,
            **seed.evaluator.summary(step, dev, test))
        if n_trainable_final != n_trainable:  # a policy unfroze parameters during training: store both counts
            summary.n_trainable_start, summary.n_trainable = n_trainable, n_trainable_final
            summary.trainable_share = n_trainable_final / max(1, n_params)
            self.sink.update_run(seed.uid, n_trainable=n_trainable_final)
        if tspec.save_model and finished:
            save_weights(model, self.sink.artifact_dir(seed.uid), seed.evaluator.meta())
        if finished and not self.stacked:
            ckpt.remove_checkpoints(ckpt.checkpoint_path(self.sink, seed.uid), self.resumed)
        self.sink.sync_artifacts(seed.uid)  # to the artifact location, when it is a URL
        seed.best_state = None  # free its memory now
        seed.model = model  # the final weights (pretraining saves them in its own form)
        self._record(seed, summary)

    # ------------------------------------------------------------------ resumable checkpoints (S = 1)
    def _ck_parts(self, trainee: Trainee) -> dict:
        return {"model": trainee.module, "optimizer": self.optimizer, "scheduler": self.scheduler,
                "scaler": trainee.scaler, "freezer": self.freezer}

    def _checkpoint(self, step: int, seeds: list[SeedRun], trainee: Trainee) -> None:
        every = self.tspec.checkpoint_every
        if not every or step % every or step >= self.total or self.stacked or seeds[0].stopped:
            return
        seed = seeds[0]
        self._flush(seeds)
        ckpt.save_checkpoint(ckpt.checkpoint_path(self.sink, seed.uid), **self._ck_parts(trainee), loop={
            "step": step, **seed.source.state(), "best_value": seed.best_value,
            "best_step": seed.best_step, "since_best": seed.since_best, "best_state": seed.best_state,
            "history": {"evals": self.sink.evals(seed.uid), "curve": self.sink.curve(seed.uid)},
            **self.watch.state()})
        self.sink.sync_artifacts(seed.uid)

    def _resume(self, seeds: list[SeedRun], trainee: Trainee) -> int:
        """The step to start at: 0, or that of the previous failed attempt's checkpoint."""
        if self.stacked:
            return 0
        seed = seeds[0]
        found = ckpt.find_resume(self.sink, seed.run_id, seed.uid)
        if found is None:
            return 0
        st = ckpt.load_checkpoint(found[1], **self._ck_parts(trainee))
        seed.best_value, seed.best_step, seed.since_best, seed.best_state = (
            st[k] for k in ("best_value", "best_step", "since_best", "best_state"))
        self.watch.load(st)
        seed.source.load(st)
        ckpt.carry_history(self.sink, found[0], seed.uid, st["step"], st.get("history"))
        self.resumed = found[1]
        self.bar.update(st["step"])
        return st["step"]
