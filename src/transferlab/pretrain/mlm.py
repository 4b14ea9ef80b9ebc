"""Masked-language-model (continued) pretraining: ULMFiT's middle stage, DAPT (Gururangan et al. 2020).

    summary = train_mlm(load_pretrain_spec("examples/pretrain_glue_text.yaml"))

The model is ``AutoModelForMaskedLM`` of ``model.name``: a checkpoint with an MLM head keeps it; one
without (MiniLM, a sentence-embedding fine-tune) gets a new head (BERT's transform + decoder tied to
the word embeddings), which the summary reports as ``mlm_head: new``. ``layers`` keeps a subset of
the layers first (DistilBERT/PKD-style student initialisation). Every corpus example is one line or
one text, truncated to ``model.max_length`` tokens (no packing). The held-out MLM loss is measured on
fixed (static, seeded) masks before training, ``train.num_evals`` times during, and after.

``out`` receives ``save_pretrained`` of the MLM model and the tokenizer, so it loads as a backbone
(``model.name: <out>``) or for more MLM; the source's pooler, which MLM neither uses nor trains, is
carried over unchanged so that a ``pooler`` head still finds it. ``pretrain.json`` holds the resolved
spec, the loss curves and the provenance.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers as tf
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from transferlab.data.common import hub_datasets
from transferlab.errors import DataError, ModelError, SpecError
from transferlab.models.backbone import (
    TINY_ALIASES,
    TINY_PRETRAINED_SEED,
    _offline,
    _set_dropout,
    _tiny_config,
    checkpoint_model_layers,
    minilm_path,
    seeded,
)
from transferlab.models.depth import keep_layers
from transferlab.pretrain.masking import IGNORE, MaskSource, apply_to_ids
from transferlab.pretrain.objective import train_objective
from transferlab.pretrain.spec import CorpusSpec, PretrainSpec
from transferlab.provenance import provenance
from transferlab.spec import to_dict

log = logging.getLogger(__name__)
HELDOUT_MASK_SEED = 987_654  # the held-out masks never change between runs or seeds


# ---------------------------------------------------------------- the corpus


def _sample(items: list, n: int | None, seed: int) -> list:
    if n is None or n >= len(items):
        return items
    keep = np.sort(np.random.default_rng(seed).choice(len(items), size=n, replace=False))
    return [items[i] for i in keep]


def _dataset_texts(c: CorpusSpec) -> list[str]:
    datasets = hub_datasets("corpus.dataset")

    path = Path(c.dataset).expanduser()
    builders = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}
    try:
        if path.is_file():
            if path.suffix not in builders:
                raise DataError(f"corpus.dataset: cannot read {path}; expected one of {', '.join(builders)}")
            extra = {"delimiter": "\t"} if path.suffix == ".tsv" else {}
            data = datasets.load_dataset(builders[path.suffix], data_files=str(path), split="train", **extra)
        else:
            data = datasets.load_dataset(c.dataset, c.dataset_config, split=c.split)
    except (OSError, ValueError) as e:
        raise DataError(f"corpus.dataset: cannot load {c.dataset!r} (split {c.split!r}): {e}") from None
    if c.column not in data.column_names:
        raise DataError(f"corpus.column: {c.column!r} is not a column of {c.dataset}; columns: "
                        f"{', '.join(data.column_names)}")
    return [t for t in data[c.column] if isinstance(t, str) and t.strip()]


def load_texts(c: CorpusSpec) -> list[str]:
    """Every text of the corpus, in source order (files, then the data set, then the tasks)."""
    from transferlab.data.build import build_task

    texts: list[str] = []
    for name in c.files:
        path = Path(name).expanduser()
        if not path.is_file():
            raise DataError(f"corpus.files: {path} does not exist")
        texts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if c.dataset:
        texts += _dataset_texts(c)
    for task_spec in c.tasks:
        if task_spec.path is None and c.tasks_path is not None:
            task_spec = replace(task_spec, path=c.tasks_path)
        task = build_task(task_spec, seed=c.split_seed)
        if task.modality != "text":
            raise SpecError(f"corpus.tasks: task {task.name} is not a text task (modality {task.modality})")
        train = task.splits["train"]
        texts += [t for t in (train.texts or []) + (train.text_pairs or []) if t and t.strip()]
    if len(texts) < 2:
        raise DataError(f"corpus: {len(texts)} non-empty texts; need at least 2 (training and held out)")
    return _sample(texts, c.max_examples, c.split_seed)


def split_heldout(texts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    order = np.random.default_rng(seed).permutation(len(texts))
    n = min(len(texts) - 1, max(1, round(fraction * len(texts))))
    held = set(order[:n].tolist())
    return [t for i, t in enumerate(texts) if i not in held], [texts[i] for i in sorted(held)]


@dataclass
class TextCorpus:
    """Tokenised texts, padded: ``ids`` (N, T), ``lengths`` (N,), ``candidates`` (N, T) bool (maskable),
    ``word_ids`` (N, T) (-1 outside words) or None."""

    ids: np.ndarray
    lengths: np.ndarray
    candidates: np.ndarray
    word_ids: np.ndarray | None

    def __len__(self) -> int:
        return len(self.ids)


def encode_corpus(tokenizer, texts: list[str], max_length: int, whole_word: bool = False) -> TextCorpus:
    if whole_word and not getattr(tokenizer, "is_fast", False):
        raise SpecError("masking.whole_word: needs a fast tokenizer (word ids); this model's tokenizer is not one")
    enc = tokenizer(texts, truncation=True, max_length=max_length, return_special_tokens_mask=True,
                    return_attention_mask=False, return_token_type_ids=False)
    n, width = len(texts), max(len(x) for x in enc["input_ids"])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = np.full((n, width), pad, dtype=np.int64)
    special = np.ones((n, width), dtype=bool)
    words = np.full((n, width), -1, dtype=np.int64) if whole_word else None
    lengths = np.zeros(n, dtype=np.int64)
    for i, (row, spec_mask) in enumerate(zip(enc["input_ids"], enc["special_tokens_mask"])):
        lengths[i] = len(row)
        ids[i, : len(row)] = row
        special[i, : len(row)] = np.asarray(spec_mask, dtype=bool)
        if words is not None:
            words[i, : len(row)] = [-1 if w is None else w for w in enc.word_ids(i)]
    return TextCorpus(ids, lengths, ~special, words)


class MLMBatches:
    """Masked batches of a :class:`TextCorpus`: ``batches(index)`` -> input_ids, attention_mask, labels."""

    def __init__(self, corpus: TextCorpus, tokenizer, masking, seed: int):
        if tokenizer.mask_token_id is None:
            raise ModelError("the tokenizer has no mask token; MLM needs one ([MASK], <mask>)")
        self.corpus = corpus
        self.mask_id = int(tokenizer.mask_token_id)
        special = set(tokenizer.all_special_ids)
        self.random_ids = torch.tensor([i for i in range(len(tokenizer)) if i not in special], dtype=torch.long)
        self.masks = MaskSource(corpus.candidates, masking, len(self.random_ids), seed, corpus.word_ids)

    def __call__(self, index: np.ndarray) -> dict[str, Tensor]:
        width = int(self.corpus.lengths[index].max())
        ids = torch.from_numpy(self.corpus.ids[index, :width])
        inputs, labels = apply_to_ids(ids, self.masks(index, width), self.mask_id, self.random_ids)
        attention = torch.from_numpy(np.arange(width)[None, :] < self.corpus.lengths[index][:, None]).long()
        return {"input_ids": inputs, "attention_mask": attention, "labels": labels}


# ---------------------------------------------------------------- the model


def _source(name: str) -> str | Path:
    if name == "minilm":
        return minilm_path()
    if name == "antiberty":
        from transferlab.models.antiberty import antiberty_folder

        return antiberty_folder()
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model.name: folder {path} has no config.json; expected a save_pretrained folder")
        return path
    if name.startswith(("/", "./", "../", "~")):
        raise ModelError(f"model.name: folder {name} does not exist")
    return name


def load_mlm_model(spec: PretrainSpec) -> tuple[nn.Module, object, dict]:
    """The masked-LM model, its tokenizer and what was loaded (head new or not, carried pooler)."""
    ms = spec.model
    info: dict = {"source": ms.name}
    if ms.name in TINY_ALIASES:
        config, text = _tiny_config(ms.name)
        if not text:
            raise ModelError(f"model.name: {ms.name} is not a text model; MLM needs a tokenizer")
        _set_dropout(config, ms.dropout)
        seed = spec.seed if ms.init == "random" else TINY_PRETRAINED_SEED
        model = seeded(seed, lambda: _masked_lm(config, from_config=True))
        info.update(mlm_head="new", pooler=None)
        tokenizer = tf.AutoTokenizer.from_pretrained(minilm_path())
    else:
        source = _source(ms.name)
        kw = {"revision": ms.revision, "local_files_only": _offline(ms), "trust_remote_code": ms.trust_remote_code}
        try:
            config = tf.AutoConfig.from_pretrained(source, **kw)
            tokenizer = tf.AutoTokenizer.from_pretrained(source, **kw)
            if ms.name == "antiberty":  # the same tokenizer, warning once when it meets non-residues
                from transferlab.models.antiberty import antibody_tokenizer

                tokenizer = antibody_tokenizer(Path(source))
        except (OSError, ValueError) as e:
            raise ModelError(f"model.name: {ms.name!r} cannot be loaded: {str(e).splitlines()[0]}") from None
        _set_dropout(config, ms.dropout)
        if ms.init == "random":
            model = seeded(spec.seed, lambda: _masked_lm(config, from_config=True))
            info.update(mlm_head="new", pooler=None)
        else:
            model, loading = _masked_lm(config, source=source, **kw)
            prefix = model.base_model_prefix
            info["mlm_head"] = "new" if any(not k.startswith(f"{prefix}.") for k in loading["missing_keys"]) else "loaded"
            info["pooler"] = _source_pooler(source, kw) if any("pooler." in k for k in loading["unexpected_keys"]) \
                else None
    if spec.layers is not None:
        keep_layers(model, spec.layers)
        info["layers"] = list(spec.layers)
    return model, tokenizer, info


def _masked_lm(config, from_config: bool = False, source=None, **kw):
    try:
        if from_config:
            return tf.AutoModelForMaskedLM.from_config(config)
        return tf.AutoModelForMaskedLM.from_pretrained(source, config=config, dtype=torch.float32,
                                                       output_loading_info=True, **kw)
    except ValueError as e:
        raise ModelError(f"model.name: a {config.model_type} model has no masked-LM form in transformers "
                         f"({str(e).splitlines()[0]}); MLM needs an encoder such as BERT or RoBERTa") from None


def _source_pooler(source, kw) -> dict[str, Tensor] | None:
    base = tf.AutoModel.from_pretrained(source, dtype=torch.float32, **kw)
    pooler = getattr(base, "pooler", None)
    return None if pooler is None else {f"pooler.{k}": v.detach().clone() for k, v in pooler.state_dict().items()}


def save_mlm(model: nn.Module, tokenizer, out: Path, pooler: dict[str, Tensor] | None) -> None:
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    weights = out / "model.safetensors"
    if pooler and weights.is_file():  # one-file checkpoints; a sharded one keeps a new pooler on loading
        state = load_file(str(weights))
        state.update({f"{model.base_model_prefix}.{k}": v.contiguous() for k, v in pooler.items()})
        save_file(state, str(weights), metadata={"format": "pt"})


# ---------------------------------------------------------------- training (shared with masked_inputs)


MARKER = ".transferlab-pretrain"  # in every folder pretrain writes: the only folders overwrite may delete


def prepare_out(spec: PretrainSpec) -> Path:
    """The output folder, created and marked. ``overwrite: true`` deletes an existing non-empty folder
    only when it holds ``MARKER`` (pretrain wrote it); any other folder is refused and left untouched."""
    out = Path(spec.out).expanduser()
    if out.exists() and not out.is_dir():
        raise SpecError(f"out: {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()):
        if not spec.overwrite:
            raise SpecError(f"out: {out} exists and is not empty; set overwrite: true or choose another folder")
        if not (out / MARKER).is_file():
            raise SpecError(f"out: {out} was not written by transferlab pretrain (no {MARKER} in it); "
                            "overwrite: true replaces only such folders: choose another folder")
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text("written by transferlab pretrain; `overwrite: true` may replace this folder\n")
    except OSError as e:
        raise SpecError(f"out: cannot write to {out}: {e.strerror or e}") from None
    return out


def device_and_amp(spec: PretrainSpec) -> tuple[torch.device, torch.dtype | None]:
    from transferlab.train.steps import autocast_dtype, resolve_device

    device = resolve_device(spec.train.device)
    return device, autocast_dtype(spec.train.precision, device)


def write_summary(out: Path, spec: PretrainSpec, summary: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    record = {"spec": to_dict(spec), "summary": summary, "provenance": provenance()}
    (out / "pretrain.json").write_text(json.dumps(record, indent=1))
    return summary


# ---------------------------------------------------------------- MLM


@torch.no_grad()
def mlm_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Summed cross-entropy over the predicted positions, and their count (the head runs on those only)."""
    labels = batch["labels"]
    return _mlm_terms(model, batch, labels)


