"""A rough expected wall time of a study's runs, for ``--dry-run`` (``transferlab run STUDY --profile cpu --dry-run``).

Rough, and printed as such: each run costs its training samples x the model's FLOPs per training sample
(6 x tokens x the backbone's linear weights, as ``transferlab bench`` counts them), plus its evaluations
(a forward pass, a third of that per example), divided by an effective FLOP rate recorded in
docs/benchmarks.md, plus a fixed start-up per run:

* CPU: MiniLM, batch 32, 64 tokens, 2 threads on the project's 2-core AMD EPYC machine (2026-11-23):
  5.7 samples/s at 4.19 GFLOP per training sample = 23.9 GFLOP/s.
* GPU: BERT-base, batch 32, 128 tokens, eager, one H100 (``single`` row): 1019.4 samples/s at 67.0 GFLOP
  = 68.3 TFLOP/s.

Tokens per example: an array task's sequence length (patches, bits), else a text's words x 1.3 + 3 (the pair's
too), capped at model.max_length. Frozen backbones, padding, seed-parallel groups and other jobs on the
machine are not modelled; runs are summed one after another.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from transferlab.errors import DataError, UserError

CPU_FLOPS = 5.7 * 4.19e9  # docs/benchmarks.md, "CPU: MiniLM on the 2-core development machine"
GPU_FLOPS = 1019.4 * 67.0e9  # docs/benchmarks.md, H100 bert-base `single`, compile off
START_S = {"cpu": 10.0, "gpu": 5.0}  # loading the model and the data, per run (a guess, not measured)
GENERATED_TASKS = ("digits", "bit_memory", "bit_xor")  # built here without a path; any other task needs task.path
SOURCE = ("recorded figures in docs/benchmarks.md (CPU: MiniLM 5.7 samples/s at 4.19 GFLOP on the 2-core "
          "machine; GPU: BERT-base 1019 samples/s at 67 GFLOP on one H100)")


def _duration(seconds: float) -> str:
    h, rest = divmod(int(seconds), 3600)
    return f"{h} h {rest // 60} min" if h else f"{max(1, round(seconds / 60))} min"


@dataclass
class Estimate:
    runs: int
    seconds: dict  # device ("cpu", "gpu") -> summed seconds; a device the runs name, or both for device auto
    unknown: int  # runs without an estimate (no model config, no task data here)

    def line(self) -> str:
        where = {"cpu": "on the 2-core CPU", "gpu": "on one GPU (H100)"}
        times = " or ".join(f"about {_duration(s)} {where[d]}" for d, s in self.seconds.items())
        miss = (f"; {self.unknown} runs without a figure (the model's config or the task's data is not here)"
                if self.unknown else "")
        if not self.seconds:
            return f"expected wall time: no estimate for {self.runs} runs{miss}"
        return (f"expected wall time (rough estimate): {times} for {self.runs} runs one after another, from the "
                f"{SOURCE}{miss}")


def run_devices(spec) -> tuple[str, ...]:
    """The devices a run may train on: the one it names, or both (device auto: whichever the machine has)."""
    if spec.train.device.startswith("cuda"):
        return ("gpu",)
    return ("cpu", "gpu") if spec.train.device == "auto" else ("cpu",)


def _tokens(split, max_length: int) -> int:
    if split.inputs is not None and getattr(split.inputs, "ndim", 0) >= 2:
        return max(1, min(max_length, int(split.inputs.shape[1])))
    texts = (split.texts or [])[:500]
    pairs = (split.text_pairs or [])[:500]
    if not texts:
        return max_length
    words = sum(len(t.split()) for t in texts) / len(texts) + (sum(len(t.split()) for t in pairs) / len(pairs)
                                                                if pairs else 0)
    return max(1, min(max_length, int(words * 1.3 + 3)))


def _task_shape(spec, cache: dict) -> tuple[int, int, int]:
    """(train examples, evaluated examples, tokens per example) of the run's task, built once per task spec."""
    from transferlab.data.build import build_task

    if spec.task.path is None and spec.task.name not in GENERATED_TASKS:
        raise DataError(f"task {spec.task.name}: no task.path; its data would come from the hub")  # not fetched here
    key = json.dumps([spec.task.__dict__, spec.seed if spec.task.few_sample else 0], sort_keys=True, default=str)
    if key not in cache:
        task = build_task(spec.task, seed=spec.seed)
        train = task.splits["train"]
        evaluated = len(task.splits.get("dev", [])) * (spec.train.num_evals + 1) + len(task.splits.get("test", []))
        cache[key] = (len(train), evaluated, _tokens(train, spec.model.max_length))
    return cache[key]


def _linear_weights(spec, cache: dict) -> int | None:
    from transferlab.train.memory import _config

    if spec.model.name not in cache:
        config = _config(spec)
        h = getattr(config, "hidden_size", None)
        if not isinstance(h, int):
            cache[spec.model.name] = None
        else:
            ffn = getattr(config, "intermediate_size", None) or 4 * h
            cache[spec.model.name] = (config.num_hidden_layers, 4 * h * h + 2 * h * ffn)
    shape = cache[spec.model.name]
    if shape is None:
        return None
    layers = spec.model.num_layers or shape[0]
    return layers * shape[1]


def run_flops(spec, tasks: dict, models: dict) -> float | None:
    """One run's FLOPs (training and evaluation); None when the model's shape is not known here."""
    weights = _linear_weights(spec, models)
    if weights is None or spec.multitask is not None:
        return None
    try:
        n_train, n_eval, tokens = _task_shape(spec, tasks)
    except (UserError, OSError):  # the task's data is not here (a hub task offline, a path left null)
        return None
    batch = spec.train.batch_size * spec.train.grad_accum
    steps = spec.train.max_steps or math.ceil(spec.train.epochs * n_train / batch)
    if spec.intermediate is not None:  # STILTs: the intermediate task's steps first, at the same batch
        steps += spec.intermediate.steps
    return 6 * tokens * weights * (steps * batch + n_eval / 3)


def estimate(specs: list) -> Estimate:
    """The summed rough wall time of ``specs`` (each a RunSpec of the plan) per device they may use."""
    tasks: dict = {}
    models: dict = {}
    seconds: dict = {}
    unknown = 0
    for spec in specs:
        flops = run_flops(spec, tasks, models)
        if flops is None:
            unknown += 1
            continue
        for device in run_devices(spec):
            rate = GPU_FLOPS if device == "gpu" else CPU_FLOPS
            seconds[device] = seconds.get(device, 0.0) + flops / rate + START_S[device]
    return Estimate(len(specs), seconds, unknown)


def plan_specs(study, plan) -> list:
    """Every run the study will train: the LR-search runs, then the main runs (at the first grid LR where the
    LRs are not chosen yet: the cost does not depend on it; a main run the search already made is not counted)."""
    from transferlab.study.expand import cell_defs, expand

    main = plan.main
    if study.lr_search is not None:
        main = expand(study, {(c.task, c.cell): study.lr_search.grid[0] for c in cell_defs(study)})
    elif study.search is not None:
        return [p.spec for p in plan.search + plan.main] + plan.trials * max(1, study.search.trials * len(study.search.seeds))
    seen = {p.run_id for p in plan.search}
    return [p.spec for p in plan.search] + [p.spec for p in main if p.run_id not in seen]
