"""Export a trained :class:`TransferModel` as a folder others can load (safetensors only).

Every export holds the tokenizer, a config carrying ``id2label``/``label2id``, ``num_labels``
and ``problem_type``, ``head.json`` (what ``load_exported`` needs) and a model card (README.md).
Four layouts:

* ``hf``: a ``cls``/``pooler`` head on a BERT- or RoBERTa-family backbone is written as the
  family's ``*ForSequenceClassification``, so ``AutoModelForSequenceClassification.from_pretrained``
  gives the same logits. BERT: head dense -> ``bert.pooler.dense``, final linear -> ``classifier``;
  RoBERTa: ``classifier.dense`` and ``classifier.out_proj``.
* ``hf-token`` / ``hf-span``: the ``token`` head (dropout -> linear on every token) and the ``span``
  head (a linear map to start/end scores) on any family with a Hugging Face
  ``*ForTokenClassification`` / ``*ForQuestionAnswering`` class: the plain HF class, head linear ->
  its ``classifier`` / ``qa_outputs``, so ``AutoModelForTokenClassification.from_pretrained(folder)``
  (and ``pipeline("token-classification")``) and ``AutoModelForQuestionAnswering.from_pretrained(folder)``
  give our logits (the span head's start scores are the QA model's ``start_logits``, its end scores
  ``end_logits``; ours are set to the dtype's minimum on padding). A family without that class gets
  ``backbone+head``.
* ``remote``: every other head (and ``cls`` on other families) on a text model: config
  ``model_type: transferlab`` with an ``auto_map``, and the two files of ``models/hub_code``
  copied next to the weights, so ``from_pretrained(folder, trust_remote_code=True)`` and
  ``pipeline("text-classification", model=folder, trust_remote_code=True)`` give our logits.
  Without ``trust_remote_code`` the load fails (unknown ``model_type``): never a random classifier.
* ``backbone+head``: a model with an input adapter (non-text inputs), or a token/span head on a family
  without the HF class: the base model's
  ``save_pretrained`` plus ``head.safetensors`` (``head.*`` and ``input_adapter.*`` tensors);
  only ``load_exported`` reads it.

Weight, config and tokenizer files are written with mode 0644 (readable by others, as any shared model
folder), whatever the process umask or the library's own temporary-file mode.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

import transformers as tf
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from transferlab.data.task import Task
from transferlab.errors import ModelError
from transferlab.models.adapters import build_adapter
from transferlab.models.backbone import Backbone, load_backbone
from transferlab.models.common import seeded
from transferlab.models.heads import HEADS, build_head
from transferlab.models.model import TransferModel
from transferlab.models.token_heads import KIND_HEADS
from transferlab.models.schema import family_of
from transferlab.spec import ModelSpec

HEAD_JSON = "head.json"
HEAD_WEIGHTS = "head.safetensors"
HUB_CODE = Path(__file__).resolve().parent / "hub_code"
FORMAT = "transferlab-export/1"
# task kind -> (the HF auto class of a per-token / span head, the pipeline tag of the model card)
KIND_CLASSES = {"token": ("AutoModelForTokenClassification", "token-classification"),
                "span": ("AutoModelForQuestionAnswering", "question-answering")}


def _kind_class(model: TransferModel):
    """The HF auto class for a ``token``/``span`` head that is a single linear map on a family that has
    the class, else None."""
    if model.input_adapter is not None or model.head.name not in KIND_CLASSES:
        return None
    if set(model.head.state_dict()) != {"out.weight", "out.bias"}:
        return None
    auto = getattr(tf, KIND_CLASSES[model.head.name][0])
    return auto if type(model.backbone.config) in auto._model_mapping else None


def _hf_layout(model: TransferModel) -> str | None:
    """"bert" or "roberta" when the model is exactly the family's sequence classifier, else None."""
    if model.input_adapter is not None or model.head.name not in ("cls", "pooler"):
        return None
    family = family_of(model.backbone.family)  # bert: pooler(dense, tanh) -> classifier; roberta: dense -> out_proj
    return family.classifier if family is not None else None


