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
               resolves its config (from the cache when offline); aliases need nothing; for a text task a
               folder or hub id has a real tokenizer (a vocabulary of at least MIN_VOCAB entries, and a sample
               sentence that does not come back as unknown tokens)
    recipe     seed in [0, 2**32); optimizer and schedule names and values; init.std; re-init depth and
               init rules' layers against the model's layers (its config, on the meta device: no weights);
               transplant sources and distillation teachers (folders checked like model.name, stored runs
               looked up in their store)
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


MIN_VOCAB = 100  # fewer entries: a tokenizer built from nothing (a folder without tokenizer files)
SEED_LIMIT = 2**32  # numpy's seeds: [0, 2**32)
NON_TEXT_TASKS = ("bit_memory", "bit_xor", "digits", "mnist", "cifar10", "cifar10_gray", "listops", "protein")


def validate_run(spec: RunSpec, *, data: bool = True, model: bool = True, store=None):
    """Raise a UserError for the first mistake in ``spec``. Returns the task when checking it meant
    building it (the user's own files, read in full), for the run to use, else None.
    ``store``: where stored runs named by transplant and distill steps are looked up."""
    check_values(spec)
    check_recipe(spec, store)
    check_device(spec.train.device, spec.train.precision)
    built = check_task(spec.task, spec.seed) if data else None
    if model:
        check_model(spec.model, text=_text_task(spec))
        check_checkpointing(spec)
        check_dropout_rng(spec)
    check_depth(spec)
    return built


def task_key(spec: RunSpec) -> tuple[str, int]:
    """What a built task depends on: the task section and the seed (few-sample draws, splits)."""
    return json.dumps(to_dict(spec.task), sort_keys=True), spec.seed


def validate_runs(specs: list[RunSpec], store=None) -> dict[tuple[str, int], object]:
    """``validate_run`` for each spec; a task or model shared by several specs is checked once.
    Returns the tasks built on the way, by ``task_key``, so that the loop does not build them again."""
    tasks, models, built = set(), set(), {}
    for spec in specs:
        tkey = task_key(spec)[0]
        mkey = json.dumps([to_dict(spec.model), _text_task(spec)], sort_keys=True)
        task = validate_run(spec, data=tkey not in tasks, model=mkey not in models, store=store)
        if task is not None:
            built[task_key(spec)] = task
        tasks.add(tkey)
        models.add(mkey)
    return built


def _text_task(spec: RunSpec) -> bool:
    from transferlab.data.build import _register_tasks
    from transferlab.data.task import TASKS

    _register_tasks()
    tasks = spec.multitask.tasks if spec.multitask is not None else [spec.task]
    return any(t.name in TASKS and TASKS.canonical(t.name) not in NON_TEXT_TASKS for t in tasks)


# --------------------------------------------------------------------------- recipe


def check_recipe(spec: RunSpec, store=None) -> None:
    """Seeds, names and values of the recipe's sections, and the files and runs they name."""
    from transferlab.recipes.optim import OPTIMIZERS
    from transferlab.recipes.schedules import SCHEDULES
    from transferlab.recipes.schedules import _check as check_schedule

    if not 0 <= spec.seed < SEED_LIMIT:
        raise SpecError(f"seed: {spec.seed} is outside [0, 2**32)")
    OPTIMIZERS.get(spec.optim.name, field="optim.name")
    SCHEDULES.get(spec.schedule.name, field="schedule.name")
    check_schedule(spec.schedule)
    if spec.init.std is not None and not (math.isfinite(spec.init.std) and spec.init.std > 0):
        raise SpecError(f"init.std: must be a number > 0, got {spec.init.std}")
    for i, step in enumerate(spec.transplant):
        if step.source is not None:
            _check_source(step.source, f"transplant[{i}].source")
        else:
            _check_stored(step.run, step.store, store, f"transplant[{i}].run", f"transplant[{i}].store")
    d = spec.distill
    if d.kind != "none" and d.teacher:
        if Path(d.teacher).expanduser().is_dir() or d.teacher.startswith(("/", "./", "../", "~")):
            _check_source(d.teacher, "distill.teacher")
        else:
            _check_stored(d.teacher, d.teacher_store, store, "distill.teacher", "distill.teacher_store")


def _check_source(name: str, where: str) -> None:
    """A model another part reads (a transplant source, a teacher folder): checked as model.name is."""
    try:
        folder = Path(name).expanduser()
        if folder.is_dir() and (folder / "head.json").is_file() and not (folder / "config.json").is_file():
            return  # a transferlab export without a config at the top: its loader checks it
        check_model(ModelSpec(name=name))
    except ModelError as e:
        raise ModelError(str(e).replace("model.name:", f"{where}:", 1)) from None


def _check_stored(ref: str | None, store_path: str | None, store, where: str, store_where: str) -> None:
    """A stored run named by ``ref``: its store exists and holds it (the run's own store when none is named)."""
    from transferlab.errors import UserError

    if store_path is not None:
        if not Path(store_path).expanduser().is_file():
            raise ModelError(f"{store_where}: {store_path} does not exist")
        from transferlab.store import Store

        store = Store(store_path, create=False)
    if store is None or ref is None:
        return  # the step's own check names what is missing
    try:
        row = store.get(ref)
    except UserError as e:
        raise ModelError(f"{where}: {e}") from None
    if row.status != "finished":
        raise ModelError(f"{where}: run {row.uid} is {row.status}, not finished; it has no final weights")


