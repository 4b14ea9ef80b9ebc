"""The seed-parallel engine: S runs that differ only in seed, trained together in one process.

    results = run_seeds([spec.with seed 0, seed 1, ...], store)    # one RunResult per seed, in order
    why = unsupported(specs)                                        # None, or why they must run one by one

Each seed's model is built exactly as :func:`transferlab.train.loop.run` builds it (``build_model``
seeded by the seed, then init and transplants), then the weights are stacked along a leading seed
dimension (:class:`~transferlab.train.stacked.StackedModel`). Every step takes each seed's own
next batch (``epoch_batches`` with the seed: its own data order), pads the S batches to a common
shape (extra rows repeat a real row and are left out of that seed's loss), runs one forward over
S*B rows, and sums the S per-seed losses (``loss_fn`` per seed, as the loop computes it), so each
seed's parameters get exactly their own run's gradient. Then per seed: gradient clipping by the
seed's own global norm, the optimizer step (every optimizer here is element-wise), the curve, the
divergence checks, evaluation, best-state tracking and early stopping. A seed that stops (early
stopping, divergence) is finished as its run would be and leaves the stack, with its optimizer
state: it stops updating and stops costing compute.

Every seed's run is stored as if it had run alone: the same run id, spec and recipe hash, curve
rows, evaluations, summary and weights; its provenance adds ``engine: seed_parallel``. In float64
on CPU, with dropout 0, the stored numbers equal those of sequential runs to ~1e-12 (batched
matrix products round differently). With dropout the masks come from one shared random stream,
so seeds are statistically, not bitwise, equivalent to their sequential runs. See
docs/methods/seed_parallel.md.

Not supported (``unsupported`` says which; the study executor then runs the seeds one by one):
distillation, LoRA, resumable checkpoints, fp16 loss scaling, hooks that change the loss, and
backbones with weights outside Linear / Conv1D / LayerNorm / Embedding modules (ViT, wav2vec2,
the LSTM baseline).
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from transferlab.data.build import build_task
from transferlab.data.metrics import baseline, higher_is_better
from transferlab.data.task import Task
from transferlab.errors import UserError
from transferlab.models.model import build_model
from transferlab.provenance import provenance
from transferlab.recipes.freeze import build_freezer
from transferlab.recipes.optim import build_optimizer
from transferlab.recipes.param_groups import build_param_groups
from transferlab.recipes.schedules import build_schedule
from transferlab.recipes.transplant import prepare_transfer
from transferlab.spec import RunSpec, run_id, spec_hash, to_dict
from transferlab.store import DEFAULT_STORE, Store
from transferlab.study.degenerate import constant_baselines
from transferlab.train.batches import Encoded, collate, encode, epoch_batches
from transferlab.train.checkpoint import save_weights, task_meta
from transferlab.train.fast import Compiled, to_device
from transferlab.train.loop import (
    RunResult,
    autocast_dtype,
    eval_schedule,
    evaluate,
    loss_fn,
    resolve_device,
    seed_everything,
    step_plan,
)
from transferlab.train.stacked import StackedModel


class Unsupported(UserError):
    """These runs cannot train seed-parallel (the reason names the spec field)."""


# ---------------------------------------------------------------------------- what can run together


def unsupported(specs: list[RunSpec], hooks: list | tuple = ()) -> str | None:
    """None when ``specs`` can train together, else the reason (for a log line or an error)."""
    if not specs:
        return "no runs"
    recipe = spec_hash(specs[0])
    if any(spec_hash(s) != recipe for s in specs):
        return "the runs differ in more than their seed (and name)"
    seeds = [s.seed for s in specs]
    if len(set(seeds)) != len(seeds):
        return f"two runs share a seed ({seeds})"
    spec = specs[0]
    if spec.multitask is not None:  # issue 16: its own training function (train/multitask.py)
        return "multitask: multi-task runs train on their own function, not seed-parallel"
    if spec.intermediate is not None:  # issue 16: phase A runs first (train/intermediate.py)
        return "intermediate: the intermediate phase is not supported seed-parallel"
    if spec.distill.kind != "none":
        return "distill.kind: distillation is not supported seed-parallel"
    if spec.freeze.name == "lora":
        return "freeze.name: lora adds modules per seed; not supported seed-parallel"
    if spec.train.checkpoint_every:
        return "train.checkpoint_every: resumable checkpoints are not supported seed-parallel"
    if spec.train.precision == "fp16":
        return "train.precision: fp16 loss scaling is shared by all seeds; use bf16 or fp32"
    if any(hasattr(h, "on_loss") for h in hooks):
        return "a hook changes the loss (on_loss); not supported seed-parallel"
    family = _model_type(spec)
    if family not in ("bert", "roberta", "xlm-roberta", "camembert", "electra", "gpt2"):
        return f"model.name: the {family} family is not supported seed-parallel (BERT family and GPT-2 are)"
    return None


def _model_type(spec: RunSpec) -> str:
    """The backbone's model type without loading weights."""
    from transferlab.models.backbone import TINY_ALIASES, _tiny_config
    from transferlab.models.lstm import is_lstm

    name = spec.model.name
    if is_lstm(name):
        return "lstm"
    if name == "minilm":
        return "bert"
    if name in TINY_ALIASES:
        return str(_tiny_config(name)[0].model_type)
    try:
        import transformers as tf

        return str(tf.AutoConfig.from_pretrained(name, revision=spec.model.revision,
                                                 trust_remote_code=spec.model.trust_remote_code).model_type)
    except (OSError, ValueError):
        return "unknown"


