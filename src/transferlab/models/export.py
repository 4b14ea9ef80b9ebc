"""Export a trained :class:`TransferModel` as a folder others can load (safetensors only).

Two layouts, both with the tokenizer, a config carrying ``id2label``/``label2id``,
``num_labels`` and ``problem_type``, and ``head.json`` (what ``load_exported`` needs):

* ``hf``: a ``cls``/``pooler`` head on a BERT- or RoBERTa-family backbone is written as the
  family's ``*ForSequenceClassification``, so ``AutoModelForSequenceClassification.from_pretrained``
  gives the same logits. BERT: head dense -> ``bert.pooler.dense``, final linear -> ``classifier``;
  RoBERTa: ``classifier.dense`` and ``classifier.out_proj``.
* ``backbone+head``: any other head, backbone or input adapter: the base model's ``save_pretrained``
  plus ``head.safetensors`` (``head.*`` and ``input_adapter.*`` tensors).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import transformers as tf
from safetensors.torch import load_file, save_file

from transferlab.data.task import Task
from transferlab.errors import ModelError
from transferlab.models.adapters import build_adapter
from transferlab.models.backbone import Backbone, load_backbone, seeded
from transferlab.models.heads import build_head
from transferlab.models.model import TransferModel
from transferlab.models.schema import family_of
from transferlab.spec import ModelSpec

HEAD_JSON = "head.json"
HEAD_WEIGHTS = "head.safetensors"
FORMAT = "transferlab-export/1"


def _hf_layout(model: TransferModel) -> str | None:
    """"bert" or "roberta" when the model is exactly the family's sequence classifier, else None."""
    if model.input_adapter is not None or model.head.name not in ("cls", "pooler"):
        return None
    family = family_of(model.backbone.family)  # bert: pooler(dense, tanh) -> classifier; roberta: dense -> out_proj
    return family.classifier if family is not None else None


def _head_keys(layout: str, prefix: str) -> dict[str, str]:
    """Our head's state-dict keys -> the HF sequence classifier's."""
    if layout == "bert":
        dense, out = f"{prefix}.pooler.dense", "classifier"
    else:
        dense, out = "classifier.dense", "classifier.out_proj"
    return {f"{a}.{p}": f"{b}.{p}" for a, b in (("dense", dense), ("out", out)) for p in ("weight", "bias")}


def _export_config(model: TransferModel, task: Task) -> tf.PretrainedConfig:
    cfg = copy.deepcopy(model.backbone.config)
    n = model.head.num_outputs
    names = task.label_names if task.label_names and len(task.label_names) == n else None
    names = [str(x) for x in names] if names else [f"LABEL_{i}" for i in range(n)]
    cfg.id2label = dict(enumerate(names))
    cfg.label2id = {name: i for i, name in enumerate(names)}
    cfg.problem_type = "regression" if task.problem == "regression" else "single_label_classification"
    cfg.classifier_dropout = model.head.dropout.p
    return cfg


def export_model(model: TransferModel, task: Task, out_dir: Path) -> Path:
    """Write ``model`` for ``task`` to ``out_dir`` (created); returns the folder."""
    out_dir = Path(out_dir)
    if not isinstance(model.backbone.model, tf.PreTrainedModel):
        raise ModelError(f"export: the backbone is a {type(model.backbone.model).__name__} (e.g. the LSTM baseline), "
                         "not a Hugging Face model; export writes save_pretrained folders. The run's weights "
                         "stay in the store (train/restore.py load_run_model reads them)")
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = _export_config(model, task)
    layout = _hf_layout(model)
    head_state = {k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}
    if layout:
        hf = seeded(0, lambda: tf.AutoModelForSequenceClassification.from_config(cfg))
        prefix = hf.base_model_prefix
        target = hf.state_dict()
        state = {f"{prefix}.{k}": v for k, v in model.backbone.model.state_dict().items()}
        state = {k: v for k, v in state.items() if k in target}  # RoBERTa's classifier has no pooler
        state.update({theirs: head_state[ours] for ours, theirs in _head_keys(layout, prefix).items()})
        missing = sorted(set(target) - set(state))
        if missing:
            raise RuntimeError(f"export: no weights for {missing[:5]} in {type(hf).__name__}")
        hf.load_state_dict(state, strict=True)
        hf.save_pretrained(out_dir)
    else:
        model.backbone.model.save_pretrained(out_dir)
        cfg.architectures = [type(model.backbone.model).__name__]
        cfg.save_pretrained(out_dir)  # the labels and problem type, for whoever reads the folder
        tensors = {f"head.{k}": v for k, v in head_state.items()}
        if model.input_adapter is not None:
            tensors.update({
                f"input_adapter.{k}": v.detach().cpu().contiguous()
                for k, v in model.input_adapter.state_dict().items()
            })
        save_file(tensors, str(out_dir / HEAD_WEIGHTS))
    if model.backbone.tokenizer is not None:
        model.backbone.tokenizer.save_pretrained(out_dir)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "layout": f"hf-{layout}" if layout else "backbone+head",
        "head": model.head.name,
        "options": model.head.given_options,
        "dropout": model.head.dropout.p,
        "num_outputs": model.head.num_outputs,
        "problem": task.problem,
        "label_names": cfg.id2label and [cfg.id2label[i] for i in range(len(cfg.id2label))],
        "max_length": model.backbone.max_length,
        "family": model.backbone.family,
        "input_adapter": model.input_adapter.describe() if model.input_adapter is not None else None,
    }
    (out_dir / HEAD_JSON).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out_dir


def load_exported(out_dir: Path) -> TransferModel:
    """Rebuild the :class:`TransferModel` written by ``export_model`` (in eval mode)."""
    out_dir = Path(out_dir)
    meta_path = out_dir / HEAD_JSON
    if not meta_path.is_file():
        raise ModelError(f"{out_dir} is not a transferlab export: {HEAD_JSON} is missing")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ModelError(f"{meta_path}: format {meta.get('format')!r} is not {FORMAT!r}")
    layout = meta["layout"]
    if layout.startswith("hf-"):
        hf = tf.AutoModelForSequenceClassification.from_pretrained(out_dir, local_files_only=True)
        tokenizer = tf.AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
        backbone = Backbone(hf.base_model, tokenizer, meta["max_length"])
        hf_state = hf.state_dict()
        head_state = {ours: hf_state[theirs] for ours, theirs in _head_keys(layout[3:], hf.base_model_prefix).items()}
        tensors = {f"head.{k}": v for k, v in head_state.items()}
    else:
        backbone = load_backbone(ModelSpec(name=str(out_dir), local_files_only=True, max_length=meta["max_length"]))
        tensors = load_file(str(out_dir / HEAD_WEIGHTS))
    head = build_head(
        meta["head"], backbone.hidden_size, backbone.num_layers, meta["num_outputs"], meta["dropout"],
        meta["options"],
    )
    adapter = None
    if meta["input_adapter"]:
        info = dict(meta["input_adapter"])
        adapter = build_adapter(info.pop("kind"), **info)
    model = TransferModel(backbone, head, adapter)
    try:
        model.head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
        if adapter is not None:
            adapter.load_state_dict({k[14:]: v for k, v in tensors.items() if k.startswith("input_adapter.")})
    except RuntimeError as e:
        raise ModelError(f"{out_dir}: the saved head does not fit {meta['head']!r}: {e}") from None
    return model.eval()
