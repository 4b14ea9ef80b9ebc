"""Training runs: one run or S runs that differ only in seed (a single run is S = 1), on the Engine.

    result = run(load_spec("spec.yaml"), store=Store("runs/transferlab.db"))   # S = 1
    results = run_seeds([spec with seed 0, seed 1, ...], store)                  # S seeds, stacked

Here each seed's task, model, transfer, encoded splits, ``TaskSource`` and ``TaskEvaluator`` are
prepared and the trainee chosen (train/compute.py: one plain model, or the seeds' weights stacked or
fused); a multi-task spec is prepared by train/multitask.py. The Engine (train/engine.py) trains
them all: the one loop, with the bookkeeping of train/bookkeeping.py for every S. A seed that stops
(early stopping, divergence) is finished as its run would be and leaves the stack.
"""

from __future__ import annotations

import logging
import time

import torch

from transferlab.data.build import build_task
from transferlab.fingerprint import fingerprint
from transferlab.models.model import build_model
from transferlab.models.dropout_streams import dropout_probs, install_streams
from transferlab.provenance import provenance
from transferlab.recipes.distill import build_distiller
from transferlab.recipes.optim import check_state_dtype
from transferlab.recipes.transplant import prepare_transfer
from transferlab.records import EngineInfo, RunResult
from transferlab.spec import RunSpec, spec_hash, to_dict
from transferlab.spec import run_id as spec_run_id
from transferlab.store import DEFAULT_STORE, Heartbeat, Store
from transferlab.train.batches import collate, encode, epoch_batches
from transferlab.train.bookkeeping import Clock, SeedRun
from transferlab.train.compute import FusedTrainee, SingleTrainee, StackedTrainee
from transferlab.train.engine import Engine, fail_unstarted
from transferlab.train.evaluate import TaskEvaluator
from transferlab.train.fast import to_device
from transferlab.train.fused import FusedModel
from transferlab.train.intermediate import carry_weights, phase_a
from transferlab.train.sources import TaskSource
from transferlab.train.stacked import StackedModel
from transferlab.train.steps import autocast_dtype, loss_fn, resolve_device, seed_everything, step_plan
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
    """Train ``specs`` together as the slots of one stacked group: distinct seeds of one recipe, or runs that
    differ only in per-slot fields (train/support.py slot_difference: initial weights, optimizer and schedule
    values, freezing); refused (Unsupported, before anything is stored) when a part does not declare support.
    Results in order."""
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
        fail_unstarted(store, set(claimed.values()) - {r.uid for r in results if r is not None}, e)
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


