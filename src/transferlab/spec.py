"""Typed specs for one run, loaded from YAML with clear errors.

A spec is a tree of dataclasses. ``load_spec`` reads YAML (``yaml.safe_load``),
applies ``--set a.b=c`` overrides, and builds the tree, checking every key and
value: an unknown key names the section and lists the known keys; a value of
the wrong type or outside a ``Literal`` names the field and the allowed values.
``spec_hash`` hashes the resolved spec; it is stored with every run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

import yaml

from transferlab.errors import SpecError
from transferlab.registry import Registry

# Checks of a section's values that need the module owning the section (recipes/init.py checks an
# InitRule's scheme): that module registers its check here under the dataclass's name, so this
# file never imports a higher layer. The modules that register checks import torch, so they are
# loaded on the first check, not on ``import transferlab``: the package root names them with
# ``load_section_checks_from`` (a loader this file calls, never a module it imports), and any spec
# built anywhere is checked in full.
SECTION_CHECKS: Registry = Registry("spec section check")
_CHECK_LOADERS: list[Callable[[], object]] = []
_CHECK_LOCK = threading.RLock()  # a check run while a loader imports (same thread) goes on with what is there


def load_section_checks_from(loader: Callable[[], object]) -> None:
    """Call ``loader`` (it imports the modules that register section checks) before the next check."""
    with _CHECK_LOCK:
        _CHECK_LOADERS.append(loader)


def _load_checks() -> None:
    with _CHECK_LOCK:
        while _CHECK_LOADERS:
            loader = _CHECK_LOADERS.pop(0)
            try:
                loader()
            except BaseException:
                _CHECK_LOADERS.insert(0, loader)  # not loaded: the next check tries again, never skips
                raise


def check_section(section: Any) -> None:
    """Run the registered check of ``section``'s dataclass, if any."""
    _load_checks()
    name = type(section).__name__
    if name in SECTION_CHECKS:
        SECTION_CHECKS.get(name)(section)


@dataclass
class ModelSpec:
    """The backbone: a Hugging Face id, a local folder, or an alias (``minilm``, ``tiny-bert``...)."""

    name: str = "minilm"
    init: Literal["pretrained", "random"] = "pretrained"
    revision: str | None = None
    local_files_only: bool = False
    trust_remote_code: bool = False
    max_length: int = 128
    dropout: float | None = None  # overrides hidden and attention dropout of the config when set
    num_layers: int | None = None  # keep only the first k transformer (or LSTM) layers (a depth axis)


@dataclass
class InputAdapterSpec:
    """How non-text inputs (vectors, foreign token ids) enter the backbone (models/adapters.py)."""

    positions: Literal["backbone", "new"] = "backbone"  # the backbone's position table, or a new one
    max_positions: int | None = None  # rows of a new table (null: the task's longest sequence)
    gain: float = 1.0  # orthogonal init gain of the linear input layer (FPT uses 1.41)
    std: float | None = None  # N(0, std) init of a token table (null: the backbone's initializer_range)
    match_norm: bool = False  # rescale the input layer so its outputs have the backbone's token-embedding norm
    # ``from: FOLDER``: the input layer a masked-input pretraining wrote there (masked_inputs.safetensors)
    from_: str | None = None

    KEY_ALIASES: ClassVar[dict[str, str]] = {"from": "from_"}  # YAML key -> field (``from`` is a keyword)


@dataclass
class HeadSpec:
    """The head that turns all hidden states and the mask into outputs."""

    name: str = "cls"
    dropout: float = 0.1
    options: dict[str, Any] = field(default_factory=dict)  # head-specific keywords (k, kernel_size, ...)


@dataclass
class TaskSpec:
    """A registered task and where its data lies (``path: null`` means the Hugging Face hub)."""

    name: str = "rte"
    path: str | None = None
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    problem: Literal["auto", "classification", "regression"] = "auto"
    labels: list[Any] | None = None  # the label set of a generic file task, in order
    train_file: str | None = None
    dev_file: str | None = None
    test_file: str | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    few_sample: int | None = None  # class-balanced, seeded downsampling of train to N (Zhang et al. 2021)
    split_dev: bool = False  # split dev per class into validation (dev) and test halves
    options: dict[str, Any] = field(default_factory=dict)  # task-specific keywords