# ---------------------------------------------------------------------------- one seed's bookkeeping


@dataclass
class _Seed:
    spec: RunSpec
    task: Task
    data: dict[str, Encoded]
    uid: str = ""
    transfer: dict = field(default_factory=dict)
    epoch: int = 0
    micro: Any = field(default_factory=lambda: iter(()))
    best_value: float | None = None
    best_step: int | None = None
    best_state: dict | None = None
    since_best: int = 0
    dev_at: dict = field(default_factory=dict)
    status: str = "finished"
    error: str | None = None
    error_step: int | None = None
    stopped: bool = False

    def next_batch(self, batch_size: int, bucket: bool) -> np.ndarray:
        index = next(self.micro, None)
        if index is None:
            self.micro = iter(epoch_batches(self.data["train"], batch_size, self.spec.seed, self.epoch, bucket))
            self.epoch += 1
            index = next(self.micro)
        return index


def _stack_batches(batches: list[dict[str, torch.Tensor]], pads: list[int]) -> dict[str, torch.Tensor]:
    """Per-seed collated batches -> one batch of (S, B, ...) tensors: widths padded (ids with the pad
    id, masks and segments with 0), missing rows filled with copies of the seed's first row."""
    rows = max(b["labels"].shape[0] for b in batches)
    out = {}
    for key in batches[0]:
        parts = [b[key] for b in batches]
        if key != "labels" and parts[0].dim() >= 2:
            width = max(p.shape[1] for p in parts)
            fills = [pad if key in ("input_ids", "inputs") else 0 for pad in pads]
            parts = [p if p.shape[1] == width else torch.cat(
                [p, p.new_full((p.shape[0], width - p.shape[1], *p.shape[2:]), fill)], 1)
                for p, fill in zip(parts, fills)]
        parts = [p if p.shape[0] == rows else torch.cat([p, p[:1].expand(rows - p.shape[0], *p.shape[1:])])
                 for p in parts]
        out[key] = torch.stack(parts)
    return out


def _encode_all(seeds: list[_Seed], tokenizer, max_length: int) -> None:
    """Encode each seed's splits; a split equal to an earlier seed's is encoded once."""
    done: list[tuple[Any, Encoded]] = []
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
    if a is b:
        return True
    if len(a) != len(b) or not np.array_equal(a.labels, b.labels, equal_nan=True):
        return False
    if a.inputs is not None or b.inputs is not None:
        return a.inputs is not None and b.inputs is not None and np.array_equal(a.inputs, b.inputs)
    return a.texts == b.texts and a.text_pairs == b.text_pairs


# ---------------------------------------------------------------------------- the engine


def run_seeds(specs: list[RunSpec], store: Store | None = None, *, study: str | None = None, force: bool = False,
              progress: bool = True, hooks: list | tuple = ()) -> list[RunResult]:
    """Train ``specs`` (one recipe, distinct seeds) together and store each run; results in order.

    Finished runs are reused unless ``force`` (as ``run`` does). ``hooks`` get ``on_train_start``
    (with the stacked model) and ``on_step_start``; hooks that change the loss are refused."""
    if (why := unsupported(specs, hooks)) is not None:
        raise Unsupported(f"seed-parallel: {why}")
    store = store or Store(DEFAULT_STORE)
    results: list[RunResult | None] = [None] * len(specs)
    todo = []
    for i, spec in enumerate(specs):
        done = None if force else store.finished(run_id(spec))
        if done is None:
            todo.append(i)
            continue
        s = done.summary
        results[i] = RunResult(run_id(spec), done.uid, "skipped", s.get("dev", {}), s.get("test", {}),
                               s.get("best_step"), s.get("steps", 0), done.duration_s or 0.0, s)
    if todo:
        for i, result in zip(todo, _Engine([specs[i] for i in todo], store, study, progress, hooks).run()):
            results[i] = result
    return results  # type: ignore[return-value]