def export_layout(model: TransferModel) -> str:
    """``hf-bert``/``hf-roberta`` (a plain HF classifier), ``hf-token``/``hf-span`` (a plain HF token
    classifier / question answerer), ``remote`` (our modeling file) or ``backbone+head``."""
    if model.head.name in KIND_HEADS:
        return f"hf-{model.head.name}" if _kind_class(model) is not None else "backbone+head"
    hf = _hf_layout(model)
    return f"hf-{hf}" if hf else "remote" if model.input_adapter is None else "backbone+head"


def load_line(layout: str) -> str:
    """How the model card says to load an export of ``layout``."""
    if layout in ("hf-token", "hf-span"):
        return f"{KIND_CLASSES[layout[3:]][0]}.from_pretrained(folder)"
    return {"remote": "AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)",
            "backbone+head": "transferlab.models.load_exported(folder)"}.get(
        layout, "AutoModelForSequenceClassification.from_pretrained(folder)")  # hf-bert, hf-roberta


def pipeline_tag(model: TransferModel) -> str:
    return KIND_CLASSES[model.head.name][1] if model.head.name in KIND_CLASSES else "text-classification"


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
    cfg.problem_type = ("regression" if task.problem == "regression" else None if model.head.name in KIND_HEADS
                        else "single_label_classification")
    cfg.classifier_dropout = model.head.dropout.p
    return cfg


def check_out_dir(out_dir: Path, force: bool) -> None:
    """Create ``out_dir``; a file, an unwritable folder or (without ``force``) a non-empty one is a ModelError."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ModelError(f"export: {out_dir} is a file, not a folder; give a folder path with -o")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ModelError(f"export: folder {out_dir} exists and is not empty; choose another folder or pass --force")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelError(f"export: cannot create folder {out_dir}: {e.strerror or e}") from None
    if not os.access(out_dir, os.W_OK):
        raise ModelError(f"export: folder {out_dir} is not writable")


def _write_hf(model: TransferModel, cfg: tf.PretrainedConfig, layout: str, out_dir: Path) -> None:
    hf = seeded(0, lambda: tf.AutoModelForSequenceClassification.from_config(cfg))
    prefix = hf.base_model_prefix
    target = hf.state_dict()
    state = {f"{prefix}.{k}": v for k, v in model.backbone.model.state_dict().items()}
    state = {k: v for k, v in state.items() if k in target}  # RoBERTa's classifier has no pooler
    head_state = model.head.state_dict()
    state.update({theirs: head_state[ours] for ours, theirs in _head_keys(layout, prefix).items()})
    missing = sorted(set(target) - set(state))
    if missing:
        raise RuntimeError(f"export: no weights for {missing[:5]} in {type(hf).__name__}")
    hf.load_state_dict(state, strict=True)
    hf.save_pretrained(out_dir)


def _write_kind(model: TransferModel, cfg: tf.PretrainedConfig, out_dir: Path) -> None:
    """A token/span head as the family's ``*ForTokenClassification``/``*ForQuestionAnswering``: the base
    model's weights under its prefix, our head's linear as the class's only other weights."""
    hf = seeded(0, lambda: _kind_class(model).from_config(cfg))
    prefix, target = hf.base_model_prefix, hf.state_dict()
    state = {f"{prefix}.{k}": v for k, v in model.backbone.model.state_dict().items() if f"{prefix}.{k}" in target}
    rest = sorted(set(target) - set(state))  # the HF head: e.g. classifier.{bias,weight}, qa_outputs.{bias,weight}
    if len(rest) != 2 or {r.rsplit(".", 1)[1] for r in rest} != {"weight", "bias"}:
        raise ModelError(f"export: {type(hf).__name__} holds weights {rest[:5]} besides the base model; "
                         "the head does not map onto it")
    for name in rest:
        state[name] = getattr(model.head.out, name.rsplit(".", 1)[1])
    hf.load_state_dict(state, strict=True)
    hf.save_pretrained(out_dir)


def _kind_head_keys(hf) -> dict[str, str]:
    """head.out.* -> the HF token/QA model's head keys."""
    prefix = hf.base_model_prefix
    rest = [k for k in hf.state_dict() if not k.startswith(prefix + ".")]
    return {f"out.{k.rsplit('.', 1)[1]}": k for k in rest}


