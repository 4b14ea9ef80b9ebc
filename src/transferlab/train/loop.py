"""The one training loop, for one run or S runs that differ only in seed (a single run is S = 1).

    result = run(load_spec("spec.yaml"), store=Store("runs/transferlab.db"))   # S = 1
    results = run_seeds([spec with seed 0, seed 1, ...], store)                  # S seeds, stacked

Per step: each active seed takes its own next batch (``epoch_batches`` with its seed: its own data
order); the trainee (train/compute.py: one plain model, or the seeds' weights stacked) runs the
forward, the loss and the backward and clips each seed's gradients by its own norm; the optimizer
steps (element-wise optimizers: a stacked update is S independent updates). The bookkeeping
(train/bookkeeping.py) is the same code for every S: the store's run rows, curve, evaluation
schedule, best state and patience, divergence watch and the final summary. A seed that stops
(early stopping, divergence) is finished as its run would be and leaves the stack.

The hot path does no host synchronisation per step: losses, gradient norms and the first
non-finite step are kept on the device and read once per logging interval.
"""

from __future__ import annotations

import logging
import time
import traceback

import torch
from tqdm.auto import tqdm

from transferlab.data.build import build_task
from transferlab.data.metrics import baseline, constant_baselines, higher_is_better
from transferlab.errors import FaultError, StoreError, UserError
from transferlab.fingerprint import fingerprint
from transferlab.models import artifacts as ckpt
from transferlab.models.artifacts import save_predictions, save_weights, task_meta
from transferlab.models.model import build_model
from transferlab.provenance import provenance
from transferlab.recipes.distill import build_distiller
from transferlab.recipes.freeze import build_freezer
from transferlab.recipes.hooks import Hook
from transferlab.recipes.optim import build_optimizer, check_state_dtype
from transferlab.recipes.param_groups import build_param_groups
from transferlab.recipes.schedules import build_schedule
from transferlab.recipes.stabilisers import build_stabilisers
from transferlab.recipes.transplant import prepare_transfer
from transferlab.records import EngineInfo, RunResult, RunSummary
from transferlab.spec import RunSpec, spec_hash, to_dict
from transferlab.spec import run_id as spec_run_id
from transferlab.store import DEFAULT_STORE, Heartbeat, Store
from transferlab.train import distributed
from transferlab.train.batches import collate, encode, epoch_batches
from transferlab.train.bookkeeping import Clock, SeedRun, Watch
from transferlab.train.compute import FusedTrainee, SingleTrainee, StackedTrainee
from transferlab.train.evaluate import evaluate_with_predictions
from transferlab.train.extra_evals import extra_splits
from transferlab.train.fast import to_device
from transferlab.train.fused import FusedModel
from transferlab.train.intermediate import carry_weights, phase_a
from transferlab.train.stacked import StackedModel
from transferlab.train.steps import (
    autocast_dtype,
    eval_schedule,
    loss_fn,
    optimizer_step,
    resolve_device,
    seed_everything,
    step_plan,
)
from transferlab.train.support import Unsupported, choose_engine, unsupported
from transferlab.train.validate import task_key, validate_runs

__all__ = ["run", "run_seeds", "run_group", "RunResult", "Unsupported"]
log = logging.getLogger(__name__)
WAIT_S = 2.0  # how often a run waiting for another process's attempt of the same run id looks again


def run(spec: RunSpec, store: Store | None = None, *, study: str | None = None, force: bool = False,
        progress: bool = True, hooks: list | tuple = (), run_id: str | None = None,
        validated: bool = False) -> RunResult:
    """Train and evaluate one run and store it. A finished run with the same id is reused unless ``force``.

    ``run_id``: the run's id when the caller has it (a study computes it once when planning and carries
    it); ``validated``: the caller validated the spec already (a study's driver), so it is not again."""
    store = store or Store(DEFAULT_STORE)
    run_id = run_id or spec_run_id(spec)
    if spec.intermediate is not None and (force or store.finished(run_id) is None):
        a, head = phase_a(spec)  # phase A: a stored run of its own, carried in by a hook
        hooks = (*hooks, carry_weights(spec, store, run(a, store, study=study, progress=progress), head))
    return run_group([spec], store, study=study, force=force, progress=progress, hooks=hooks, run_ids=[run_id],
                     validated=validated)[0]