class _Engine:
    def __init__(self, specs: list[RunSpec], store: Store, study: str | None, progress: bool, hooks):
        self.specs, self.store, self.study, self.progress, self.user_hooks = specs, store, study, progress, hooks
        self.spec = specs[0]
        self.tspec = self.spec.train
        self.device = resolve_device(self.tspec.device)
        self.amp = autocast_dtype(self.tspec.precision, self.device)
        self.start = time.time()

    # ------------------------------------------------------------------ set-up
    def _prepare(self) -> tuple[list[_Seed], Any]:
        seeds = []
        for spec in self.specs:
            seed_everything(spec.seed)
            seeds.append(_Seed(spec, build_task(spec.task, seed=spec.seed), {}))
        seed_everything(self.spec.seed)
        first = build_model(self.spec, seeds[0].task)
        _encode_all(seeds, first.backbone.tokenizer, self.spec.model.max_length)
        totals = {self._total(s)[1] for s in seeds}
        if len(totals) > 1:
            raise Unsupported(f"seed-parallel: the seeds' training sets give different step counts {sorted(totals)}")
        return seeds, first

    def _total(self, seed: _Seed) -> tuple[int, int]:
        return step_plan(len(seed.data["train"]), self.tspec)

    def _build(self, seeds: list[_Seed], first) -> StackedModel:
        stack = None
        for i, seed in enumerate(seeds):
            seed_everything(seed.spec.seed)
            model = first if i == 0 else build_model(seed.spec, seed.task)
            seed.transfer = prepare_transfer(model, seed.spec, self.store, self.store.artifact_dir(seed.uid))
            if stack is None:
                stack = StackedModel(model, len(seeds), self.device)
            else:
                stack.load_slot(i, model)
        return stack

    # ------------------------------------------------------------------ the run
    def run(self) -> list[RunResult]:
        seeds, first = self._prepare()
        prov = {**provenance(), "engine": "seed_parallel", "group_seeds": [s.spec.seed for s in seeds]}
        for seed in seeds:
            seed.uid = self.store.start_run(run_id(seed.spec), spec_hash(seed.spec), seed.spec.seed,
                                            to_dict(seed.spec), name=seed.spec.name, study=self.study,
                                            provenance=prov)
        self.results: dict[str, RunResult] = {}
        try:
            self._train(seeds, first)
        except BaseException as e:
            error = ("interrupted (KeyboardInterrupt)" if isinstance(e, KeyboardInterrupt) else
                     str(e) if isinstance(e, UserError) else traceback.format_exc(limit=8))
            for seed in seeds:
                if seed.uid not in self.results:
                    self.store.finish_run(seed.uid, "failed", error=error, duration_s=time.time() - self.start)
            raise
        return [self.results[s.uid] for s in seeds]

    def _train(self, seeds: list[_Seed], first) -> None:
        tspec, device, amp = self.tspec, self.device, self.amp
        stack = self._build(seeds, first)
        template = stack.model
        regression = seeds[0].task.problem == "regression"
        steps_per_epoch, total = self._total(seeds[0])
        freezer = build_freezer(self.spec.freeze, stack, steps_per_epoch)
        hooks = (freezer, *self.user_hooks)
        groups = build_param_groups(stack, self.spec.optim, stack.num_layers)
        optimizer = build_optimizer(groups, self.spec.optim, device.type)
        scheduler = build_schedule(optimizer, self.spec.schedule, total)
        for hook in hooks:
            if hasattr(hook, "on_train_start"):
                hook.on_train_start(stack, optimizer, total)
        n_params, n_trainable = stack.seed_counts()
        for seed in seeds:
            self.store.update_run(seed.uid, n_params=n_params, n_trainable=n_trainable)
        self.counts = (n_params, n_trainable)

        eval_steps = eval_schedule(total, tspec.num_evals)
        main = seeds[0].task.main_metric
        better = higher_is_better(main)
        active = list(seeds)
        n = len(active)
        curve_buf: list[tuple[int, torch.Tensor, float, torch.Tensor]] = []
        loss_sum = torch.zeros(n, device=device)
        loss_n = 0
        first_bad = torch.full((n,), -1, dtype=torch.long, device=device)
        exploded = torch.full((n,), -1, dtype=torch.long, device=device)
        first_loss = None
        bar = tqdm(total=total, desc=f"{self.spec.name} x{n} seeds", unit="step", disable=not self.progress,
                   leave=False, dynamic_ncols=True)
        stack.train()
        probed = False
        step = 0
        while step < total and active:
            for hook in hooks:
                if hasattr(hook, "on_step_start"):
                    hook.on_step_start(step)
            for _ in range(tspec.grad_accum):
                parts = [collate(s.data["train"], s.next_batch(tspec.batch_size, tspec.length_bucketing), regression)
                         for s in active]
                counts = [p["labels"].shape[0] for p in parts]
                host = _stack_batches(parts, [s.data["train"].pad_id for s in active])
                padded = not bool(host["attention_mask"].all())  # on the host: no device sync
                batch = to_device(host, device)
                labels = batch.pop("labels")
                if not probed:
                    stack.probe_vmap(batch)  # eagerly: compiling it too would add an inference graph
                    probed = True
                    if tspec.compile:
                        stack.compile()
                args = (batch, padded, labels, counts, regression, tspec.grad_accum, device.type, amp)
                try:
                    losses = _backward(stack, *args)
                except Exception as e:  # a compile failure in the first backward: eager from now on
                    if step > 0 or not isinstance(stack.encoder, Compiled) or not stack.encoder.active:
                        raise
                    stack.encoder.fall_back(e)
                    optimizer.zero_grad(set_to_none=True)
                    losses = _backward(stack, *args)
                loss_sum += losses
            loss_n += 1
            gnorm = _clip_per_seed(stack, self.spec.optim.max_grad_norm)
            lr = max(scheduler.get_last_lr())
            bad = ~torch.isfinite(losses) | ~torch.isfinite(gnorm)
            first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, step + 1), first_bad)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)

            stopping: list[_Seed] = []
            if step % tspec.log_every == 0 or step in eval_steps:
                mean_loss = loss_sum / loss_n
                curve_buf.append((step, mean_loss, lr, gnorm.detach()))
                loss_sum, loss_n = torch.zeros(len(active), device=device), 0
                if tspec.divergence_factor:
                    first_loss = mean_loss if first_loss is None else first_loss
                    boom = mean_loss > tspec.divergence_factor * first_loss.clamp_min(1e-3)
                    exploded = torch.where(boom & (exploded < 0), torch.full_like(exploded, step), exploded)
                bad_steps, boom_steps = torch.stack([first_bad, exploded]).tolist()  # one host sync per interval
                for i, seed in enumerate(active):
                    bad_step, boom_step = bad_steps[i], boom_steps[i]
                    if bad_step < 0 and boom_step < 0:
                        continue
                    seed.status, seed.error_step = "diverged", bad_step if bad_step >= 0 else boom_step
                    seed.error = (f"non-finite loss or gradient at step {bad_step}" if bad_step >= 0 else
                                  f"loss exploded at step {boom_step}: {float(mean_loss[i]):.4g} > "
                                  f"{tspec.divergence_factor:g} x the first logged loss {float(first_loss[i]):.4g}")
                    seed.stopped = True
                    stopping.append(seed)
            if step in eval_steps or stopping:
                self._flush(active, curve_buf, bar)
            if step in eval_steps:
                for slot, seed in enumerate(active):
                    if seed.stopped:
                        continue
                    stack.copy_slot_to(template, slot)
                    metrics = evaluate(template, seed.data["dev"], seed.task, tspec.eval_batch_size, device, amp)
                    seed.dev_at[step] = metrics
                    self.store.log_evals(seed.uid, step, "dev", metrics)
                    value = metrics[main]
                    if seed.best_value is None or (value > seed.best_value if better else value < seed.best_value):
                        seed.best_value, seed.best_step, seed.since_best = value, step, 0
                        if tspec.restore_best and step != total:
                            # on the host: S best states would crowd the GPU
                            seed.best_state = {k: v.detach().to("cpu", copy=True) for k, v in
                                               template.state_dict().items()}
                    else:
                        seed.since_best += 1
                        if (tspec.early_stopping_patience is not None
                                and seed.since_best >= tspec.early_stopping_patience):
                            seed.stopped = True
                            stopping.append(seed)
            if stopping or step >= total:
                keep = []
                for slot, seed in enumerate(active):
                    if seed.stopped or step >= total:
                        self._finish(seed, stack, slot, step, freezer)
                    else:
                        keep.append(slot)
                if keep and len(keep) < len(active):
                    stack.keep(keep, optimizer)
                    index = torch.tensor(keep, device=device)
                    loss_sum, first_bad, exploded = (t.index_select(0, index) for t in (loss_sum, first_bad, exploded))
                    first_loss = None if first_loss is None else first_loss.index_select(0, index)
                active = [active[i] for i in keep]
                n = len(active)
        bar.close()

    # ------------------------------------------------------------------ per-seed output
    def _flush(self, active: list[_Seed], buf: list, bar) -> None:
        """The buffered curve points of every active seed to the host in one transfer, then the store."""
        if not buf:
            return
        losses = torch.stack([b[1] for b in buf]).float().cpu().tolist()  # (points, seeds)
        norms = torch.stack([b[3].float() for b in buf]).cpu().tolist()
        for i, seed in enumerate(active):
            self.store.log_curve(seed.uid, [(s, lo[i], lr, no[i]) for (s, _, lr, _), lo, no in zip(buf, losses, norms)])
        bar.set_postfix(loss=f"{float(np.mean(losses[-1])):.4f}")
        buf.clear()

    def _finish(self, seed: _Seed, stack: StackedModel, slot: int, step: int, freezer) -> None:
        """What ``loop._train`` does after its loop, for one seed (keep the two in step)."""
        tspec, device, amp, store = self.tspec, self.device, self.amp, self.store
        template = stack.copy_slot_to(stack.model, slot)
        task, data, uid = seed.task, seed.data, seed.uid
        n_params, n_trainable = self.counts
        n_trainable_final = stack.seed_counts()[1]
        summary: dict[str, Any] = {"steps": step, "total_steps": self._total(seed)[1], "main_metric": task.main_metric}
        if seed.status == "diverged":
            summary.update(error=seed.error, error_step=seed.error_step)
        if tspec.restore_best and seed.best_step is not None and seed.best_step != step and seed.best_state is not None:
            template.load_state_dict(seed.best_state)
            final_step = seed.best_step
        else:
            final_step = step
        freezer.finish(template)
        finished = seed.status == "finished"
        dev = (seed.dev_at.get(final_step) or evaluate(template, data["dev"], task, tspec.eval_batch_size, device, amp)
               ) if finished else {}
        test = {}
        if finished and "test" in data:
            test = evaluate(template, data["test"], task, tspec.eval_batch_size, device, amp)
            store.log_evals(uid, step, "test", test)
        if dev:
            store.log_evals(uid, step, "final_dev", dev)
        summary.update(dev=dev, test=test, best_step=seed.best_step if tspec.restore_best else step,
                       baseline=baseline(task, "dev"), baselines=constant_baselines(task), n_params=n_params,
                       n_trainable=n_trainable, trainable_share=n_trainable / max(1, n_params))
        if n_trainable_final != n_trainable:
            summary.update(n_trainable_start=n_trainable, n_trainable=n_trainable_final,
                           trainable_share=n_trainable_final / max(1, n_params))
            store.update_run(uid, n_trainable=n_trainable_final)
        summary.update(seed.transfer)
        if tspec.save_model and finished:
            save_weights(template, store.artifact_dir(uid), task_meta(task))
        seed.best_state = None  # free its memory now
        duration = time.time() - self.start
        store.finish_run(uid, seed.status, summary=summary, duration_s=duration, error=summary.get("error"),
                         error_step=summary.get("error_step"))
        self.results[uid] = RunResult(run_id(seed.spec), uid, seed.status, dev, test, summary["best_step"], step,
                                      duration, summary)