def _mlm_terms(model: nn.Module, batch: dict[str, Tensor], labels: Tensor) -> tuple[Tensor, Tensor]:
    base = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    hidden = base.last_hidden_state[labels != IGNORE]  # only the predicted positions go through the head
    logits = _head(model)(hidden)
    target = labels[labels != IGNORE]
    return F.cross_entropy(logits.float(), target, reduction="sum"), target.new_tensor(target.numel())


class MaskedLM(nn.Module):
    """An ``AutoModelForMaskedLM`` as the engine trains it: the whole model is ``backbone`` (pretrained
    weights: stabilisers and freezers see it as such); ``forward`` gives the summed loss and its count."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone = model

    @property
    def num_layers(self) -> int:
        return self.backbone.config.num_hidden_layers

    def forward(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        return _mlm_terms(self.backbone, {"input_ids": input_ids, "attention_mask": attention_mask}, labels)

    def checkpoint_layers(self) -> None:
        """train.checkpoint_layers: each layer recomputed in the backward (RNG state kept; the mechanism the
        installed transformers has, models/backbone.py)."""
        checkpoint_model_layers(self.backbone, type(self.backbone).__name__)


def _head(model: nn.Module) -> nn.Module:
    """The MLM head module of an ``AutoModelForMaskedLM`` (BERT ``cls``, RoBERTa ``lm_head``, ...)."""
    for name in ("cls", "lm_head", "generator_lm_head", "vocab_projector", "pred_layer"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            if name == "vocab_projector":  # DistilBERT: transform, activation, norm, projector
                return nn.Sequential(model.vocab_transform, model.activation, model.vocab_layer_norm, head)
            return head
    raise ModelError(f"{type(model).__name__}: cannot find its MLM head")


def train_mlm(spec: PretrainSpec, progress: bool = True, hooks: list | tuple = ()) -> dict:
    """Continue MLM pretraining as ``spec`` says, write the folder, return the summary."""
    start = time.time()
    out = prepare_out(spec)
    torch.manual_seed(spec.seed)
    model, tokenizer, info = load_mlm_model(spec)
    texts = load_texts(spec.corpus)
    train_texts, held_texts = split_heldout(texts, spec.corpus.heldout, spec.corpus.split_seed)
    whole = spec.masking.whole_word
    train = MLMBatches(encode_corpus(tokenizer, train_texts, spec.model.max_length, whole), tokenizer,
                       spec.masking, spec.seed)
    held_spec = type(spec.masking)(**{**vars(spec.masking), "strategy": "static"})
    held = MLMBatches(encode_corpus(tokenizer, held_texts, spec.model.max_length, whole), tokenizer, held_spec,
                      HELDOUT_MASK_SEED)
    device, amp = device_and_amp(spec)
    model.to(device)

    def to_device(batch):
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

    def batch_loss(forward, index):
        total, count = forward(**to_device(train(index)))
        return total / count

    @torch.no_grad()
    def heldout() -> float:
        model.eval()
        total, count = torch.zeros((), device=device), torch.zeros((), device=device)
        order = np.argsort(held.corpus.lengths, kind="stable")
        for i in range(0, len(order), spec.train.eval_batch_size):
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                s, n = mlm_loss(model, to_device(held(order[i: i + spec.train.eval_batch_size])))
            total, count = total + s.float(), count + n
        return float(total / count)

    history = train_objective(spec, MaskedLM(model), len(train.corpus), batch_loss, heldout, device, amp, out,
                              progress, hooks)
    model.cpu()
    save_mlm(model, tokenizer, out, info.pop("pooler", None))
    summary = {**info, "objective": "mlm", "train_examples": len(train.corpus), "heldout_examples": len(held.corpus),
               "heldout_before": history["heldout"][0][1], "heldout_after": history["heldout"][-1][1],
               "duration_s": time.time() - start, **history}
    return write_summary(out, spec, summary)
