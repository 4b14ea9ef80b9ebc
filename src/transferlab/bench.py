"""``transferlab bench``: training throughput of Hugging Face Trainer, our single run and the
seed-parallel engine, in one process, on the same model and data.

    transferlab bench --model bert-base --batch 32 --seq 128 --seeds 1,4,8,20      (a GPU)
    transferlab bench --model minilm --batch 32 --seq 64 --steps 20 --seeds 1,4    (a CPU)
    transferlab bench --model minilm --task rte --data ../shared/data/glue/RTE --seq 128 --rows single,fast,fast-padded

Every row trains the same model (``--model``: an alias, a folder, a hub id, or ``bert-base``:
BERT-base's shape with random weights and MiniLM's tokenizer) on the same synthetic sentences,
all ``--seq`` tokens long, with AdamW, linear schedule and gradient clipping. Each row runs
``--warmup`` untimed steps (compilation, allocator warm-up), then times ``--steps`` steps between
two device synchronisations; evaluation and storing happen outside that window. On CUDA a row's
rate is steps / that time; on CPU (synchronous) it is the median step, the figure a burst of other
load on a shared machine moves least. ``--repeat R`` runs all rows R times in rotation, so slow
drifts of the load hit every row alike, and reports the median rate and the range.

    trainer      transformers.Trainer on the model wrapped to return its loss (no torch.compile), batches
                 padded per batch by its DataCollatorWithPadding
    single       transferlab.train.loop.run: one run, the plain model (torch.compile with --compile)
    parallel     transferlab.train.loop.run_seeds: S seeds in one process, the general stacked engine
                 (train.engine: general), for each S in --seeds
    fast         the same with the fused, unpadded encoder (train.engine: fused; train/fused.py)
    fast-padded  the fused encoder on padded batches (train.engine: fused-padded)

``--task rte --data PATH`` (any GLUE task name and its folder) trains on that task's real training
set (its true length distribution, cut at ``--seq``) instead of the synthetic sentences.

``--optim NAME``: our rows' optimizer (default adamw; Trainer always runs its own AdamW).

Columns: samples/s over all seeds; per seed; the ratio to Trainer; model-FLOPs utilisation
(MFU) = samples/s x FLOPs per training sample / the matrix-product peak measured at the start of
the same command; peak memory per seed (CUDA: ``torch.cuda.max_memory_allocated`` / S; CPU: the
growth of resident memory from the row's start to its last timed step / S, approximate: the
allocator keeps freed memory); tokens/s (real tokens, all seeds) and the padded-token share (the
token positions a row computed that were padding, counted by the trainee from the batches it got;
Trainer: from its collator's masks). In real-data mode the FLOPs per sample use the mean real
length, so MFU counts useful work only. FLOPs per sample = 6 x tokens x (weights of the backbone's linear
layers) + 12 x layers x hidden x tokens^2 (attention scores and values), forward and backward:
about 67 GFLOP for BERT-base at 128 tokens. Weight MB/seed-step: the bytes the weight side (parameters, their
gradients and casts, optimizer states and temporaries) reads and writes in one step of our rows, counted operator by
operator (:class:`WeightBytes`) in the untimed step after the timed ones, / S: clipping and the optimizer included
(n/a with ``--compile on``: the counter is a dispatch mode, under which compiled code would run eagerly).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from transferlab.errors import UserError
from transferlab.recipes.hooks import Hook

ROWS = ("trainer", "single", "parallel", "fast", "fast-padded", "slots", "slots-dropout")
ENGINES = {"parallel": "general", "fast": "fused", "fast-padded": "fused-padded"}


@dataclass
class Row:
    name: str
    seeds: int
    samples_s: float  # all seeds together: the median over repeats
    per_seed: float
    vs_trainer: float | None
    mfu: float  # fraction of the measured peak
    mem_per_seed_mb: float | None  # None: not measurable here
    steps: int
    seconds: float  # timed wall time, summed over repeats
    low: float = 0.0  # the lowest and highest samples/s over repeats
    high: float = 0.0
    repeats: int = 1
    tokens_s: float = 0.0  # real tokens per second, all seeds
    padded_share: float = 0.0  # token positions computed that were padding
    weight_mb: float | None = None  # weight-side MB read + written per seed-step (WeightBytes; None: not counted)


# ---------------------------------------------------------------------------- data and model


def make_data(folder: Path, tokenizer, n: int, seq: int, seed: int = 0) -> Path:
    """A CSV task of ``n`` random sentences of whole-word vocabulary tokens, each longer than ``seq``
    tokens (so every example is cut to exactly ``seq``), alternating labels 0/1; a small dev split."""
    rng = np.random.default_rng(seed)
    vocab = [w for w in tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) > 2]
    vocab.sort()
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", n), ("dev", 16)):
        lines = ["text,label"]
        for i in range(rows):
            lines.append(" ".join(rng.choice(vocab, seq + 8)) + f",{i % 2}")
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return folder


SPECIAL = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}  # MiniLM's ids (schema TEXT)


def synthetic_tokenizer(folder: Path, vocab_size: int = 30522):
    """A WordPiece tokenizer built here, no download: BERT's special tokens at MiniLM's ids (the tiny configs' pad,
    bos and eos), ``[unusedN]`` fillers, the letters and their ``##`` continuations (any lower-case word has
    pieces: no text is unknown tokens only), then four-letter words ``aafa``, ``aafb``... up to ``vocab_size``, each
    one token, as :func:`make_data`'s sentences need. Saved in ``folder`` and returned."""
    import string

    import transformers as tf

    ids = {i: t for t, i in SPECIAL.items()}
    top = max(SPECIAL.values()) + 1
    words = [ids.get(i, f"[unused{i}]") for i in range(top)]
    words += list(string.ascii_lowercase) + [f"##{c}" for c in string.ascii_lowercase]
    for i in range(len(words), vocab_size):
        n, w = i, ""
        for _ in range(4):
            n, r = divmod(n, 26)
            w = chr(97 + r) + w
        words.append(w)
    tok = tf.BertTokenizer(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    tok.save_pretrained(folder)
    return tok


def resolve_model(name: str, folder: Path, synthetic: bool = True) -> str:
    """``bert-base``: a folder with BERT-base's config (random weights); a tiny text alias (``tiny-bert``...) on
    synthetic data: a folder with its config. Their tokenizer: :func:`synthetic_tokenizer` on synthetic sentences
    (MiniLM is not loaded: the GPU image lacks its package), MiniLM's for real data (``--task``: real lengths)."""
    import transformers as tf

    from transferlab.models.backbone import TINY_FAMILIES, TEXT_FAMILIES, _tiny_config

    if name == "bert-base":
        config = tf.BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                               vocab_size=30522)
    elif synthetic and TINY_FAMILIES.get(name) in TEXT_FAMILIES:
        config = _tiny_config(name)[0]
    else:
        return name
    out = folder / name
    config.save_pretrained(out)
    if synthetic:
        synthetic_tokenizer(out, int(config.vocab_size))
    else:
        from transferlab.models.common import minilm_path

        tf.AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(out)
    return str(out)