def check_depth(spec: RunSpec) -> None:
    """Re-init depth and init rules' layers against the model's layers, on a weightless (meta) copy."""
    init = spec.init
    if init.reinit_layers < 0:
        raise SpecError(f"init.reinit_layers: must be >= 0, got {init.reinit_layers}")
    if not init.reinit_layers and not init.rules and spec.model.num_layers is None:
        return
    from transferlab.recipes.init import init_rules, select

    skeleton = _skeleton(spec)  # model.num_layers beyond the model raises here, naming the field
    if skeleton is None:
        return  # no schema without a model (LSTM, unknown family): apply_init reports it, as before
    from transferlab.models.schema.base import schema_of

    schema = schema_of(skeleton)
    for i, (sel, _, _) in enumerate(init_rules(init, schema)):
        select(schema, sel, f"init rule {i} select")


def _skeleton(spec: RunSpec):
    """The backbone of ``spec.model`` on the meta device (its config only), or None where that cannot be built."""
    import transformers as tf

    from transferlab.models.backbone import TINY_ALIASES, _tiny_config
    from transferlab.models.common import minilm_path
    from transferlab.models.depth import keep_first_layers
    from transferlab.models.lstm import is_lstm

    m = spec.model
    if is_lstm(m.name) or m.name.startswith("antiberty"):
        return None
    try:
        if m.name in TINY_ALIASES:
            config = _tiny_config(m.name)[0]
        else:
            source = minilm_path() if m.name == "minilm" else m.name
            config = tf.AutoConfig.from_pretrained(source, revision=m.revision, local_files_only=True,
                                                   trust_remote_code=m.trust_remote_code)
        with torch.device("meta"):
            model = tf.AutoModel.from_config(config)
        return keep_first_layers(model, m.num_layers)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, NotImplementedError):
        return None


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


def check_dropout_rng(spec: RunSpec) -> None:
    """train.dropout_rng: run (models/dropout_streams.py) where every dropout draw goes through the run's stream:
    a BERT-family model (the layer loop), no recompute, no module added later, one task at a time."""
    if spec.train.dropout_rng != "run":
        return
    from transferlab.models.backbone import model_type_of
    from transferlab.models.schema import family_of

    kind = model_type_of(spec.model)
    family = family_of(kind)
    why = None
    if family is None or not family.layer_loop:
        why = f"the {kind} family does not declare 'layer_loop' (its FamilyMap): its attention draws elsewhere"
    elif spec.train.checkpoint_layers:
        why = "train.checkpoint_layers would draw new masks when it recomputes a layer; set one of them back"
    elif spec.multitask is not None:
        why = "a multi-task run draws from the global generator (train/multitask.py)"
    elif spec.freeze.name == "lora":
        why = "LoRA's own dropout modules are added after the streams (they would draw from the global generator)"
    elif spec.train.engine in ("fused", "fused-padded"):
        why = f"train.engine {spec.train.engine} draws one stream for the stack; use auto or general"
    if why is not None:
        raise SpecError(f"train.dropout_rng: run: {why}")


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


def check_task(task: TaskSpec, seed: int = 0):
    from transferlab.data.build import _register_tasks, build_task
    from transferlab.data.common import hub_datasets
    from transferlab.data.task import TASKS

    _register_tasks()
    TASKS.get(task.name, field="task.name")
    root = Path(task.path).expanduser() if task.path else None
    if root is not None and not root.exists():
        raise DataError(f"task.path: {task.path} does not exist")
    if TASKS.canonical(task.name) in FILE_TASKS:
        return build_task(task, seed=seed)  # the user's own files: read exactly as the run reads them
    if TASKS.canonical(task.name) == "hub":
        hub_datasets("task hub")  # an optional package: missing, one line before any run row
    from transferlab.data.glue import check_path

    check_path(task)  # not another GLUE task's folder
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


def check_model(spec: ModelSpec, text: bool = False) -> None:
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
    _check_weights(spec)
    if text:
        check_tokenizer(spec)


def _check_weights(spec: ModelSpec) -> None:
    folder = Path(spec.name).expanduser()
    if folder.is_dir():
        return _check_folder(folder, spec)
    if spec.name.startswith(("/", "./", "../", "~")):
        raise ModelError(f"model.name: folder {spec.name} does not exist")
    _check_hub(spec)


def check_tokenizer(spec: ModelSpec) -> None:
    """A text model's tokenizer loads and is real: a vocabulary of at least MIN_VOCAB entries, and a
    sample sentence that is not all unknown tokens. (A folder without tokenizer files makes transformers
    build a five-entry tokenizer that turns every word into [UNK]: a run would train on nothing.)"""
    import transformers as tf

    from transferlab.models.backbone import _offline

    source = spec.name
    try:
        tok = tf.AutoTokenizer.from_pretrained(source, revision=spec.revision, local_files_only=_offline(spec),
                                               trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"model.name: {source} has no usable tokenizer for a text task "
                         f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if len(tok) < MIN_VOCAB:
        raise ModelError(f"model.name: the tokenizer of {source} has {len(tok)} entries (expected at least "
                         f"{MIN_VOCAB}); are its tokenizer files missing?")
    sample = "the film was good"
    ids = tok(sample, add_special_tokens=False)["input_ids"]
    if not ids or (tok.unk_token_id is not None and all(i == tok.unk_token_id for i in ids)):
        raise ModelError(f"model.name: the tokenizer of {source} turns {sample!r} into unknown tokens only; "
                         "are its tokenizer files missing?")


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