@dataclass
class OptimSpec:
    name: str = "adamw"  # adamw (bias-corrected), bertadam (no bias correction), adabelief, sgd
    lr: float = 2e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    layer_decay: float = 1.0  # LR factor per layer counted from the top; embeddings lowest
    head_lr: float | None = None  # None: optim.lr (the head is never decayed)
    max_grad_norm: float | None = 1.0
    no_decay: list[str] = field(default_factory=lambda: ["bias", "norm"])
    # the optimizer's moments: fp32, or bf16 for seed-stacked runs (recipes/optim.py; half the state memory,
    # numerics in docs/methods/bertadam.md). A recipe field: bf16 changes the run id, fp32 keeps the old one
    state_dtype: Literal["fp32", "bf16"] = "fp32"


@dataclass
class ScheduleSpec:
    name: str = "linear"  # constant, linear, cosine, slanted_triangular
    warmup_steps: int = 0
    warmup_ratio: float = 0.1  # used when warmup_steps is 0
    num_cycles: float = 0.5  # cosine
    cut_frac: float = 0.1  # slanted triangular (ULMFiT)
    ratio: float = 32.0  # slanted triangular: max LR / min LR


@dataclass
class TrainSpec:
    epochs: float = 3.0
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 32
    eval_batch_size: int = 64
    grad_accum: int = 1
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    device: str = "auto"
    num_evals: int = 10  # evaluations on dev during training, plus one at the end
    early_stopping_patience: int | None = None  # evaluations without improvement
    restore_best: bool = True
    log_every: int = 10  # steps between training-curve points
    length_bucketing: bool = False  # batches of similar lengths (less padding)
    save_model: bool = True  # keep the final weights with the run (needed for export)
    checkpoint_every: int | None = None  # steps between resumable checkpoints (null: none)
    divergence_factor: float | None = 100.0  # diverged when a logged loss exceeds this x the first one
    compile: bool = False  # torch.compile the training forward (falls back to eager when it fails; train/fast.py)
    # which implementation trains seed-stacked runs (train/support.py: choose_engine): auto picks the fused
    # encoder (train/fused.py) when every part declares support, else the general stacked one (reason logged);
    # fused: required (an unsupported part is an error; S = 1 takes it too); fused-padded: the fused encoder
    # without unpadding (for measurements); general: never the fused one
    engine: Literal["auto", "general", "fused", "fused-padded"] = "auto"
    # keep only each encoder layer's input for the backward and recompute the layer there (activation
    # checkpointing: about a third more compute, a fraction of the memory; same dropout masks, same numbers,
    # so not part of the recipe hash): the fused encoder's own, Hugging Face's for single and stacked runs
    checkpoint_layers: bool = False
    # where dropout draws its masks: global, torch's generator seeded with the run's seed (as always); run, the
    # run's own generator (models/dropout_streams.py), so stacked slots draw what their runs draw alone and
    # may differ in model.dropout and head.dropout (issue 24). BERT-family layer loop, general stacked engine
    dropout_rng: Literal["global", "run"] = "global"


@dataclass
class InitRule:
    """Apply init ``scheme`` to the parameters ``select`` picks (recipes/init.py: Selection, INIT_SCHEMES)."""

    select: dict[str, Any] = field(default_factory=dict)  # layers, roles, heads, modules, patterns
    scheme: str = "pretrained"
    options: dict[str, Any] = field(default_factory=dict)  # std, gain, a, ...

    def __post_init__(self) -> None:
        check_section(self)


@dataclass
class InitSpec:
    """Re-initialisation after loading (Zhang et al. 2021), then ``rules`` in order."""

    reinit_layers: int = 0  # the top L transformer layers get N(0, std), zero biases, LayerNorm (1, 0)
    reinit_pooler: bool = True  # with reinit_layers > 0: the pooler too, when the model has one
    std: float | None = None  # null: the config's initializer_range
    rules: list[InitRule] = field(default_factory=list)


