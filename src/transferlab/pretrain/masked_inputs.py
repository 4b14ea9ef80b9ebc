"""Masked modelling of non-text inputs: source models of other modalities for transplant and FPT studies.

    summary = train_masked_inputs(load_pretrain_spec("examples/mnist_patches_transplant.yaml"))

The data is a registered task of modality ``vectors`` (image patches: MNIST, digits, CIFAR) or
``tokens`` (bit strings, ListOps symbols); its train split trains, its dev split is held out. The
inputs enter the transformer as they do in a fine-tuning run: through the project's input adapter
(models/adapters.py) as ``inputs_embeds``, so the embedding module still adds positions and its
LayerNorm. Masking follows BERT (pretrain/masking.py): per sequence ``rate`` of the positions are
predicted; of those, ``mask_ratio`` are replaced by the mask (a learned vector in hidden space for
patches, as in SimMIM/BEiT; an extra symbol for tokens), ``random_ratio`` by a random patch of the
training set or a random symbol, the rest stay. Patches are regressed (mean squared error on the
masked patch vectors, as in SimMIM and MAE); symbols are classified (cross-entropy).

The model is a new transformer of ``architecture`` (a Hugging Face ``model_type`` and sizes, from
scratch, seeded) or ``model.name`` (any backbone that takes ``inputs_embeds``). ``out`` receives the
backbone's ``save_pretrained`` (usable as ``model.name`` of a run of that modality, and as a
``transplant.source`` of any run) and ``masked_inputs.safetensors`` (adapter, mask vector, decoder).
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers as tf
from safetensors.torch import save_file
from torch import Tensor, nn

from transferlab.data.task import Task
from transferlab.errors import DataError, SpecError
from transferlab.models.adapters import build_adapter
from transferlab.models.backbone import Backbone, load_backbone
from transferlab.models.common import seeded
from transferlab.models.depth import keep_layers
from transferlab.pretrain.masking import Masks, MaskSource, apply_to_ids
from transferlab.pretrain.mlm import (
    HELDOUT_MASK_SEED,
    device_and_amp,
    prepare_out,
    write_summary,
)
from transferlab.pretrain.objective import train_objective
from transferlab.pretrain.spec import PretrainSpec

WEIGHTS = "masked_inputs.safetensors"


class MaskedInputModel(nn.Module):
    """Adapter -> backbone -> decoder (BERT's transform: dense, GELU, LayerNorm, then an output layer)."""

    def __init__(self, backbone: Backbone, task: Task, std: float = 0.02):
        super().__init__()
        self.backbone, self.kind, self.mask_id = backbone, task.modality, task.vocab_size
        h = backbone.hidden_size
        vocab = None if task.vocab_size is None else task.vocab_size + 1  # the last id is the mask symbol
        self.input_adapter = build_adapter(task.modality, h, input_dim=task.input_dim, vocab_size=vocab, std=std,
                                           task=task.name)
        self.mask_embedding = nn.Parameter(torch.randn(h) * std)
        out = task.input_dim if task.modality == "vectors" else task.vocab_size
        self.decoder = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h), nn.Linear(h, out))

    @property
    def num_layers(self) -> int:
        return self.backbone.num_layers

    def checkpoint_layers(self) -> None:
        self.backbone.checkpoint_layers()

    def forward(self, x: Tensor, attention_mask: Tensor, masks: Masks, pool: Tensor) -> tuple[Tensor, Tensor]:
        """Summed loss over the predicted positions and their count. ``pool``: random replacements."""
        if self.kind == "vectors":
            shown = torch.where(masks.to_random[..., None], pool[masks.pick].to(x.dtype), x)
            embeds = self.input_adapter(shown)
        else:
            shown, _ = apply_to_ids(x, masks, self.mask_id, pool)
            embeds = self.input_adapter(shown)
        embeds = torch.where(masks.to_mask[..., None], self.mask_embedding.to(embeds.dtype), embeds)
        hidden, _ = self.backbone(inputs_embeds=embeds, attention_mask=attention_mask)
        pred = self.decoder(hidden[-1][masks.masked]).float()
        target = x[masks.masked]
        if self.kind == "vectors":
            loss = F.mse_loss(pred, target.float(), reduction="none").mean(-1).sum()
        else:
            loss = F.cross_entropy(pred, target.long(), reduction="sum")
        return loss, target.new_tensor(target.shape[0], dtype=torch.float32)


def new_transformer(spec: PretrainSpec, num_tokens: int) -> Backbone:
    a = spec.architecture
    if a.max_positions < num_tokens:
        raise SpecError(f"architecture.max_positions: {a.max_positions} is below the task's {num_tokens} tokens")
    sizes = {"hidden_size": a.hidden_size, "num_hidden_layers": a.num_layers, "num_attention_heads": a.num_heads,
             "intermediate_size": a.intermediate_size, "max_position_embeddings": a.max_positions,
             "vocab_size": 1, "pad_token_id": 0}  # the word table is unused: inputs come as embeddings
    try:
        config = tf.AutoConfig.for_model(a.family, **{**sizes, **a.options})
    except ValueError:
        raise SpecError(f"architecture.family: {a.family!r} is not a Hugging Face model_type") from None
    model = seeded(spec.seed, lambda: tf.AutoModel.from_config(config))
    if "inputs_embeds" not in inspect.signature(model.forward).parameters:
        raise SpecError(f"architecture.family: a {a.family} model does not take inputs_embeds; use an encoder "
                        f"such as bert or roberta")
    return Backbone(model, None, max_length=num_tokens)