def flops_per_sample(model: nn.Module, tokens: int) -> float:
    """6 x tokens x linear weights of the backbone (not the pooler) + 12 x layers x hidden x tokens^2."""
    from transformers.pytorch_utils import Conv1D

    weights = sum(m.weight.numel() for n, m in model.backbone.model.named_modules()
                  if isinstance(m, (nn.Linear, Conv1D)) and "pooler" not in n)
    return 6.0 * tokens * weights + 12.0 * model.num_layers * model.backbone.hidden_size * tokens**2


def matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float = 1.0, trials: int = 5) -> float:
    """FLOP/s of a square matrix product (8192 on CUDA, 2048 on CPU), measured now: the best of
    ``trials`` timings of ``seconds / trials`` each (the best is the least disturbed by other load)."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    best, chunk = 0.0, 8 if device.type == "cuda" else 1
    for _ in range(trials):
        iters, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / trials:
            for _ in range(chunk):
                a @ b
            _sync(device)
            iters += chunk
        best = max(best, 2.0 * n**3 * iters / (time.perf_counter() - start))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class WeightBytes(TorchDispatchMode):
    """Counts the bytes the weight side of a training step moves: every operator's tensor arguments and results
    that are weight-side, each at its full size (``numel x element size``), a read per argument, a write per
    argument the operator's schema marks as mutated and per fresh result. Weight-side: a tensor with as many
    elements as one of the model's parameters (the parameters and their views, their gradients, optimizer states,
    casts; activations have other sizes in bench's shapes), or the
    result of an operator all of whose tensor inputs are weight-side (a concatenation of weights, a temporary of
    an optimizer). Views and allocations are free. Written here: torch's FLOP counter has no byte count.
    Conventions: an embedding lookup counts its whole table (an upper bound); a gradient computed from
    activations into a buffer of another shape (e.g. a concatenated one) is counted from where it is split."""

    def __init__(self, sizes: set[int]):
        super().__init__()
        self.sizes, self.derived, self.bytes = sizes, set(), 0
        self.elementwise = 0  # activation bytes of operators other than products and attention (cost model)

    def _weight(self, t) -> bool:
        if not isinstance(t, torch.Tensor) or t.is_nested or t.layout != torch.strided:
            return False
        return t.numel() in self.sizes or t.untyped_storage().data_ptr() in self.derived

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.is_view or func._schema.name.split("::")[-1].startswith(_FREE):
            return out
        inputs, ptrs, all_weight = [], set(), True
        name = func._schema.name.split("::")[-1]
        other = not name.startswith(_PRODUCTS)
        for i, arg in enumerate(func._schema.arguments):
            value = args[i] if i < len(args) else kwargs.get(arg.name)
            tensors = [t for t in pytree.tree_leaves(value) if isinstance(t, torch.Tensor)]
            written = arg.alias_info is not None and arg.alias_info.is_write
            for t in tensors:
                if t.dim() == 0:
                    continue  # a scalar (step count, learning rate, norm)
                ptrs.add(t.untyped_storage().data_ptr())
                weight = self._weight(t)
                all_weight &= weight
                inputs.append(t)
                if weight:
                    self.bytes += t.numel() * t.element_size() * (2 if written else 1)
                elif other:
                    self.elementwise += t.numel() * t.element_size() * (2 if written else 1)
        for t in pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.is_nested or t.dim() == 0:
                continue
            ptr = t.untyped_storage().data_ptr()
            if ptr in ptrs:
                continue  # an in-place result: counted as a mutated argument
            if (inputs and all_weight) or t.numel() in self.sizes:
                self.derived.add(ptr)
                self.bytes += t.numel() * t.element_size()
            elif other:
                self.elementwise += t.numel() * t.element_size()
        return out


_PRODUCTS = ("mm", "bmm", "baddbmm", "addmm", "addbmm", "matmul", "linear", "_scaled_dot_product", "_flash_attention",
             "_efficient_attention", "scaled_dot_product", "embedding")
_FREE = ("empty", "zeros", "new_empty", "new_zeros", "ones", "full", "detach", "alias", "lift_fresh", "_local_scalar")


class Timer(Hook):
    """Times steps warmup .. warmup+steps (as a loop hook: ``on_step_start``) and the memory used;
    with ``trace`` (a file path) also profiles those steps and writes a Chrome trace there.
    It only reads clocks, so it works for stacked seeds too."""

    seed_stacked = True

    def __init__(self, warmup: int, steps: int, device: torch.device, trace: Path | None = None,
                 count_bytes: bool = True):
        self.warmup, self.steps, self.device, self.trace = warmup, steps, device, trace
        self.count_bytes = count_bytes  # off for compiled rows: a dispatch mode would send dynamo back to eager
        self.profiler: torch.profiler.profile | None = None
        self.table = ""
        self.t0 = self.t1 = None
        self.stamps: list[float] = []  # the start of every timed step (and the end of the last)
        self.mem_mb: float | None = None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.rss0 = _rss_mb()
        self.counts: list[int] | None = None  # the trainee's (real, computed) token counters
        self.counter: WeightBytes | None = None
        self.weight_mb: float | None = None  # weight-side MB per seed-step of the step after the timed ones
        self.sizes: set[int] = set()
        self.tokens = (0, 0)  # (real, computed) over the timed steps

    def on_train_start(self, model: nn.Module, optimizer, total_steps: int) -> None:
        self.counts = model.__dict__.get("token_counts")
        self.sizes = {p.numel() for p in model.parameters()}
        self.seeds = int(getattr(model, "seeds", 1))

    def on_after_optimizer_step(self, model: nn.Module, step: int) -> None:
        if self.counter is not None:  # the step after the timed ones: its weight-side bytes, counted
            self.counter.__exit__(None, None, None)
            self.weight_mb = self.counter.bytes / self.seeds / 1e6
            self.counter = None

    def _tokens(self) -> tuple[int, int]:
        return (0, 0) if self.counts is None else (self.counts[0], self.counts[1])

    def on_step_start(self, step: int) -> None:
        if self.warmup < step < self.warmup + self.steps and self.device.type != "cuda":
            self.stamps.append(time.perf_counter())  # CPU work is synchronous: per-step times are real
        if step == self.warmup:
            if self.trace is not None:
                kinds = [torch.profiler.ProfilerActivity.CPU]
                if self.device.type == "cuda":
                    kinds.append(torch.profiler.ProfilerActivity.CUDA)
                self.profiler = torch.profiler.profile(activities=kinds)
                self.profiler.start()
            _sync(self.device)
            self.t0 = time.perf_counter()
            self.stamps = [self.t0]
            self.tokens0 = self._tokens()
        elif step == self.warmup + self.steps:
            _sync(self.device)
            self.t1 = time.perf_counter()
            self.stamps.append(self.t1)
            now = self._tokens()
            self.tokens = (now[0] - self.tokens0[0], now[1] - self.tokens0[1])
            if self.profiler is not None:
                self.profiler.stop()
                self.trace.parent.mkdir(parents=True, exist_ok=True)
                self.profiler.export_chrome_trace(str(self.trace))
                key = "self_device_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
                self.table = self.profiler.key_averages().table(sort_by=key, row_limit=15)
            if self.device.type == "cuda":
                self.mem_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            elif self.rss0 is not None and (now := _rss_mb()) is not None:
                self.mem_mb = max(0.0, now - self.rss0)
            if self.sizes and self.count_bytes:  # our loop's rows (not Trainer's): count this untimed step
                self.counter = WeightBytes(self.sizes)
                self.counter.__enter__()

    @property
    def seconds(self) -> float:
        if self.t0 is None or self.t1 is None:
            raise RuntimeError("the timed steps did not run")
        return self.t1 - self.t0

    @property
    def step_seconds(self) -> float:
        """Seconds per step: CUDA: the timed wall time / steps (kernels run asynchronously); CPU: the
        median step, which a burst of other load on a shared machine moves least."""
        if self.device.type == "cuda" or len(self.stamps) < 2:
            return self.seconds / self.steps
        return float(np.median(np.diff(self.stamps)))


# ---------------------------------------------------------------------------- the rows


def _spec(model: str, task: dict, batch: int, seq: int, total: int, device: str, precision: str, compile_: bool,
          seed: int = 0, engine: str = "auto", checkpoint_layers: bool = False, optim: str = "adamw"):
    from transferlab.spec import load_spec

    return load_spec({
        # every row computes the same model, with BERT's dropout 0.1 as a fine-tuning has it
        "name": "bench", "seed": seed, "model": {"name": model, "max_length": seq, "init": "random", "dropout": 0.1},
        "task": task, "head": {"name": "cls"},
        "optim": {"name": optim, "lr": 2e-5}, "schedule": {"name": "linear"},
        "train": {"max_steps": total, "batch_size": batch, "eval_batch_size": 16, "num_evals": 1, "log_every": 10**9,
                  "save_model": False, "device": device, "precision": precision, "compile": compile_,
                  "engine": engine, "checkpoint_layers": checkpoint_layers},
    })


def _trainer_row(spec, timer: Timer, device: torch.device, amp) -> Timer:
    """transformers.Trainer on our model (wrapped to return the loss) and our encoded data, padded per
    batch by its collator (whose masks give the row's token counts)."""
    import transformers as tf

    from transferlab.data.build import build_task
    from transferlab.models.model import build_model
    from transferlab.train.batches import encode

    task = build_task(spec.task, seed=spec.seed)
    model = build_model(spec, task)
    enc = encode(task.splits["train"], task, model.backbone.tokenizer, spec.model.max_length)
    rows = [{"input_ids": enc.ids[a:b].tolist(), "labels": int(enc.labels[i]),
             **({} if enc.types is None else {"token_type_ids": enc.types[a:b].tolist()})}
            for i, (a, b) in enumerate(zip(enc.offsets[:-1], enc.offsets[1:]))]
    pad = tf.DataCollatorWithPadding(model.backbone.tokenizer)
    timer.counts = [0, 0]

    def collate(features):
        batch = pad(features)
        timer.counts[0] += int(batch["attention_mask"].sum())
        timer.counts[1] += batch["attention_mask"].numel()
        return batch

    class Clock(tf.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            timer.on_step_start(state.global_step)

    with tempfile.TemporaryDirectory() as out:
        args = tf.TrainingArguments(
            output_dir=out, per_device_train_batch_size=spec.train.batch_size, max_steps=spec.train.max_steps,
            learning_rate=spec.optim.lr, weight_decay=spec.optim.weight_decay, max_grad_norm=spec.optim.max_grad_norm,
            lr_scheduler_type="linear", bf16=amp == torch.bfloat16, use_cpu=device.type != "cuda",
            report_to="none", save_strategy="no", logging_strategy="no", eval_strategy="no", disable_tqdm=True,
            dataloader_num_workers=0, seed=spec.seed, remove_unused_columns=False)
        trainer = tf.Trainer(model=_WithLoss(model), args=args, train_dataset=rows, callbacks=[Clock()],
                             data_collator=collate)
        trainer.remove_callback(tf.trainer_callback.PrinterCallback)  # its end-of-training metrics line
        trainer.train()
    return timer


class _WithLoss(nn.Module):
    """Our TransferModel as Trainer wants it: keyword inputs with ``labels`` in, ``{"loss", "logits"}`` out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None):
        logits = self.model(input_ids, attention_mask, token_type_ids)
        return {"loss": nn.functional.cross_entropy(logits.float(), labels), "logits": logits}


def _check(rows, seeds, steps, warmup, repeat, task, data) -> None:
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise UserError(f"--rows: {unknown[0]!r} is not one of {', '.join(ROWS)}")
    if min(seeds, default=1) < 1 or steps < 1 or warmup < 0 or repeat < 1:
        raise UserError("--seeds, --steps and --repeat must be >= 1, --warmup >= 0")
    if (task is None) != (data is None):
        raise UserError("--task and --data go together: a GLUE task name and its folder")
    if data is not None and not Path(data).is_dir():
        raise UserError(f"--data: folder {data} does not exist")


def _plan(rows, seeds, make, store, dev, amp, probe) -> list[tuple[str, int, Any]]:
    """(row, seeds, train(timer)) for every row asked for; ``make(seed, engine)`` gives a spec."""
    from transferlab.train.loop import run, run_seeds

    plan: list[tuple[str, int, Any]] = []
    if "trainer" in rows:
        plan.append(("trainer", 1, lambda t: _trainer_row(probe, t, dev, amp)))
    if "single" in rows:
        plan.append(("single", 1, lambda t: run(make(0, "general"), store, progress=False, hooks=[t], force=True)))
    for row in ("parallel", "fast", "fast-padded"):
        if row not in rows:
            continue
        for s in seeds:
            specs = [make(i, ENGINES[row]) for i in range(s)]
            go = run_seeds if s > 1 else (lambda sp, *a, **k: [run(sp[0], *a, **k)])
            plan.append((f"{row} S={s}", s,
                         lambda t, specs=specs, go=go: go(specs, store, progress=False, hooks=[t], force=True)))
    for row in ("slots", "slots-dropout"):
        if row in rows:
            plan += _slot_rows(seeds, make, store, row)
    return plan


# the mixed slots of the "slots" row (issue 24), taken in turn, seed-major: every arm of a seed, then the next seed
SLOT_ARMS = ({}, {"optim.name": "bertadam", "optim.lr": 5e-5},
             {"optim.lr": 1e-4, "optim.weight_decay": 0.0, "schedule.name": "cosine"},
             {"init.reinit_layers": 1, "optim.layer_decay": 0.9, "schedule.warmup_steps": 2})


# the per-slot dropout of the "slots-dropout" row (train.dropout_rng: run), taken in turn with SLOT_ARMS
SLOT_DROPOUT = (0.1, 0.0, 0.1, 0.05)


def _slot_rows(seeds, make, store, row: str = "slots") -> list[tuple[str, int, Any]]:
    """``slots S=n``: n runs of different arms (LR, BERTAdam beside AdamW, weight decay, schedule, re-init and
    layer decay) as the slots of one stacked group (auto: the fused encoder where it applies).
    ``slots-dropout S=n``: the same arms, each also at its own dropout (SLOT_DROPOUT) drawn from its run's
    own stream (train.dropout_rng: run; the general stacked engine, eager attention): against
    ``parallel S=n`` it prices the streams."""
    from transferlab.spec import load_spec, to_dict
    from transferlab.train.loop import run_seeds

    plan: list[tuple[str, int, Any]] = []
    for s in (n for n in seeds if n > 1):
        specs = []
        for i in range(s):
            over = dict(SLOT_ARMS[i % len(SLOT_ARMS)])
            if row == "slots-dropout":
                over.update({"train.dropout_rng": "run", "train.engine": "general",
                             "model.dropout": SLOT_DROPOUT[i % len(SLOT_DROPOUT)]})
            specs.append(load_spec(to_dict(make(i // len(SLOT_ARMS), "auto")), over))
        plan.append((f"{row} S={s}", s,
                     lambda t, specs=specs: run_seeds(specs, store, progress=False, hooks=[t], force=True)))
    return plan


def _measure(plan, repeat: int, warmup: int, steps: int, batch: int, dev, profile, out,
             count_bytes: bool = True, measured=None) -> dict[str, list[Timer]]:
    """Every row ``repeat`` times in rotation (slow drifts in the machine's load hit every row alike);
    ``measured(row, timers)`` is called as soon as a row has been measured (bench's JSON file is written then)."""
    timers: dict[str, list[Timer]] = {row: [] for row, _, _ in plan}
    for rep in range(repeat):
        for row, s, train in plan:
            tag = row.replace(" ", "_").replace("=", "") + (f"_{rep}" if repeat > 1 else "")
            timer = Timer(warmup, steps, dev, None if profile is None else Path(profile) / f"{tag}.json", count_bytes)
            try:
                train(timer)
            except (RuntimeError, torch.OutOfMemoryError) as exc:  # one row's failure (e.g. out of memory)
                out(f"  {row} ({rep + 1}/{repeat}) FAILED: {type(exc).__name__}: {exc}")  # must not hide the others
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            timers[row].append(timer)
            if measured is not None:
                measured(row, timers)
            if timer.table:
                out(f"profile of {row} (trace: {timer.trace}):\n{timer.table}")
            out(f"  {row} ({rep + 1}/{repeat}): {s * batch / timer.step_seconds:.1f} samples/s")
    return timers


def _summarise(plan, timers, batch: int, steps: int, repeat: int, flops_at, peak: float) -> list[Row]:
    results: list[Row] = []
    for row, s, _ in plan:
        if not timers[row]:
            continue  # failed every time; printed above
        rates = [s * batch / t.step_seconds for t in timers[row]]
        rate = float(np.median(rates))
        mems = [t.mem_mb for t in timers[row] if t.mem_mb is not None]
        real = sum(t.tokens[0] for t in timers[row])
        computed = sum(t.tokens[1] for t in timers[row])
        per_sample = real / (len(timers[row]) * steps * s * batch) if real else 0.0
        base = results[0].samples_s if results and results[0].name == "trainer" else None
        counted = [t.weight_mb for t in timers[row] if t.weight_mb is not None]
        results.append(Row(row, s, rate, rate / s, rate / base if base else None, rate * flops_at(per_sample) / peak,
                           max(mems) / s if mems else None, steps, sum(t.seconds for t in timers[row]),
                           min(rates), max(rates), repeat, rate * per_sample,
                           1.0 - real / computed if computed else 0.0, counted[-1] if counted else None))
    return results


def bench(model: str = "minilm", *, batch: int = 32, seq: int = 64, steps: int = 20, warmup: int = 3,
          seeds: tuple[int, ...] = (1, 4, 8, 20), rows: tuple[str, ...] = ROWS[:3], device: str = "auto",
          precision: str = "auto", compile: str = "auto", repeat: int = 1, profile: str | Path | None = None,
          task: str | None = None, data: str | Path | None = None, checkpoint_layers: bool = False,
          optim: str = "adamw", json_path: str | Path | None = None, append: bool = False,
          out=print) -> dict[str, Any]:
    """Run the rows ``repeat`` times in rotation; returns ``{"setup": {...}, "rows": [Row...]}`` (as
    dicts) and prints a table. ``profile``: a folder; the timed steps are profiled (slower) and traced there.
    ``task``/``data``: a GLUE task and its folder (real lengths) instead of synthetic sentences.
    ``checkpoint_layers``: every row but Trainer recomputes its layers in the backward (train.checkpoint_layers).
    ``json_path``: each row is written there as soon as it is measured (:class:`RowFile`; ``append``: rows already
    in the file stay), so a bench killed midway keeps the rows it measured."""
    from transferlab.models.backbone import load_backbone
    from transferlab.models.heads import build_head
    from transferlab.models.model import TransferModel
    from transferlab.spec import ModelSpec
    from transferlab.store import Store
    from transferlab.train.steps import autocast_dtype, resolve_device

    _check(rows, seeds, steps, warmup, repeat, task, data)
    from transferlab.recipes.optim import OPTIMIZERS

    OPTIMIZERS.get(optim, field="--optim")
    dev = resolve_device(device)
    compile_ = dev.type == "cuda" if compile == "auto" else compile == "on"
    amp = autocast_dtype(precision, dev)
    total = warmup + steps + 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        name = resolve_model(model, tmp, synthetic=task is None)
        backbone = load_backbone(ModelSpec(name=name, init="random", max_length=seq))
        task_spec = ({"name": task, "path": str(data), "max_eval_samples": 16} if task else  # evaluation is untimed
                     {"name": "csv", "path": str(make_data(tmp / "data", backbone.tokenizer, batch * total, seq))})
        probe = _spec(name, task_spec, batch, seq, total, device, precision, compile_)
        reference = TransferModel(backbone, build_head("cls", backbone.hidden_size, backbone.num_layers, 2, 0.1))
        flops = flops_per_sample(reference, seq)
        peak = matmul_peak(dev, amp or torch.float32)
        setup = {"model": model, "device": str(dev), "device_name": _device_name(dev), "precision": str(amp or "fp32"),
                 "compile": compile_, "batch": batch, "seq": seq, "steps": steps, "warmup": warmup, "repeat": repeat,
                 "threads": torch.get_num_threads(), "flops_per_sample": flops, "peak_flops": peak,
                 "task": task or "synthetic", "checkpoint_layers": checkpoint_layers, "optim": optim,
                 "date": time.strftime("%Y-%m-%d")}
        out(f"bench: {model} on {setup['device_name']} ({setup['precision']}), batch {batch}, {seq} tokens "
            f"({setup['task']}), {steps} timed steps after {warmup}; {flops / 1e9:.2f} GFLOP/sample at {seq} tokens; "
            f"matmul peak {peak / 1e12:.2f} TFLOP/s")
        store = Store(tmp / "bench.db")
        plan = _plan(rows, seeds, lambda i, engine: _spec(name, task_spec, batch, seq, total, device, precision,
                                                          compile_, seed=i, engine=engine,
                                                          checkpoint_layers=checkpoint_layers, optim=optim),
                     store, dev, amp, probe)
        writer = None if json_path is None else RowFile(json_path, setup, append)

        def measured(row: str, timers: dict[str, list[Timer]]) -> None:
            if writer is not None:  # this row (and Trainer's, for its ratio) summarised so far
                part = [p for p in plan if p[0] in (row, "trainer") and timers[p[0]]]
                writer.put(next(r for r in _summarise(part, timers, batch, steps, repeat, flops_at, peak)
                                if r.name == row))

        flops_at = (lambda tokens: flops_per_sample(reference, tokens if task else seq))  # noqa: E731
        timers = _measure(plan, repeat, warmup, steps, batch, dev, profile, out, count_bytes=not compile_,
                          measured=measured)
        store.close()
    results = _summarise(plan, timers, batch, steps, repeat, flops_at, peak)
    failed = sorted(row for row, _, _ in plan if len(timers[row]) < repeat)
    if writer is not None:
        writer.failed = failed
        for r in results:  # the final medians (the same as written per row when repeat is 1)
            writer.put(r)
    out(format_rows(results))
    return {"setup": setup, "rows": [asdict(r) for r in results], "failed": failed}


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    from transferlab.provenance import hardware

    return str(hardware().get("cpu") or "CPU")


def format_rows(rows: list[Row], header: bool = True) -> str:
    lines = []
    if header:
        lines += [("| row | seeds | samples/s | range | per seed | x Trainer | tokens/s | padded | MFU | memory/seed "
                   "| weight MB/seed-step | timed |"), "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        mem = "n/a" if r.mem_per_seed_mb is None else (f"{r.mem_per_seed_mb / 1024:.2f} GiB" if r.mem_per_seed_mb > 1024
                                                          else f"{r.mem_per_seed_mb:.0f} MiB")
        ratio = "" if r.vs_trainer is None else f"{r.vs_trainer:.2f}"
        lines.append(f"| {r.name} | {r.seeds} | {r.samples_s:.1f} | {r.low:.1f}-{r.high:.1f} | {r.per_seed:.1f} | {ratio} "
                     f"| {r.tokens_s:.0f} | {100 * r.padded_share:.1f}% | {100 * r.mfu:.1f}% | {mem} "
                     f"| {'n/a' if r.weight_mb is None else f'{r.weight_mb:.1f}'} "
                     f"| {r.repeats} x {r.steps} steps, {r.seconds:.1f}s |")
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=1))


class RowFile:
    """bench's ``--json`` file, rewritten whole (a temporary file renamed over it) each time a row is measured, so
    a bench killed midway keeps every row it measured. Each row carries the setup it was measured under (model,
    device, precision, compile, checkpoint_layers...), so rows of several commands can share one file: with
    ``append`` the rows already there are kept (benchmarks/gpu_check.sh gathers its bench steps this way)."""

    ROW_SETUP = ("model", "device", "device_name", "precision", "compile", "batch", "seq", "task", "checkpoint_layers",
                 "optim", "date")

    def __init__(self, path: str | Path, setup: dict[str, Any], append: bool = False):
        self.path, self.setup, self.failed = Path(path), setup, []
        self.kept: list[dict[str, Any]] = []
        if append and self.path.is_file():
            try:
                self.kept = list(json.loads(self.path.read_text()).get("rows", []))
            except (ValueError, AttributeError):
                raise UserError(f"--json: {self.path} is not a bench JSON file (cannot append to it)") from None
        self.rows: dict[str, dict[str, Any]] = {}
        self.write()

    def put(self, row: Row) -> None:
        self.rows[row.name] = {**asdict(row), **{k: self.setup[k] for k in self.ROW_SETUP}}
        self.write()

    def write(self) -> None:
        data = {"setup": self.setup, "rows": self.kept + list(self.rows.values()), "failed": self.failed}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.path)