@dataclass
class TransplantSpec:
    """Copy weights by role and layer mapping from ``source`` (HF id, folder, alias) or stored ``run``."""

    source: str | None = None
    run: str | None = None  # a stored run's uid or run id (its fine-tuned backbone)
    store: str | None = None  # the store holding ``run`` (null: the store of this run)
    layers: Any = "all"  # all | 3 | "2-4" | "5<-0" | {target: source} ...
    roles: list[str] | None = None  # null: every layer role
    heads: Any = None  # null | [0, 1] | {target_head: source_head}
    # embeddings, positions, embed_norm, final_norm, pooler; head: the task classifier of a stored run
    # (same label set only)
    modules: list[str] = field(default_factory=list)
    on_mismatch: str | dict[str, str] = "error"  # error | truncate | tile, or per role

    def __post_init__(self) -> None:
        check_section(self)


@dataclass
class FreezeSpec:
    """Which parameters train when (recipes/freeze.py: FREEZERS)."""

    name: str = "none"  # none, backbone_for_steps, fpt, gradual, linear_probe, bitfit, lora
    steps: int = 0  # backbone_for_steps: freeze the backbone for the first N steps
    options: dict[str, Any] = field(default_factory=dict)  # policy flags (fpt: train_ffn, ...; lora: r, ...)

    def __post_init__(self) -> None:
        check_section(self)


@dataclass
class DistillSpec:
    """Distillation from a teacher (recipes/distill.py): kd (Hinton et al. 2015), pkd (Sun et al. 2019)."""

    kind: str = "none"  # none, kd, pkd
    teacher: str | None = None  # a stored run's uid or run id, or a folder (transferlab export, HF classifier)
    teacher_store: str | None = None  # the store holding the teacher run (null: this run's store)
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the soft targets; 1 - alpha on the hard labels
    layers: Any = "skip"  # pkd: skip | last | {student_layer: teacher_layer} (hidden_states indices)
    beta: float = 100.0  # pkd: weight of the normalised [CLS] state distance

    def __post_init__(self) -> None:
        check_section(self)


@dataclass
class StabiliserSpec:
    """A stabiliser of few-sample fine-tuning (recipes/stabilisers.py: STABILISERS), e.g. mixout with p."""

    name: str = ""  # mixout, l2sp, child_tuning_d, child_tuning_f, r3f, ema, swa
    options: dict[str, Any] = field(default_factory=dict)  # mixout: p; l2sp: strength; r3f: noise, eps, lambda ...

    def __post_init__(self) -> None:
        check_section(self)


@dataclass
class MultiTaskSpec:
    """One shared encoder, a head per task (train/multitask.py). ``tasks`` replace the run's ``task``."""

    tasks: list[TaskSpec] = field(default_factory=list)
    sampler: Literal["proportional", "temperature", "round_robin", "annealed"] = "proportional"
    temperature: float = 2.0  # temperature sampler: p_i ~ n_i^(1/T); 2 is square-root sampling
    anneal_min: float = 0.2  # annealed sampler: the exponent falls from 1 to this over training
    heads: dict[str, str] = field(default_factory=dict)  # task name -> head name (default: head.name / by kind)

    def __post_init__(self) -> None:
        names = [t.name for t in self.tasks]
        for name in names:
            if names.count(name) > 1:
                raise SpecError(f"multitask.tasks: task {name!r} appears {names.count(name)} times; "
                                "each task of a multi-task run must have its own name")
        if len(names) < 2:
            raise SpecError(f"multitask.tasks: a multi-task run needs at least two tasks, got {names}")
        if not self.temperature > 0 or not 0 <= self.anneal_min <= 1:
            raise SpecError("multitask: temperature must be > 0 and anneal_min in [0, 1]")
        for name in self.heads:
            if name not in names:
                raise SpecError(f"multitask.heads: {name!r} is not one of the tasks {', '.join(names)}")


@dataclass
class IntermediateSpec:
    """Intermediate-task transfer (STILTs, Phang et al. 2018; train/intermediate.py): first ``steps`` on
    ``task`` (a stored run of its own), then this run's task from that state."""

    task: TaskSpec = field(default_factory=TaskSpec)
    steps: int = 1000
    head: Literal["auto", "carry", "new"] = "auto"  # carry the head when the label sets match (auto), always, never
    lr: float | None = None  # phase A's learning rate (null: optim.lr)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise SpecError(f"intermediate.steps: must be at least 1, got {self.steps}")