def run_seeds(specs: list[RunSpec], store: Store | None = None, *, study: str | None = None, force: bool = False,
              progress: bool = True, hooks: list | tuple = (), run_ids: list | None = None,
              validated: bool = False) -> list[RunResult]:
    """Train ``specs`` (one recipe, distinct seeds) together, stacked; refused (Unsupported, before
    anything is stored) when a part does not declare support. Results in order."""
    if (why := unsupported(specs, hooks)) is not None:
        raise Unsupported(f"seed-parallel: {why}")
    return run_group(specs, store, study=study, force=force, progress=progress, hooks=hooks, run_ids=run_ids,
                     validated=validated)


def run_group(specs: list[RunSpec], store: Store | None = None, *, study: str | None = None, force: bool = False,
              progress: bool = True, hooks: list | tuple = (), run_ids: list | None = None,
              validated: bool = False) -> list[RunResult]:
    """Finished runs are reused unless ``force``; the rest train together (stacked when more than one).
    Each run id is computed once (or taken from ``run_ids``, None for one not known) and carried."""
    clock = Clock()  # the call's wall time is shared out to the runs it trains
    store = store or Store(DEFAULT_STORE)
    ids = [rid or spec_run_id(spec) for rid, spec in zip(run_ids or [None] * len(specs), specs)]
    results: list[RunResult | None] = [None] * len(specs)
    todo = []
    for i, spec in enumerate(specs):
        done = None if force else store.finished(ids[i])
        if done is None:
            todo.append(i)
        else:
            results[i] = RunResult.reused(ids[i], done.uid, done.summary, done.duration_s)
    if len(todo) > 1 and (why := unsupported([specs[i] for i in todo], hooks)) is not None:
        raise Unsupported(f"seed-parallel: {why}")
    # every value, file and model before a run row exists; the tasks built on the way are used, not rebuilt
    tasks = {} if validated else validate_runs([specs[i] for i in todo], store)
    if todo:  # optim.state_dtype: bf16 holds seed-stacked states only (one line, before a run row)
        check_state_dtype(specs[todo[0]].optim, seed_stacked=len(todo) > 1)
    claimed = _claim(specs, todo, store, study, force, results, ids) if hasattr(store, "claim") else {}
    todo = [i for i in todo if results[i] is None]
    beat = Heartbeat(store.path, uids=claimed.values()) if claimed else None
    try:
        if todo:
            group = _Group([specs[i] for i in todo], store, study, progress, hooks, clock, [ids[i] for i in todo],
                           tasks, claimed)
            for i, result in zip(todo, group.run()):
                results[i] = result
    except BaseException as e:
        left = set() if _unwritable(e) else set(claimed.values()) - {r.uid for r in results if r is not None}
        for uid in left:
            if store.runs(run_id=uid.rsplit("/", 1)[0])[-1].status == "running":  # claimed, never started
                store.finish_run(uid, "failed", error=_failure(e))
        raise
    finally:
        if beat is not None:
            beat.close(store)
    return results  # type: ignore[return-value]


def _claim(specs: list[RunSpec], todo: list[int], store: Store, study: str | None, force: bool,
           results: list, ids: list[str]) -> dict[str, str]:
    """Claim each run to train in the store as a study does (store.claim: one live attempt per run id).
    A run another process trains now is waited for, then reused when it finished (trained again with
    ``force``; a new attempt when that process died). Returns run id -> claimed uid."""
    claimed: dict[str, str] = {}
    for i in todo:
        spec, rid = specs[i], ids[i]
        waited = None
        while True:
            rows = store.runs(run_id=rid)
            last = rows[-1] if rows else None
            if last is not None and last.status == "finished" and not force:  # finished meanwhile: reused
                by = f" by process {waited.pid} on {waited.host}" if waited else ""
                log.warning("run %s: reusing %s, trained meanwhile%s; not training it again", rid, last.uid, by)
                results[i] = RunResult.reused(rid, last.uid, last.summary, last.duration_s)
                break
            again = force or (last is not None and last.status == "diverged")  # a diverged run trains again
            claim = store.claim(rid, spec_hash(spec), spec.seed, to_dict(spec), name=spec.name, study=study,
                                fingerprint=fingerprint(spec), rerun=again)
            if claim is not None:
                claimed[rid] = claim[0]
                break
            holder = store.holder(rid)
            if holder is not None and (waited is None or waited.uid != holder.uid):
                log.warning("run %s is being trained by process %s on %s (%s); waiting for it to end",
                            rid, holder.pid, holder.host, holder.uid)
            waited = holder or waited
            time.sleep(WAIT_S if holder is not None else 0.1)
    return claimed