def _write_remote(model: TransferModel, cfg: tf.PretrainedConfig, out_dir: Path) -> None:
    """``model_type: transferlab``: the weights as ``backbone.*``/``head.*`` and the hub_code files."""
    from transferlab.models.hub_code.configuration_transferlab import TransferlabConfig
    from transferlab.models.hub_code.modeling_transferlab import TransferlabForSequenceClassification

    base = model.backbone.config.to_dict()
    for key in ("id2label", "label2id", "problem_type", "architectures", "auto_map", "_name_or_path"):
        base.pop(key, None)
    config = TransferlabConfig(
        backbone_config=base, head=HEADS.canonical(model.head.name), head_options=model.head.given_options,
        head_dropout=model.head.dropout.p, num_outputs=model.head.num_outputs,
        hidden_size=model.backbone.hidden_size, num_hidden_layers=model.backbone.num_layers,
        id2label=cfg.id2label, label2id=cfg.label2id, problem_type=cfg.problem_type,
        architectures=["TransferlabForSequenceClassification"],
        auto_map={"AutoConfig": "configuration_transferlab.TransferlabConfig",
                  "AutoModelForSequenceClassification": "modeling_transferlab.TransferlabForSequenceClassification"},
    )
    hf = seeded(0, lambda: TransferlabForSequenceClassification(config))
    state = {f"backbone.{k}": v for k, v in model.backbone.model.state_dict().items()}
    state.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
    hf.load_state_dict(state, strict=True)
    hf.save_pretrained(out_dir)
    for name in ("configuration_transferlab.py", "modeling_transferlab.py"):
        shutil.copyfile(HUB_CODE / name, out_dir / name)


def _write_backbone_head(model: TransferModel, cfg: tf.PretrainedConfig, out_dir: Path) -> None:
    model.backbone.model.save_pretrained(out_dir)
    cfg.architectures = [type(model.backbone.model).__name__]
    cfg.save_pretrained(out_dir)  # the labels and problem type, for whoever reads the folder
    tensors = {f"head.{k}": v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}
    if model.input_adapter is not None:
        tensors.update({f"input_adapter.{k}": v.detach().cpu().contiguous()
                        for k, v in model.input_adapter.state_dict().items()})
    save_file(tensors, str(out_dir / HEAD_WEIGHTS))


def basic_card(model: TransferModel, task: Task, layout: str) -> str:
    """A model card from the model and task alone (``card=`` of export_model gives a fuller one)."""
    names = task.label_names if task.problem != "regression" else None
    return "\n".join([
        "---", "library_name: transformers", f"pipeline_tag: {pipeline_tag(model)}", "tags: [transferlab]", "---", "",
        f"# {task.name}: {model.backbone.family} + {model.head.name} head", "",
        f"- Task: {task.name} ({task.problem}" + (f"; labels {', '.join(map(str, names))})" if names else ")"),
        f"- Head: {model.head.name} {model.head.given_options or ''}".rstrip(),
        f"- Load: `{load_line(layout)}`", "",
    ])


def export_model(model: TransferModel, task: Task, out_dir: Path, *, force: bool = False,
                 card: str | None = None, columns: list | None = None, decode: dict | None = None) -> Path:
    """Write ``model`` for ``task`` to ``out_dir``; returns the folder. A non-empty ``out_dir`` needs
    ``force``. ``card``: the README.md text (default: :func:`basic_card`). ``columns``: the input
    columns predict reads by default ([[text, pair or None], ...]); ``decode``: a span task's decoding
    options (doc_stride, max_answer_length, n_best), kept in head.json for predict."""
    out_dir = Path(out_dir)
    if not isinstance(model.backbone.model, tf.PreTrainedModel):
        raise ModelError(f"export: the backbone is a {type(model.backbone.model).__name__} (e.g. the LSTM baseline), "
                         "not a Hugging Face model; export writes save_pretrained folders. The run's weights "
                         "stay in the store (models/artifacts.py load_run_model reads them)")
    check_out_dir(out_dir, force)
    cfg = _export_config(model, task)
    layout = export_layout(model)
    if layout in ("hf-token", "hf-span"):
        _write_kind(model, cfg, out_dir)
    elif layout.startswith("hf-"):
        _write_hf(model, cfg, layout[3:], out_dir)
    elif layout == "remote":
        _write_remote(model, cfg, out_dir)
    else:
        _write_backbone_head(model, cfg, out_dir)
    if model.backbone.tokenizer is not None:
        model.backbone.tokenizer.save_pretrained(out_dir)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "layout": layout,
        "head": model.head.name,
        "options": model.head.given_options,
        "dropout": model.head.dropout.p,
        "num_outputs": model.head.num_outputs,
        "problem": task.problem,
        "label_names": cfg.id2label and [cfg.id2label[i] for i in range(len(cfg.id2label))],
        "max_length": model.backbone.max_length,
        "family": model.backbone.family,
        "input_adapter": model.input_adapter.describe() if model.input_adapter is not None else None,
        "kind": task.kind,
        "columns": columns,
        "decode": decode or {k: task.extra[k] for k in ("doc_stride", "max_answer_length", "n_best")
                             if k in task.extra},
    }
    (out_dir / HEAD_JSON).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (out_dir / "README.md").write_text(card or basic_card(model, task, layout), encoding="utf-8")
    readable(out_dir)
    return out_dir


