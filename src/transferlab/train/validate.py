"""Check a run spec before a run row exists: a mistake is one line naming the field, file or line.

    validate_run(spec)            values, device and precision, the task's files, the model's loadability
    validate_runs(specs)          the same for many specs (a study), each distinct task and model once

What is checked (each raises a SpecError, DataError or ModelError, all UserErrors):
    values     counts >= 1 (batch sizes, grad_accum, log_every, num_evals, max_steps, patience,
               checkpoint_every, sample limits, max_length), epochs > 0, lr > 0, probabilities in range
    device     auto, cpu, cuda, cuda:N or mps, and present on this machine
    precision  bf16/fp16 only where the run's device is CUDA (and bf16 only where the GPU has it): on CPU
               an explicit half precision cannot be honoured, so it is an error, not silently fp32
    task       a registered name; task.path and named files exist; the user's own files (csv, tsv, jsonl)
               are read in full exactly as the run will (encoding, columns, labels); other tasks' top-level
               text files in task.path are checked to be readable UTF-8
    model      a folder has a readable config.json and weights whose safetensors headers parse; a hub id
               resolves its config (from the cache when offline); aliases need nothing
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from transferlab.checks import check_utf8
from transferlab.errors import DataError, ModelError, SpecError
from transferlab.recipes.optim import OPTIMIZERS, check_state_dtype
from transferlab.spec import ModelSpec, RunSpec, TaskSpec, to_dict

TEXT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".txt")
FILE_TASKS = ("csv", "tsv", "jsonl")
DEVICE_TYPES = ("cpu", "cuda", "mps")


def validate_run(spec: RunSpec, *, data: bool = True, model: bool = True) -> None:
    """Raise a UserError for the first mistake in ``spec``; return None when the run can start."""
    check_values(spec)
    check_device(spec.train.device, spec.train.precision)
    if data:
        check_task(spec.task, spec.seed)
    if model:
        check_model(spec.model)
        check_checkpointing(spec)


def validate_runs(specs: list[RunSpec]) -> None:
    """``validate_run`` for each spec; a task or model shared by several specs is checked once."""
    tasks, models = set(), set()
    for spec in specs:
        tkey = json.dumps(to_dict(spec.task), sort_keys=True)
        mkey = json.dumps(to_dict(spec.model), sort_keys=True)
        validate_run(spec, data=tkey not in tasks, model=mkey not in models)
        tasks.add(tkey)
        models.add(mkey)


# --------------------------------------------------------------------------- values


def _at_least(where: str, value, low: int = 1) -> None:
    if value is not None and value < low:
        raise SpecError(f"{where}: must be at least {low}, got {value}")


def _positive(where: str, value) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise SpecError(f"{where}: must be a number > 0, got {value}")


def check_values(spec: RunSpec) -> None:
    t, o, s = spec.train, spec.optim, spec.schedule
    if o.state_dtype != "fp32" and not OPTIMIZERS.supports(o.name, "state_dtype"):
        check_state_dtype(o, seed_stacked=True)  # names the optimizer that does not declare it
    for name in ("batch_size", "eval_batch_size", "grad_accum", "log_every", "num_evals", "max_steps",
                 "early_stopping_patience", "checkpoint_every"):
        _at_least(f"train.{name}", getattr(t, name))
    _positive("train.epochs", t.epochs)
    _positive("train.divergence_factor", t.divergence_factor)
    _positive("optim.lr", o.lr)
    _positive("optim.head_lr", o.head_lr)
    _positive("optim.eps", o.eps)
    _positive("optim.layer_decay", o.layer_decay)
    _positive("optim.max_grad_norm", o.max_grad_norm)
    if not o.weight_decay >= 0:
        raise SpecError(f"optim.weight_decay: must be >= 0, got {o.weight_decay}")
    for i, b in enumerate(o.betas):
        if not 0 <= b < 1:
            raise SpecError(f"optim.betas[{i}]: must be in [0, 1), got {b}")
    _at_least("schedule.warmup_steps", s.warmup_steps, 0)
    if not 0 <= s.warmup_ratio < 1:
        raise SpecError(f"schedule.warmup_ratio: must be in [0, 1), got {s.warmup_ratio}")
    _at_least("model.max_length", spec.model.max_length)
    _at_least("model.num_layers", spec.model.num_layers)
    for name in ("max_train_samples", "max_eval_samples", "few_sample"):
        _at_least(f"task.{name}", getattr(spec.task, name))
    if not 0 <= spec.head.dropout < 1:
        raise SpecError(f"head.dropout: must be in [0, 1), got {spec.head.dropout}")


def check_checkpointing(spec: RunSpec) -> None:
    """train.checkpoint_layers needs a model whose layers can be recomputed (Hugging Face's
    ``supports_gradient_checkpointing``; the LSTM baseline has no layers to recompute)."""
    if not spec.train.checkpoint_layers:
        return
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    from transferlab.models.backbone import model_type_of

    kind = model_type_of(spec.model)
    name = MODEL_MAPPING_NAMES.get(kind)
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    if kind == "lstm" or (cls is not None and not cls.supports_gradient_checkpointing):
        raise SpecError(f"train.checkpoint_layers: the {kind} model ({spec.model.name}) cannot recompute its layers "
                        "(no activation checkpointing); set it to false")


# --------------------------------------------------------------------------- device


def check_device(name: str, precision: str) -> torch.device:
    """The device ``train.device`` names, after checking it exists here and suits ``train.precision``."""
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name)
        except (RuntimeError, ValueError):
            device = None
        if device is None or device.type not in DEVICE_TYPES:
            raise SpecError(f"train.device: {name!r} is not a device; allowed: auto, cpu, cuda, cuda:N, mps")
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise SpecError(f"train.device: {name!r} asked for but CUDA is not available here; use cpu or auto")
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise SpecError(f"train.device: {name!r}: this machine has {torch.cuda.device_count()} CUDA devices")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise SpecError(f"train.device: {name!r} asked for but MPS is not available here; use cpu or auto")
    if precision in ("bf16", "fp16") and device.type != "cuda":
        raise SpecError(f"train.precision: {precision!r} runs on CUDA only and this run's device is "
                        f"{device.type}; use 'auto' (fp32 off CUDA) or 'fp32'")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise SpecError("train.precision: 'bf16' is not supported by this GPU; use 'fp16', 'fp32' or 'auto'")
    return device


# --------------------------------------------------------------------------- task


def check_task(task: TaskSpec, seed: int = 0) -> None:
    from transferlab.data.build import _register_tasks, build_task
    from transferlab.data.task import TASKS

    _register_tasks()
    TASKS.get(task.name, field="task.name")
    root = Path(task.path).expanduser() if task.path else None
    if root is not None and not root.exists():
        raise DataError(f"task.path: {task.path} does not exist")
    if TASKS.canonical(task.name) in FILE_TASKS:
        build_task(task, seed=seed)  # the user's own files: read exactly as the run reads them
        return
    files = []
    if root is not None and root.is_dir():
        files = [p for p in sorted(root.iterdir()) if p.suffix in TEXT_SUFFIXES and p.is_file()]
    elif root is not None and root.suffix in TEXT_SUFFIXES:
        files = [root]
    for field in ("train_file", "dev_file", "test_file"):
        if (name := getattr(task, field)) is not None:
            p = Path(name).expanduser()
            p = root / p if root is not None and root.is_dir() and not p.is_absolute() else p
            if not p.is_file():
                raise DataError(f"task.{field}: {p} does not exist")
            files.append(p)
    for p in dict.fromkeys(files):
        check_utf8(p, "data file")


# --------------------------------------------------------------------------- model


def check_model(spec: ModelSpec) -> None:
    from transferlab.models.backbone import TINY_ALIASES
    from transferlab.models.common import minilm_path
    from transferlab.models.lstm import is_lstm

    if is_lstm(spec.name) or spec.name in TINY_ALIASES:
        return
    if spec.name == "minilm":
        return _check_folder(minilm_path(), spec)
    if spec.name in ("antiberty", "antiberty-text"):  # packaged weights: models/antiberty.py checks them
        from transferlab.models.antiberty import check_init

        return check_init(spec.name, spec.init)
    folder = Path(spec.name).expanduser()
    if folder.is_dir():
        return _check_folder(folder, spec)
    if spec.name.startswith(("/", "./", "../", "~")):
        raise ModelError(f"model.name: folder {spec.name} does not exist")
    _check_hub(spec)


def _check_folder(folder: Path, spec: ModelSpec) -> None:
    from safetensors import SafetensorError, safe_open

    config = folder / "config.json"
    if not config.is_file():
        raise ModelError(f"model.name: folder {folder} has no config.json; expected a save_pretrained folder")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"model.name: {config} is not a readable JSON config ({e})") from None
    if spec.init == "random":
        return  # only the config is used
    weights = sorted(folder.glob("*.safetensors"))
    if not weights and not list(folder.glob("pytorch_model*.bin")):
        raise ModelError(f"model.name: folder {folder} has no weights (*.safetensors or pytorch_model.bin)")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError) as e:
            raise ModelError(f"model.name: {index} is damaged ({e})") from None
        if missing := sorted(s for s in shards if not (folder / s).is_file()):
            raise ModelError(f"model.name: folder {folder} lacks the weight shard {missing[0]}")
    for path in weights:
        try:  # parses the header and checks that it covers the file (a truncated copy fails here)
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError) as e:
            raise ModelError(f"model.name: weights file {path} is damaged or incomplete ({e})") from None


def _check_hub(spec: ModelSpec) -> None:
    import transformers as tf

    from transferlab.models.backbone import _not_found, _offline

    offline = _offline(spec)
    try:
        tf.AutoConfig.from_pretrained(spec.name, revision=spec.revision, local_files_only=offline,
                                      trust_remote_code=spec.trust_remote_code)
    except OSError as e:
        raise _not_found(spec, offline, e) from None
    except ValueError as e:
        raise ModelError(f"model.name: {spec.name!r} cannot be loaded: {e}") from None