def _backward(forward, batch: dict, padded: bool, labels: torch.Tensor, counts: list[int], regression: bool,
              accum: int, device_type: str, amp) -> torch.Tensor:
    """Forward all seeds, backward the sum of their losses; returns the (S,) detached losses. The graph
    dies here: nothing outside keeps it (a seed leaving the stack reshapes the parameters)."""
    with torch.autocast(device_type, dtype=amp, enabled=amp is not None):
        logits = forward(batch, padded)
    losses = torch.stack([loss_fn(logits[i, :c], labels[i, :c], regression) for i, c in enumerate(counts)]) / accum
    losses.sum().backward()
    return losses.detach()


def _clip_per_seed(stack: StackedModel, max_norm: float | None) -> torch.Tensor:
    """``clip_grad_norm_`` for each seed on its own: the global norm of the seed's gradients, and its
    gradients scaled by min(1, max_norm / (norm + 1e-6)). Returns the (S,) norms before clipping."""
    grads = [p.grad for p in stack.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(stack.seeds, device=next(stack.parameters()).device)
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])  # (P, S)
    total = torch.linalg.vector_norm(norms, dim=0)
    coef = torch.clamp((max_norm if max_norm else float("inf")) / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *[1] * (g.dim() - 1)).to(g.dtype))
    return total