@dataclass
class RunSpec:
    """Everything that defines one run. Its hash (without the seed) names the recipe."""

    name: str = "run"
    seed: int = 0
    model: ModelSpec = field(default_factory=ModelSpec)
    input_adapter: InputAdapterSpec = field(default_factory=InputAdapterSpec)
    head: HeadSpec = field(default_factory=HeadSpec)
    task: TaskSpec = field(default_factory=TaskSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    init: InitSpec = field(default_factory=InitSpec)
    transplant: list[TransplantSpec] = field(default_factory=list)
    freeze: FreezeSpec = field(default_factory=FreezeSpec)
    distill: DistillSpec = field(default_factory=DistillSpec)
    stabilisers: list[StabiliserSpec] = field(default_factory=list)
    multitask: MultiTaskSpec | None = None  # null: one task (``task``)
    intermediate: IntermediateSpec | Literal["none"] | None = None  # null / none: no intermediate task

    def __post_init__(self) -> None:
        if self.intermediate == "none":  # the value a study axis writes for "no intermediate task"
            self.intermediate = None


OPTIONAL_SECTIONS = ("multitask", "intermediate")  # left out of the recipe hash when unset (old run ids hold)


# --------------------------------------------------------------------------- building


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and gently convert) ``value`` against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise SpecError(f"{where}: {value!r} is not allowed; allowed: {', '.join(map(repr, allowed))}")
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise SpecError(f"{where}: must not be null; expected {_type_name(tp)}")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except SpecError as e:
                errors.append(str(e))
                if isinstance(value, dict) and dataclasses.is_dataclass(arg):
                    raise  # a section given as a mapping: its own error names the field at fault
        raise SpecError(f"{where}: {value!r} is not {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise SpecError(f"{where}: {value!r} is not a boolean (true/false)")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise SpecError(f"{where}: {value!r} is not an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads 2e-5 as a string
            except ValueError:
                pass
        raise SpecError(f"{where}: {value!r} is not a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise SpecError(f"{where}: {value!r} is not a string")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise SpecError(f"{where}: {value!r} is not a list")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise SpecError(f"{where}: {value!r} is not a list of {len(args)} values")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise SpecError(f"{where}: {value!r} is not a mapping")
        return dict(value)
    raise TypeError(f"spec field {where} has an unsupported annotation {tp!r}")


TASK_OPTION_KEYS = ("dataset", "config")  # task.dataset / task.config are kept as task.options.dataset / .config


def _build(cls: type, data: Any, where: str) -> Any:
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if cls is TaskSpec and isinstance(data, dict) and any(k in data for k in TASK_OPTION_KEYS):
        options = dict(data.get("options") or {})
        options.update({k: data[k] for k in TASK_OPTION_KEYS if k in data})
        data = {**{k: v for k, v in data.items() if k not in TASK_OPTION_KEYS}, "options": options}
    if not isinstance(data, dict):
        raise SpecError(f"{where or 'spec'}: expected a mapping of fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    aliases = getattr(cls, "KEY_ALIASES", {})
    data = {aliases.get(k, k): v for k, v in data.items()}
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        section = where or "spec"
        raise SpecError(f"{section}: unknown key {unknown[0]!r}; known keys: {', '.join(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def spec_from_dict(data: dict[str, Any], cls: type = RunSpec) -> Any:
    """Build and check a spec dataclass from plain data."""
    spec = _build(cls, data, "")
    if hasattr(spec, "validate"):
        spec.validate()
    return spec


def _parse_value(text: str) -> Any:
    """Values in ``--set key=value`` are YAML scalars or flow collections (``[1, 2]``)."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides to nested plain data (a new dict; the input is untouched)."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    items = overrides.items() if isinstance(overrides, dict) else [_split_override(o) for o in overrides]
    for key, value in items:
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpecError(f"--set {key}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def _split_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise SpecError(f"--set {text!r}: expected key=value, e.g. optim.lr=3e-5")
    key, value = text.split("=", 1)
    value = _parse_value(value)
    check_plain(value, f"--set {key.strip()}")
    return key.strip(), value


MAX_VALUES = 100_000  # values in one spec after aliases are followed (a spec is small; an alias bomb is not)
MAX_DEPTH = 64


def check_plain(data: Any, where: str) -> None:
    """``data`` is a finite tree of plain values: no recursive alias, at most MAX_VALUES values once YAML
    aliases are expanded (they are, by every later copy), no YAML date (quote it). One SpecError otherwise.
    Walks at most MAX_VALUES nodes, so an alias bomb costs no more than a large honest spec."""
    import datetime

    count = 0

    def walk(node: Any, path: str, above: tuple[int, ...]) -> None:
        nonlocal count
        count += 1
        if count > MAX_VALUES:
            raise SpecError(f"{where}: more than {MAX_VALUES} values once YAML aliases are expanded "
                            "(an alias bomb?); write the spec out")
        if isinstance(node, (datetime.date, datetime.datetime)):
            raise SpecError(f"{where}: {path or 'the top level'}: {node} reads as a YAML date; quote it to give text")
        if isinstance(node, (dict, list, tuple)):
            if id(node) in above:
                raise SpecError(f"{where}: {path or 'the top level'} contains itself (a recursive YAML alias)")
            if len(above) >= MAX_DEPTH:
                raise SpecError(f"{where}: {path}: nested more than {MAX_DEPTH} levels deep")
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, child in items:
                if isinstance(key, (datetime.date, datetime.datetime)):
                    raise SpecError(f"{where}: the key {key} reads as a YAML date; quote it to give text")
                walk(child, f"{path}.{key}" if isinstance(node, dict) and path else
                     str(key) if isinstance(node, dict) else f"{path}[{key}]", (*above, id(node)))

    walk(data, "", ())


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file {path} does not exist")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SpecError(f"spec file {path} cannot be read: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise SpecError(f"spec file {path}, line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); "
                        "save it as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError(f"spec file {path} is not valid YAML: {e}") from None
    if data is None:
        raise SpecError(f"spec file {path} is empty")
    if not isinstance(data, dict):
        raise SpecError(f"spec file {path}: expected a mapping at the top level")
    check_plain(data, f"spec file {path}")
    return data


def load_spec(source: str | Path | dict[str, Any], overrides: list[str] | dict[str, Any] = ()) -> RunSpec:
    """Load a run spec from a YAML file or plain data and apply overrides."""
    if not isinstance(source, (str, Path, dict)):
        raise SpecError(f"load_spec: expected a YAML file path or a dict, got {type(source).__name__}")
    if isinstance(source, dict):
        check_plain(source, "load_spec")
    data = source if isinstance(source, dict) else read_yaml(source)
    return spec_from_dict(apply_overrides(data, overrides or []))


def to_dict(spec: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(spec)))


def spec_hash(spec: Any, exclude: tuple[str, ...] = ("seed", "name")) -> str:
    """A stable hash of the resolved spec; by default without seed and name (the recipe's identity)."""
    data = {k: v for k, v in to_dict(spec).items()
            if k not in exclude and not (k in OPTIONAL_SECTIONS and v is None)}
    if not data.get("stabilisers", True):
        del data["stabilisers"]  # no stabiliser: the recipe keeps the hash it had before the section existed
    if data.get("train", {}).get("engine") == "auto":
        del data["train"]["engine"]  # the default engine: the recipe keeps the hash it had before the field existed
    if data.get("optim", {}).get("state_dtype") == "fp32":
        del data["optim"]["state_dtype"]  # the default: the recipe keeps the hash it had before the field existed
    data.get("train", {}).pop("checkpoint_layers", None)  # memory, not results: a run id is the same either way
    if data.get("train", {}).get("dropout_rng") == "global":
        del data["train"]["dropout_rng"]  # the default: the recipe keeps the hash it had before the field existed
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def run_id(spec: RunSpec) -> str:
    """A run's identity: the recipe hash, the fingerprints of its data files and model (fingerprint.py:
    changed data or weights make a new run), and the seed."""
    from transferlab.fingerprint import fingerprint

    text = spec_hash(spec) + json.dumps(fingerprint(spec), sort_keys=True)
    return f"{hashlib.sha256(text.encode()).hexdigest()[:12]}-s{spec.seed}"


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{optim: {name: x}}`` and ``{optim.name: x}`` both become ``{"optim.name": x}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out