def readable(out_dir: Path) -> None:
    """Every file of the export mode 0644: safetensors and the tokenizer write theirs through temporary
    files created 0600, which a shared model folder must not keep."""
    for path in out_dir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o644)


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
    if layout in ("hf-token", "hf-span"):
        backbone, tensors = _load_kind(out_dir, layout[3:], meta["max_length"])
    elif layout.startswith("hf-"):
        try:
            hf = tf.AutoModelForSequenceClassification.from_pretrained(out_dir, local_files_only=True)
            tokenizer = tf.AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
        except (OSError, ValueError, SafetensorError) as e:
            raise ModelError(f"{out_dir}: cannot load the exported model: {str(e).splitlines()[0]}") from None
        backbone = Backbone(hf.base_model, tokenizer, meta["max_length"])
        hf_state = hf.state_dict()
        head_state = {ours: hf_state[theirs] for ours, theirs in _head_keys(layout[3:], hf.base_model_prefix).items()}
        tensors = {f"head.{k}": v for k, v in head_state.items()}
    elif layout == "remote":
        backbone, tensors = _load_remote(out_dir, meta["max_length"])
    else:
        backbone = load_backbone(ModelSpec(name=str(out_dir), local_files_only=True, max_length=meta["max_length"]))
        tensors = load_file(str(out_dir / HEAD_WEIGHTS))
    if meta["head"] in KIND_HEADS:
        head = KIND_HEADS.get(meta["head"])(backbone.hidden_size, backbone.num_layers, meta["num_outputs"],
                                            meta["dropout"], **(meta["options"] or {}))
    else:
        head = build_head(meta["head"], backbone.hidden_size, backbone.num_layers, meta["num_outputs"],
                          meta["dropout"], meta["options"])
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


def _load_kind(out_dir: Path, kind: str, max_length: int) -> tuple[Backbone, dict]:
    """The base model of an ``hf-token``/``hf-span`` export and its head's tensors as ``head.out.*``."""
    try:
        hf = getattr(tf, KIND_CLASSES[kind][0]).from_pretrained(out_dir, local_files_only=True)
        tokenizer = tf.AutoTokenizer.from_pretrained(out_dir, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, SafetensorError) as e:
        raise ModelError(f"{out_dir}: cannot load the exported model: {str(e).splitlines()[0]}") from None
    state = hf.state_dict()
    tensors = {f"head.{ours}": state[theirs] for ours, theirs in _kind_head_keys(hf).items()}
    return Backbone(hf.base_model, tokenizer, max_length), tensors


def _load_remote(out_dir: Path, max_length: int) -> tuple[Backbone, dict]:
    """The backbone of a ``remote`` export (built from its config, weights ``backbone.*``) and the head tensors."""
    config = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
    base = dict(config["backbone_config"])
    base_config = tf.AutoConfig.for_model(base.pop("model_type"), **base)
    hf = seeded(0, lambda: tf.AutoModel.from_config(base_config))
    tensors = _read_tensors(out_dir / "model.safetensors")
    try:
        hf.load_state_dict({k[9:]: v for k, v in tensors.items() if k.startswith("backbone.")}, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{out_dir}: the saved base model does not fit its config: {e}") from None
    tokenizer = tf.AutoTokenizer.from_pretrained(out_dir, local_files_only=True, trust_remote_code=False)
    return Backbone(hf.eval(), tokenizer, max_length), tensors


def _read_tensors(path: Path) -> dict:
    try:
        return load_file(str(path))
    except (OSError, ValueError, SafetensorError) as e:
        raise ModelError(f"cannot read {path}: {e}") from None