def load_task(spec: PretrainSpec) -> Task:
    from transferlab.data.build import build_task

    task = build_task(spec.corpus.task, seed=spec.corpus.split_seed)
    if task.modality not in ("vectors", "tokens"):
        raise SpecError(f"corpus.task: {task.name} has modality {task.modality}; masked_inputs takes vectors or "
                        f"tokens tasks (text goes through objective: mlm)")
    return task


def _inputs(task: Task, name: str, n: int | None, seed: int) -> np.ndarray:
    split = task.splits.get(name)
    if split is None or split.inputs is None or len(split) == 0:
        raise DataError(f"task {task.name}: no {name!r} split with inputs")
    x = split.inputs
    if n is not None and n < len(x):
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), size=n, replace=False))]
    return np.ascontiguousarray(x, dtype=np.float32 if task.modality == "vectors" else np.int64)


def train_masked_inputs(spec: PretrainSpec, task: Task | None = None, progress: bool = True,
                        hooks: list | tuple = ()) -> dict:
    """Masked modelling on ``spec.corpus.task`` (or ``task``), write the folder, return the summary."""
    start = time.time()
    out = prepare_out(spec)
    task = task or load_task(spec)
    train_x = _inputs(task, "train", spec.corpus.max_examples, spec.corpus.split_seed)
    held_x = _inputs(task, "dev", None, 0)
    num_tokens = train_x.shape[1]
    pad = task.extra.get("pad_id") if task.modality == "tokens" else None

    if spec.architecture is not None:
        backbone = new_transformer(spec, num_tokens)
    else:
        from dataclasses import replace

        backbone = load_backbone(replace(spec.model, max_length=num_tokens), seed=spec.seed)
    if spec.layers is not None:
        keep_layers(backbone.model, spec.layers)
        backbone.num_layers = len(spec.layers)
    std = float(getattr(backbone.config, "initializer_range", 0.02))
    model = seeded(spec.seed + 1, lambda: MaskedInputModel(backbone, task, std))
    device, amp = device_and_amp(spec)
    model.to(device)

    def candidates(x: np.ndarray) -> np.ndarray:
        return np.ones(x.shape[:2], dtype=bool) if pad is None else x != pad

    if task.modality == "vectors":
        pool = torch.from_numpy(train_x.reshape(-1, train_x.shape[-1])).to(device)
    else:
        pool = torch.arange(task.vocab_size, device=device)
        if pad is not None:
            pool = pool[pool != pad]
    train_masks = MaskSource(candidates(train_x), spec.masking, len(pool), spec.seed)
    held_spec = type(spec.masking)(**{**vars(spec.masking), "strategy": "static"})
    held_masks = MaskSource(candidates(held_x), held_spec, len(pool), HELDOUT_MASK_SEED)
    train_t, held_t = torch.from_numpy(train_x), torch.from_numpy(held_x)

    def terms(x_all: Tensor, masks: MaskSource, index: np.ndarray, forward=model) -> tuple[Tensor, Tensor]:
        x = x_all[torch.as_tensor(index)].to(device, non_blocking=True)
        m = masks(index)
        m = Masks(*(t.to(device, non_blocking=True) for t in (m.masked, m.to_mask, m.to_random, m.pick)))
        attention = (torch.ones(x.shape[:2], dtype=torch.long, device=device) if pad is None
                     else (x != pad).long())
        return forward(x, attention, m, pool)

    def batch_loss(forward, index: np.ndarray) -> Tensor:
        total, count = terms(train_t, train_masks, index, forward)
        return total / count

    @torch.no_grad()
    def heldout() -> float:
        model.eval()
        total, count = torch.zeros((), device=device), torch.zeros((), device=device)
        for i in range(0, len(held_x), spec.train.eval_batch_size):
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                s, n = terms(held_t, held_masks, np.arange(i, min(i + spec.train.eval_batch_size, len(held_x))))
            total, count = total + s.float(), count + n
        return float(total / count)

    history = train_objective(spec, model, len(train_x), batch_loss, heldout, device, amp, out, progress, hooks)
    model.cpu()
    save(model, out)
    summary = {"objective": "masked_inputs", "task": task.name, "modality": task.modality,
               "input_dim": task.input_dim, "vocab_size": task.vocab_size, "mask_id": task.vocab_size,
               "pad_id": pad, "num_tokens": num_tokens, "loss": "mse" if task.modality == "vectors" else "cross_entropy",
               "train_examples": len(train_x), "heldout_examples": len(held_x),
               "heldout_before": history["heldout"][0][1], "heldout_after": history["heldout"][-1][1],
               "duration_s": time.time() - start, **history}
    return write_summary(out, spec, summary)


def save(model: MaskedInputModel, out: Path) -> None:
    model.backbone.model.save_pretrained(out)
    extra = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    save_file(extra, str(out / WEIGHTS), metadata={"format": "pt"})
