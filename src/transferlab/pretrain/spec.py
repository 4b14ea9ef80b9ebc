"""The pretraining spec: what ``transferlab pretrain spec.yaml`` reads.

    name: glue-text-mlm
    objective: mlm                     # mlm (text) | masked_inputs (image patches, bits, ListOps symbols)
    model: {name: minilm, max_length: 128}
    corpus: {tasks: [{name: rte, path: data/glue/RTE}], heldout: 0.05}
    masking: {rate: 0.15, mask_ratio: 0.8, random_ratio: 0.1, strategy: dynamic, whole_word: false}
    train: {max_steps: 200, batch_size: 32}
    optim: {lr: 5.0e-5}
    out: runs/minilm-glue-mlm           # a Hugging Face folder usable as model.name

Every key is checked like a run spec's (an unknown key names the section and lists the known ones).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from transferlab.errors import SpecError
from transferlab.recipes.freeze import FREEZERS
from transferlab.recipes.stabilisers import check_compatible
from transferlab.spec import (
    FreezeSpec,
    ModelSpec,
    OptimSpec,
    ScheduleSpec,
    StabiliserSpec,
    TaskSpec,
    apply_overrides,
    read_yaml,
    spec_from_dict,
)


@dataclass
class CorpusSpec:
    """Where the examples come from; one or more of ``files``, ``dataset`` and ``tasks`` (text), or ``task``.

    Text: every non-empty line of ``files`` is an example; ``dataset`` is a Hugging Face data set id or a
    local csv/json/jsonl/parquet/txt file read with ``datasets``, its ``column`` taken from ``split``;
    ``tasks`` are registered tasks whose train split's texts (and text pairs, as separate examples) are
    taken (``tasks_path`` fills in their ``path`` where it is null, so one ``--set`` points them all). Non-text (``objective: masked_inputs``): ``task`` is a registered task of modality ``vectors``
    or ``tokens``; its train split trains and its dev split is held out.
    """

    files: list[str] = field(default_factory=list)
    dataset: str | None = None
    dataset_config: str | None = None
    split: str = "train"
    column: str = "text"
    tasks: list[TaskSpec] = field(default_factory=list)
    tasks_path: str | None = None  # the path of every task in ``tasks`` without one (e.g. the GLUE root)
    task: TaskSpec | None = None
    max_examples: int | None = None  # a seeded sample of the examples (before the held-out split)
    heldout: float = 0.05  # text: the fraction of examples held out for the MLM loss
    split_seed: int = 0  # the held-out split and the sample never depend on the run seed


@dataclass
class MaskingSpec:
    """BERT's masking (Devlin et al. 2019); ``strategy: dynamic`` is RoBERTa's (Liu et al. 2019)."""

    rate: float = 0.15  # expected share of maskable tokens (or patches) chosen per sequence; at least one
    mask_ratio: float = 0.8  # of the chosen: replaced by [MASK] (a learned mask vector for patches)
    random_ratio: float = 0.1  # of the chosen: replaced by a random token (a random patch); the rest stay
    strategy: Literal["static", "dynamic"] = "dynamic"  # static: drawn once up front; dynamic: every batch
    whole_word: bool = False  # text: all word pieces of a chosen word together (fast tokenizers only)

    def __post_init__(self) -> None:
        if not 0 < self.rate < 1:
            raise SpecError(f"masking.rate: {self.rate} must lie in (0, 1)")
        for name in ("mask_ratio", "random_ratio"):
            if not 0 <= getattr(self, name) <= 1:
                raise SpecError(f"masking.{name}: {getattr(self, name)} must lie in [0, 1]")
        if self.mask_ratio + self.random_ratio > 1 + 1e-9:
            raise SpecError(f"masking: mask_ratio + random_ratio = {self.mask_ratio + self.random_ratio} exceeds 1")


@dataclass
class ArchitectureSpec:
    """A new transformer from scratch (masked_inputs): a Hugging Face ``model_type`` and its sizes."""

    family: str = "bert"
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 512
    max_positions: int = 512
    options: dict[str, Any] = field(default_factory=dict)  # more config keys (hidden_act, layer_norm_eps, ...)

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions"):
            if getattr(self, name) < 1:
                raise SpecError(f"architecture.{name}: {getattr(self, name)} must be at least 1")
        if self.hidden_size % self.num_heads:
            raise SpecError(f"architecture: hidden_size {self.hidden_size} is not divisible by num_heads "
                            f"{self.num_heads}")


@dataclass
class PretrainTrainSpec:
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs; 0 writes the (layer-cut) model without training
    batch_size: int = 32
    eval_batch_size: int = 64
    num_evals: int = 4  # held-out loss during training, besides before and after
    log_every: int = 10
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"
    # the Engine's settings (train/engine.py), as in a run spec's ``train:``
    grad_accum: int = 1
    early_stopping_patience: int | None = None  # held-out evaluations without improvement
    restore_best: bool = False  # keep the weights of the best held-out loss (default: the last ones)
    divergence_factor: float | None = None  # diverged when a logged loss exceeds this x the first one
    compile: bool = False
    checkpoint_layers: bool = False
    # not settable here: pretraining writes its folder (no store row to resume or save into)
    checkpoint_every: ClassVar[None] = None
    length_bucketing: ClassVar[bool] = False
    save_model: ClassVar[bool] = False


@dataclass
class PretrainSpec:
    name: str = "pretrain"
    seed: int = 0
    objective: Literal["mlm", "masked_inputs"] = "mlm"
    model: ModelSpec = field(default_factory=ModelSpec)
    layers: list[int] | None = None  # keep only these layers of the source, in order (a smaller student)
    architecture: ArchitectureSpec | None = None  # masked_inputs: a new model of these sizes, not model.name
    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    masking: MaskingSpec = field(default_factory=MaskingSpec)
    train: PretrainTrainSpec = field(default_factory=PretrainTrainSpec)
    optim: OptimSpec = field(default_factory=lambda: OptimSpec(lr=5e-5))
    schedule: ScheduleSpec = field(default_factory=lambda: ScheduleSpec(warmup_ratio=0.06))
    freeze: FreezeSpec = field(default_factory=FreezeSpec)  # policies that declare ``pretrain``
    stabilisers: list[StabiliserSpec] = field(default_factory=list)  # those whose problems list ``mlm``
    out: str = ""
    overwrite: bool = False  # replace an existing model in ``out``

    def validate(self) -> None:
        if not self.out:
            raise SpecError("out: the folder to write the pretrained model to is required")
        c = self.corpus
        if self.objective == "mlm":
            if not (c.files or c.dataset or c.tasks):
                raise SpecError("corpus: give files, dataset or tasks (the text to pretrain on)")
            if c.task is not None:
                raise SpecError("corpus.task: only for objective masked_inputs; text tasks go in corpus.tasks")
            if self.architecture is not None:
                raise SpecError("architecture: only for objective masked_inputs; MLM starts from model.name")
        else:
            if c.task is None or c.files or c.dataset or c.tasks:
                raise SpecError("corpus: objective masked_inputs takes exactly corpus.task (a vectors or tokens task)")
            if self.masking.whole_word:
                raise SpecError("masking.whole_word: only for text (objective mlm)")
        if not 0 < c.heldout < 1:
            raise SpecError(f"corpus.heldout: {c.heldout} must lie in (0, 1)")
        if c.max_examples is not None and c.max_examples < 2:
            raise SpecError(f"corpus.max_examples: {c.max_examples} must be at least 2")
        if self.layers is not None and (not self.layers or min(self.layers) < 0):
            raise SpecError(f"layers: {self.layers} must be a non-empty list of layer indices (from 0)")
        self.validate_parts()
        t = self.train
        if t.max_steps is not None and t.max_steps < 0:
            raise SpecError(f"train.max_steps: {t.max_steps} must be >= 0")
        if t.batch_size < 1 or t.eval_batch_size < 1 or t.log_every < 1 or t.num_evals < 0 or t.grad_accum < 1:
            raise SpecError("train: batch_size, eval_batch_size, log_every and grad_accum must be >= 1, "
                            "num_evals >= 0")
        if t.early_stopping_patience is not None and t.early_stopping_patience < 1:
            raise SpecError(f"train.early_stopping_patience: {t.early_stopping_patience} must be >= 1 or null")

    def validate_parts(self) -> None:
        """Freezers and stabilisers by their declared flags (``pretrain``; the ``mlm`` problem)."""
        FREEZERS.get(self.freeze.name, "freeze.name")
        if not FREEZERS.supports(self.freeze.name, "pretrain"):
            raise SpecError(f"freeze.name: policy {self.freeze.name!r} does not declare 'pretrain'")
        check_compatible(self.stabilisers, "mlm", self.freeze.name)


def load_pretrain_spec(source: str | Path | dict, overrides: list[str] | dict = ()) -> PretrainSpec:
    """Read a pretraining spec from YAML (or plain data), apply ``--set`` overrides, check it."""
    data = source if isinstance(source, dict) else read_yaml(source)
    return spec_from_dict(apply_overrides(data, overrides or []), PretrainSpec)