def _unwritable(e: BaseException) -> bool:
    """The store itself failed (held, full, I/O): writing the runs' failure would fail again; their rows
    read ``unfinished`` once this process ends, and they run again."""
    return isinstance(e, StoreError)


def _failure(e: BaseException) -> str:
    """A run's stored error for ``e``: Ctrl-C reads ``interrupted`` (rerun on resume), a user's mistake its
    line, anything else its traceback."""
    return ("interrupted (KeyboardInterrupt)" if isinstance(e, KeyboardInterrupt) else
            str(e) if isinstance(e, (UserError, FaultError)) else traceback.format_exc(limit=8))


class _Group:
    """S runs of one recipe trained together; every store write of a training run happens here."""

    def __init__(self, specs: list[RunSpec], store: Store, study: str | None, progress: bool, hooks, clock: Clock,
                 run_ids: list[str], tasks: dict, claimed: dict[str, str] | None = None):
        self.specs, self.store, self.study, self.progress, self.user_hooks = specs, store, study, progress, hooks
        self.run_ids, self.tasks = run_ids, tasks  # tasks: built while validating (train/validate.py task_key)
        self.claimed = claimed or {}  # run id -> the attempt claimed for it (run_group); else start_run here
        self.spec, self.tspec = specs[0], specs[0].train
        self.device = resolve_device(self.tspec.device)
        self.amp = autocast_dtype(self.tspec.precision, self.device)
        self.stacked = len(specs) > 1
        self.clock = clock
        self.results: dict[str, RunResult] = {}
        self.ddp = distributed.current()  # data parallel across processes (train/distributed.py), or None

    # ------------------------------------------------------------------ store lifecycle
    def run(self) -> list[RunResult]:
        seeds: list[SeedRun] = []
        try:
            if self.spec.multitask is not None:  # one shared encoder, a head per task: its own function
                return self._multitask(seeds)
            trainee = self._prepare(seeds)
            self._train(seeds, trainee)
        except BaseException as e:
            error = _failure(e)
            if isinstance(e, torch.OutOfMemoryError):  # the two ways out, named with the run
                error += (f"\nout of memory with {len(self.specs)} seed(s) at batch {self.tspec.batch_size}: set "
                          "train.checkpoint_layers: true (each layer recomputed in the backward), or train fewer "
                          "seeds together (--seed-parallel off) or smaller batches (train.grad_accum)")
            self.clock.charge([s for s in seeds if s.uid not in self.results])
            for seed in seeds if not _unwritable(e) else ():
                if seed.uid and seed.uid not in self.results:
                    self.store.finish_run(seed.uid, "failed", error=error, duration_s=seed.duration_s)
            raise
        return [self.results[s.uid] for s in seeds]

    def _multitask(self, seeds: list[SeedRun]) -> list[RunResult]:
        """train/multitask.py trains; the run row is started and finished here like every other."""
        from transferlab.train.multitask import train_multitask

        self.provenance = {**provenance(), "engine": EngineInfo("single", 1, False, self.device.type).__dict__}
        seed = SeedRun(self.spec, task=None, run_id=self.run_ids[0])
        seeds.append(seed)
        self._start(seed)
        result = train_multitask(self.spec, self.store, seed.uid, progress=self.progress, hooks=self.user_hooks)
        self.clock.charge(seeds)
        summary = RunSummary.from_dict(result.summary)
        seed.status, seed.error, seed.error_step = result.status, summary.error, summary.error_step
        self._record(seed, summary)
        return [self.results[seed.uid]]

    def _start(self, seed: SeedRun) -> None:
        if seed.run_id in self.claimed:
            seed.uid = self.claimed[seed.run_id]
            self.store.update_run(seed.uid, provenance=self.provenance)
            return
        seed.uid = self.store.start_run(seed.run_id, spec_hash(seed.spec), seed.spec.seed,
                                        to_dict(seed.spec), name=seed.spec.name, study=self.study,
                                        provenance=self.provenance)

    def _record(self, seed: SeedRun, summary: RunSummary) -> None:
        self.store.finish_run(seed.uid, seed.status, summary=summary, duration_s=seed.duration_s,
                              error=summary.error, error_step=summary.error_step)
        self.results[seed.uid] = RunResult(seed.run_id, seed.uid, seed.status, summary.dev, summary.test,
                                           summary.best_step, summary.steps, seed.duration_s, summary)

    # ------------------------------------------------------------------ set-up
    def _prepare(self, seeds: list[SeedRun]):
        """Each seed's task, model, run row and transfer (in the order a single run has always used),
        the weights stacked (or fused) when the engine is not the single one, then each split encoded once."""
        stack = first = None
        for i, spec in enumerate(self.specs):
            seed_everything(spec.seed)
            task = self.tasks.pop(task_key(spec), None)  # built while validating: the user's own files
            task = build_task(spec.task, seed=spec.seed) if task is None else task
            seed = SeedRun(spec, task, run_id=self.run_ids[i])
            seeds.append(seed)
            if i == 0:
                self._choose(seed.task.modality)  # before any run row: a refused engine stores nothing
            model = build_model(spec, seed.task)
            self._start(seed)
            seed.transfer = prepare_transfer(model, spec, self.store, self.store.artifact_dir(seed.uid))
            if not self.stacked:
                first = model.to(self.device)
            elif stack is None:
                holder = FusedModel if self.engine.kind == "fused" else StackedModel
                first, stack = model, holder(model, len(self.specs), self.device)
            else:
                stack.load_slot(i, model)
        _encode_all(seeds, first.backbone.tokenizer, self.spec.model.max_length)
        totals = {step_plan(len(s.data["train"]), self.tspec)[1] for s in seeds}
        if len(totals) > 1:
            raise Unsupported(f"seed-parallel: the seeds' training sets give different step counts {sorted(totals)}")
        trainee = self._trainee(seeds, first, stack)
        if self.tspec.checkpoint_layers:
            trainee.checkpoint_layers()
        return trainee

    def _trainee(self, seeds: list[SeedRun], first, stack):
        regression = seeds[0].task.problem == "regression"
        if not self.stacked:
            scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
            return SingleTrainee(first, self.device, self.amp, regression, self.tspec.compile, scaler)
        pads = [s.data["train"].pad_id for s in seeds]
        if self.engine.kind == "fused":
            return FusedTrainee(stack, self.device, self.amp, regression, self.tspec.compile, pads,
                                unpad=self.tspec.engine != "fused-padded")
        return StackedTrainee(stack, self.device, self.amp, regression, self.tspec.compile, pads)

    def _choose(self, modality: str) -> None:
        """The engine (train/support.py: choose_engine); auto's reason for not fusing is logged once."""
        kind, reason = choose_engine(self.specs, self.user_hooks, modality)
        if reason:
            log.warning("%s: %s", self.spec.name, reason)
        self.stacked = kind != "single"
        self.engine = EngineInfo(kind, len(self.specs), False, self.device.type,
                                 str(self.amp).replace("torch.", "") if self.amp else "fp32", reason)
        self.provenance = {**provenance(), "engine": self.engine.__dict__,
                           **({"group_seeds": [s.seed for s in self.specs]} if self.stacked else {}),
                           **({"ddp": self.ddp.info()} if self.ddp else {})}

    def _parts(self, seeds: list[SeedRun], trainee) -> None:
        """Freezer, distiller, hooks, optimizer and schedule, in the order a single run has always used."""
        model, spec = trainee.module, self.spec
        self.steps_per_epoch, self.total = step_plan(len(seeds[0].data["train"]), self.tspec)
        self.freezer = build_freezer(spec.freeze, model, self.steps_per_epoch)  # before the optimizer: LoRA
        distiller = build_distiller(spec, model, seeds[0].task, self.store) if not self.stacked else None
        self.hooks = (self.freezer, *([distiller] if distiller else []), *self.user_hooks,
                      *self._stabilisers(seeds[0], trainee))
        self.loss_hooks = [h for h in self.hooks if hasattr(h, "on_loss")]
        self.log_hooks = [h for h in self.hooks if isinstance(h, Hook) and h.logs()]  # train/track.py
        groups = build_param_groups(model, spec.optim, model.num_layers)
        self.optimizer = build_optimizer(groups, spec.optim, self.device.type)
        self.scheduler = build_schedule(self.optimizer, spec.schedule, self.total)
        self._call("on_train_start", model, self.optimizer, self.total)
        self.counts = trainee.counts()
        for seed in seeds:
            self.store.update_run(seed.uid, n_params=self.counts[0], n_trainable=self.counts[1])

    def _stabilisers(self, seed: SeedRun, trainee) -> list:
        """spec.stabilisers as hooks (recipes/stabilisers.py); child-tuning D reads epoch 0's batches."""
        regression = seed.task.problem == "regression"

        def batches():
            for index in epoch_batches(seed.data["train"], self.tspec.batch_size, seed.spec.seed, 0, False):
                batch = to_device(collate(seed.data["train"], index, regression), self.device)
                yield batch, batch.pop("labels")

        return build_stabilisers(self.spec.stabilisers, problem=seed.task.problem, freeze=self.spec.freeze.name,
                                 seed=self.spec.seed, device=self.device, batches=batches,
                                 loss=lambda logits, labels: loss_fn(logits, labels, regression))

    def _emit(self, step: int, prefix: str, metrics: dict) -> None:
        """``on_log`` of the tracking hooks: ``prefix/name`` keys, host floats."""
        if self.log_hooks:
            points = {f"{prefix}/{k}": float(v) for k, v in metrics.items() if v is not None}
            for hook in self.log_hooks:
                hook.on_log(step, points)

    def _call(self, name: str, *args) -> None:
        for hook in self.hooks:
            if (fn := getattr(hook, name, None)) is not None:
                fn(*args)

    # ------------------------------------------------------------------ the loop
    def _train(self, seeds: list[SeedRun], trainee) -> None:
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
            self._call("on_step_start", step)
            losses = None
            for _ in range(tspec.grad_accum):
                indices = [self._shard(s.next_batch(tspec.batch_size, tspec.length_bucketing)) for s in active]
                batches = [collate(s.data["train"], index, s.task.problem == "regression")
                           for s, index in zip(active, indices)]
                losses = trainee.backward(batches, tspec.grad_accum, self.loss_hooks)
                if self.ddp is not None:  # data parallel: the global batch's loss, the same on every rank
                    losses = self.ddp.mean_loss(losses)
                self.watch.add(losses)
            if self.ddp is not None:  # data parallel: the ranks' gradients averaged before clipping
                self.ddp.reduce_grads(trainee.module)
            norms = trainee.clip(self.spec.optim.max_grad_norm, self.optimizer)
            lr = max(self.scheduler.get_last_lr())
            self.watch.step(step, losses, norms)
            self._call("on_before_optimizer_step", trainee.module, step)
            optimizer_step(self.optimizer, self.scheduler, getattr(trainee, "scaler", None))
            self._call("on_after_optimizer_step", trainee.module, step)
            step += 1
            self.bar.update(1)
            self._after_step(step, lr, norms, active, trainee)
            active = self._leave(step, active, trainee)
            self._checkpoint(step, seeds, trainee)
        self.bar.close()

    def _shard(self, index):
        """This process's share of a global batch under data parallelism (train/distributed.py)."""
        return index if self.ddp is None else self.ddp.shard(index)

    def _after_step(self, step: int, lr: float, norms, active: list[SeedRun], trainee) -> None:
        """The curve and the divergence watch, then the dev evaluation with best state and patience."""
        stopping = False
        if step % self.tspec.log_every == 0 or step in self.eval_steps:
            for slot, error_step, error in self.watch.log(step, lr, norms):
                active[slot].diverge(error_step, error)
                stopping = True
            if self.log_hooks:  # one more host read per interval, only with a tracking hook (S = 1)
                _, loss, _, norm = self.watch.buf[-1]
                self._emit(step, "train", {"loss": loss[0], "lr": lr, "grad_norm": norm[0]})
        if step in self.eval_steps or stopping:
            self._flush(active)
        if step not in self.eval_steps:
            return
        main = active[0].task.main_metric
        for slot, seed in enumerate(active):
            if seed.stopped:
                continue
            model = trainee.model_for(slot)
            self._call("on_eval_start", model)  # e.g. a weight average swapped in, until on_eval_end
            metrics = self._evaluate(model, seed, "dev")
            seed.dev_at[step] = metrics
            self.store.log_evals(seed.uid, step, "dev", metrics)
            self._emit(step, "dev", metrics)
            improved = seed.observe(step, metrics[main], higher_is_better(main), self.tspec.early_stopping_patience)
            if improved and self.tspec.restore_best and step != self.total:
                seed.best_state = trainee.best_state(slot)  # the weights that were evaluated
            self._call("on_eval_end", model)

    def _evaluate(self, model, seed: SeedRun, split: str, keep: bool = False) -> dict[str, float]:
        """Metrics of ``model`` on ``split``; ``keep``: the predictions are saved with the run (churn)."""
        desc = f"{seed.spec.name} {split}" if self.progress and not self.stacked else None
        metrics, preds = evaluate_with_predictions(model, seed.data[split], seed.task, self.tspec.eval_batch_size,
                                                   self.device, self.amp, desc)
        if keep and preds is not None:
            save_predictions(self.store.artifact_dir(seed.uid), split, preds)
        return metrics

    def _flush(self, active: list[SeedRun]) -> None:
        rows = self.watch.curve()
        for seed, points in zip(active, rows):
            self.store.log_curve(seed.uid, points)
        if rows:
            self.bar.set_postfix(loss=f"{sum(p[-1][1] for p in rows) / len(rows):.4f}")

    def _leave(self, step: int, active: list[SeedRun], trainee) -> list[SeedRun]:
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
        return [active[i] for i in keep]

    # ------------------------------------------------------------------ one run's end
    def _finish(self, seed: SeedRun, slot: int, step: int, trainee) -> None:
        """Best state back, policies finished, final dev and test, the summary, the weights, the row."""
        tspec, task = self.tspec, seed.task
        n_params, n_trainable = self.counts
        n_trainable_final = trainee.counts()[1]
        model = trainee.model_for(slot)
        self._call("on_train_end", model)  # e.g. a weight average put in place
        final_step = step
        if tspec.restore_best and seed.best_step not in (None, step) and seed.best_state is not None:
            model, final_step = trainee.restore(slot, seed.best_state), seed.best_step
        self._call("on_finish", model)  # LoRA: adapters merged into the weights, so the stored model is plain
        finished = seed.status == "finished"
        dev = (seed.dev_at.get(final_step) or self._evaluate(model, seed, "dev")) if finished else {}
        test = self._evaluate(model, seed, "test", keep=True) if finished and "test" in seed.data else {}
        if test:
            self.store.log_evals(seed.uid, step, "test", test)
            self._emit(step, "test", test)
        extra = {name: self._evaluate(model, seed, name) for name in extra_splits(task)} if finished else {}
        for name, metrics in extra.items():  # e.g. MNLI's mismatched dev set (train/extra_evals.py)
            self.store.log_evals(seed.uid, step, name, metrics)
        if dev:
            self.store.log_evals(seed.uid, step, "final_dev", dev)
            self._emit(step, "final_dev", dev)
        self.engine.compiled = bool(trainee.compiled)
        summary = RunSummary(
            steps=step, total_steps=self.total, main_metric=task.main_metric, dev=dev, test=test,
            best_step=seed.best_step if tspec.restore_best else step, baseline=baseline(task, "dev"),
            baselines=constant_baselines(task), n_params=n_params, n_trainable=n_trainable,
            trainable_share=n_trainable / max(1, n_params), error=seed.error, error_step=seed.error_step,
            engine=EngineInfo(**self.engine.__dict__), transfer=seed.transfer.get("transfer", {}), extra_evals=extra,
            samples_per_s=seed.samples / seed.duration_s if seed.duration_s > 0 else None)
        if n_trainable_final != n_trainable:  # a policy unfroze parameters during training: store both counts
            summary.n_trainable_start, summary.n_trainable = n_trainable, n_trainable_final
            summary.trainable_share = n_trainable_final / max(1, n_params)
            self.store.update_run(seed.uid, n_trainable=n_trainable_final)
        if tspec.save_model and finished:
            save_weights(model, self.store.artifact_dir(seed.uid), task_meta(task))
        if finished and not self.stacked:
            ckpt.remove_checkpoints(ckpt.checkpoint_path(self.store, seed.uid), self.resumed)
        self.store.sync_artifacts(seed.uid)  # to the artifact location, when it is a URL
        seed.best_state = None  # free its memory now
        self._record(seed, summary)

    # ------------------------------------------------------------------ resumable checkpoints (S = 1)
    def _ck_parts(self, trainee) -> dict:
        return {"model": trainee.module, "optimizer": self.optimizer, "scheduler": self.scheduler,
                "scaler": getattr(trainee, "scaler", None), "freezer": self.freezer}

    def _checkpoint(self, step: int, seeds: list[SeedRun], trainee) -> None:
        every = self.tspec.checkpoint_every
        if not every or step % every or step >= self.total or self.stacked or seeds[0].stopped:
            return
        seed = seeds[0]
        self._flush(seeds)
        ckpt.save_checkpoint(ckpt.checkpoint_path(self.store, seed.uid), **self._ck_parts(trainee), loop={
            "step": step, "epoch": seed.epoch, "pos": seed.pos, "best_value": seed.best_value,
            "best_step": seed.best_step, "since_best": seed.since_best, "best_state": seed.best_state,
            "history": {"evals": self.store.evals(seed.uid), "curve": self.store.curve(seed.uid)},
            **self.watch.state()})
        self.store.sync_artifacts(seed.uid)

    def _resume(self, seeds: list[SeedRun], trainee) -> int:
        """The step to start at: 0, or that of the previous failed attempt's checkpoint."""
        if self.stacked:
            return 0
        seed = seeds[0]
        found = ckpt.find_resume(self.store, seed.run_id, seed.uid)
        if found is None:
            return 0
        st = ckpt.load_checkpoint(found[1], **self._ck_parts(trainee))
        seed.epoch, seed.pos, seed.best_value, seed.best_step, seed.since_best, seed.best_state = (
            st[k] for k in ("epoch", "pos", "best_value", "best_step", "since_best", "best_state"))
        self.watch.load(st)
        seed.resume_batches(self.tspec.batch_size, self.tspec.length_bucketing)
        ckpt.carry_history(self.store, found[0], seed.uid, st["step"], st.get("history"))
        self.resumed = found[1]
        self.bar.update(st["step"])
        return st["step"]


def _encode_all(seeds: list[SeedRun], tokenizer, max_length: int) -> None:
    """Encode each seed's labelled splits (and train); a split equal to an earlier seed's is encoded once."""
    done: list[tuple[object, object]] = []
    for seed in seeds:
        for name, split in seed.task.splits.items():
            if not (split.labelled or name == "train"):
                continue
            enc = next((e for s, e in done if _same_split(s, split)), None)
            if enc is None:
                enc = encode(split, seed.task, tokenizer, max_length)
                done.append((split, enc))
            seed.data[name] = enc


def _same_split(a, b) -> bool:
    import numpy as np

    if a is b:
        return True
    if len(a) != len(b) or not np.array_equal(a.labels, b.labels, equal_nan=True):
        return False
    if a.inputs is not None or b.inputs is not None:
        return a.inputs is not None and b.inputs is not None and np.array_equal(a.inputs, b.inputs)
    return a.texts == b.texts and a.text_pairs == b.text_pairs