class _Group:
    """S single-task runs of one recipe (one run, or S seeds stacked or fused) prepared for the Engine
    (train/engine.py), which trains them and writes every store row."""

    def __init__(self, specs: list[RunSpec], store: Store, study: str | None, progress: bool, hooks, clock: Clock,
                 run_ids: list[str], tasks: dict, claimed: dict[str, str] | None = None):
        self.specs, self.store, self.user_hooks = specs, store, hooks
        self.run_ids, self.tasks = run_ids, tasks  # tasks: built while validating (train/validate.py task_key)
        self.spec, self.tspec = specs[0], specs[0].train
        self.device = resolve_device(self.tspec.device)
        self.amp = autocast_dtype(self.tspec.precision, self.device)
        self.stacked = len(specs) > 1
        self.engine = Engine(specs, store, study=study, progress=progress, hooks=hooks, clock=clock,
                             device=self.device, amp=self.amp, run_ids=run_ids, claimed=claimed)

    def run(self) -> list[RunResult]:
        if self.spec.multitask is not None:  # one shared encoder, a head per task (train/multitask.py)
            from transferlab.train.multitask import prepare_multitask

            return self.engine.run(prepare_multitask)
        return self.engine.run(self._prepare)

    def _prepare(self, engine: Engine, seeds: list[SeedRun]):
        """Each seed's task, model, run row and transfer (in the order a single run has always used),
        the weights stacked (or fused) when the engine is not the single one, then each split encoded once,
        the sources and evaluators, the distiller and child-tuning D's batches."""
        stack = first = None
        probs = []  # each slot's dropout probabilities (train.dropout_rng: run)
        for i, spec in enumerate(self.specs):
            seed_everything(spec.seed)
            task = self.tasks.pop(task_key(spec), None)  # built while validating: the user's own files
            task = build_task(spec.task, seed=spec.seed) if task is None else task
            seed = SeedRun(spec, task, run_id=self.run_ids[i])
            seeds.append(seed)
            if i == 0:
                self._choose(seed.task.modality)  # before any run row: a refused engine stores nothing
            model = build_model(spec, seed.task)
            probs.append(dropout_probs(model))
            engine.start(seed)
            seed.transfer = prepare_transfer(model, spec, self.store, self.store.artifact_dir(seed.uid))
            if not self.stacked:
                first = model.to(self.device)
            elif stack is None:
                holder = FusedModel if engine.info.kind == "fused" else StackedModel
                first, stack = model, holder(model, len(self.specs), self.device)
            else:
                stack.load_slot(i, model)
        if self.tspec.dropout_rng == "run":
            self._streams(first, stack, probs)
        _encode_all(seeds, first.backbone.tokenizer, self.spec.model.max_length)
        totals = {step_plan(len(s.data["train"]), self.tspec)[1] for s in seeds}
        if len(totals) > 1:
            raise Unsupported(f"seed-parallel: the seeds' training sets give different step counts {sorted(totals)}")
        desc = self.spec.name if engine.progress and not self.stacked else None
        for seed in seeds:
            regression = seed.task.problem == "regression"
            seed.source = TaskSource(seed.data["train"], seed.spec.seed, self.tspec.batch_size,
                                     self.tspec.length_bucketing, regression, shard=engine.ddp and engine.ddp.shard)
            seed.evaluator = TaskEvaluator(seed.task, seed.data, self.tspec.eval_batch_size, self.device, self.amp,
                                           desc)
        self._mode_hooks(engine, seeds[0])
        return self._trainee(seeds, first, stack)

    def _streams(self, first, stack, probs: list[dict[str, float]]) -> None:
        """train.dropout_rng: run: every dropout module draws from its run's own generator (one per slot), the
        BERT family's layer loop and the stream attention in the plain model and the stack alike."""
        seeds = [s.seed for s in self.specs]
        first.backbone.use_layer_loop()
        if stack is None:
            first.dropout_streams = install_streams({"": first}, probs, seeds, self.device,
                                                    configs=[first.backbone.config])  # checkpointed with it
            return
        roots = {"backbone.": stack.backbone, "head.": first.head, "input_adapter.": first.input_adapter}
        stack.streams = install_streams(roots, probs, seeds, self.device,
                                        configs=[stack.backbone.config, first.backbone.config])
        stack.vmap_head = stack.vmap_adapter = False  # one slot at a time: each draws from its own stream

    def _mode_hooks(self, engine: Engine, seed: SeedRun) -> None:
        """The distiller (S = 1), the task problem and child-tuning D's batches (epoch 0's)."""
        regression = seed.task.problem == "regression"
        if not self.stacked:  # built after the freezer (LoRA's modules in place), as it always was
            engine.mode_hooks = lambda module: [d] if (d := build_distiller(self.spec, module, seed.task,
                                                                             self.store)) else []
        engine.problem = seed.task.problem

        def batches():
            for index in epoch_batches(seed.data["train"], self.tspec.batch_size, seed.spec.seed, 0, False):
                batch = to_device(collate(seed.data["train"], index, regression), self.device)
                yield batch, batch.pop("labels")

        engine.fisher_batches = batches
        engine.fisher_loss = lambda logits, labels: loss_fn(logits, labels, regression)

    def _trainee(self, seeds: list[SeedRun], first, stack):
        regression = seeds[0].task.problem == "regression"
        if not self.stacked:
            scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
            return SingleTrainee(first, self.device, self.amp, regression, self.tspec.compile, scaler)
        pads = [s.data["train"].pad_id for s in seeds]
        if self.engine.info.kind == "fused":
            return FusedTrainee(stack, self.device, self.amp, regression, self.tspec.compile, pads,
                                unpad=self.tspec.engine != "fused-padded")
        return StackedTrainee(stack, self.device, self.amp, regression, self.tspec.compile, pads)

    def _choose(self, modality: str) -> None:
        """The engine (train/support.py: choose_engine); auto's reason for not fusing is logged once."""
        kind, reason = choose_engine(self.specs, self.user_hooks, modality)
        if reason:
            log.warning("%s: %s", self.spec.name, reason)
        self.stacked = self.engine.stacked = kind != "single"
        self.engine.info = EngineInfo(kind, len(self.specs), False, self.device.type,
                                      str(self.amp).replace("torch.", "") if self.amp else "fp32", reason)
        self.engine.provenance = {**provenance(), "engine": self.engine.info.__dict__,
                                  **({"group_seeds": [s.seed for s in self.specs]} if self.stacked else {}),
                                  **({"ddp": self.engine.ddp.info()} if self.engine.ddp else {})}


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
