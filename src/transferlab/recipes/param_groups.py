"""Parameter groups: which layer each parameter sits in, its learning rate and its weight decay.

    groups = build_param_groups(model, spec.optim, model.num_layers)
    optimizer = build_optimizer(groups, spec.optim, device.type)

Layers are counted from the input (see :func:`depths`): 0 is the embeddings / input side,
1..L the transformer layers, L the pooler and final norm too, and L+1 the task head. Where the
family has a layer schema the depth comes from it (models/schema: ModernBERT's ``final_norm`` is
L, ALBERT's shared layer is the top layer that uses it, L); otherwise from the names (:func:`layer_of`).
Layer-wise LR decay follows BEiT's ``LayerDecayValueAssigner`` (Bao et al. 2022)::

    lr(layer) = optim.lr * optim.layer_decay ** (L + 1 - layer)     for layer in 0..L
    lr(head)  = optim.head_lr if set, else optim.lr                  (layer L+1, decay ** 0)

so the top transformer layer (and the pooler and final norm) trains at ``lr * decay``, the layer
below at ``lr * decay**2``, and the embeddings at ``lr * decay**(L+1)``. With ``layer_decay=1``
every backbone group has ``optim.lr``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

from transferlab.errors import ModelError, SpecError
from transferlab.spec import OptimSpec

# ".layer.3." (BERT, ViT, DistilBERT), ".layers.3." (wav2vec2, Llama), ".h.3." (GPT-2), ".block(s).3." (T5, timm)
_NUMBERED = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")
# the pooler and norms applied after the last layer: GPT-2 ln_f, ViT/Swin/DINOv2 layernorm, Llama norm,
# T5/OPT/Whisper final_layer_norm, CLIP post_layernorm (case-sensitive: BERT's "LayerNorm" is elsewhere)
_TOP = re.compile(r"\.(?:pooler|ln_f|layernorm|norm|final_layer_norm|final_layernorm|post_layernorm)\.")


def layer_of(name: str, num_layers: int) -> int:
    """The depth of parameter ``name`` in a ``TransferModel`` with ``num_layers`` transformer layers.

    ``head.*`` -> L+1; ``backbone.*`` inside a numbered layer N (``.layer.N.``, ``.layers.N.``,
    ``.h.N.``, ``.block.N.``, ``.blocks.N.``; the first such match counts) -> N+1; the pooler and a
    final norm outside ``embeddings`` -> L; everything else (embeddings, ``input_adapter.*``, a
    wav2vec2 feature extractor, ...) -> 0. A norm the names cannot place (wav2vec2's
    ``encoder.layer_norm``) counts as input side.
    """
    if name.startswith("head."):
        return num_layers + 1
    if name.startswith("input_adapter."):
        return 0
    match = _NUMBERED.search(name)
    if match:
        index = int(match.group(1))
        if index >= num_layers:
            raise ModelError(f"parameter {name} is in layer {index}, but the model has num_layers={num_layers}")
        return index + 1
    if ".embeddings." not in name and _TOP.search(name):
        return num_layers
    return 0


def depths(model: nn.Module, num_layers: int) -> Callable[[str], int]:
    """Parameter name -> depth: from the family's layer schema where there is one (a parameter LoRA
    added inside a module gets that module's depth), else :func:`layer_of` on the name."""
    from transferlab.models.schema import schema_of

    try:
        schema = schema_of(model)
    except (ModelError, AttributeError):  # no schema (an LSTM, a family without a map, a plain module): names decide
        return lambda name: layer_of(name, num_layers)
    by_module: dict[str, int] = {}
    for hf_name in schema.roles:
        by_module.setdefault(schema.prefix + hf_name.rpartition(".")[0], schema.depth(hf_name))

    def depth(name: str) -> int:
        if not name.startswith(schema.prefix):
            return layer_of(name, num_layers)
        path = name
        while path:
            path = path.rpartition(".")[0]
            if path in by_module:
                return by_module[path]
        return layer_of(name, num_layers)

    return depth


def _is_norm(module: nn.Module) -> bool:
    """Normalisation modules: nn.LayerNorm and any class named *Norm* (BatchNorm, GroupNorm, RMSNorm...)."""
    return isinstance(module, nn.LayerNorm) or "Norm" in type(module).__name__


def _no_decay(name: str, owner: nn.Module, patterns: list[str]) -> bool:
    """No weight decay when a pattern matches: "norm" = owned by a norm module, else a name substring."""
    for pattern in patterns:
        if pattern.lower() == "norm":
            if _is_norm(owner):
                return True
        elif pattern in name:
            return True
    return False


def _check(spec: OptimSpec) -> None:
    if not spec.lr > 0:
        raise SpecError(f"optim.lr: {spec.lr} must be > 0")
    if spec.head_lr is not None and not spec.head_lr > 0:
        raise SpecError(f"optim.head_lr: {spec.head_lr} must be > 0 (or null for optim.lr)")
    if not 0 < spec.layer_decay <= 1:
        raise SpecError(f"optim.layer_decay: {spec.layer_decay} must be in (0, 1] (1 = no decay)")
    if spec.weight_decay < 0:
        raise SpecError(f"optim.weight_decay: {spec.weight_decay} must be >= 0")


def group_lr(spec: OptimSpec, layer: int, num_layers: int) -> float:
    """The base LR of the parameters at depth ``layer``: head_lr (or lr) for the head, else lr decayed per layer."""
    if layer == num_layers + 1:
        return spec.head_lr or spec.lr
    return spec.lr * spec.layer_decay ** (num_layers + 1 - layer)


def build_param_groups(model: nn.Module, spec: OptimSpec, num_layers: int | None = None) -> list[dict]:
    """All parameters of ``model`` (frozen ones too) in groups keyed by (layer, decay or not).

    Each group holds ``params``, ``lr``, ``weight_decay`` and the metadata ``name``
    (``"layer3.decay"``, ``"head.no_decay"``), ``layer`` (see :func:`layer_of`) and
    ``param_names`` (aligned with ``params``; torch optimizers keep it in their state dict).
    Groups are ordered by layer, decayed first; empty groups are left out.
    ``num_layers`` defaults to ``model.num_layers``.
    """
    _check(spec)
    if num_layers is None:
        num_layers = getattr(model, "num_layers", None)
        if not isinstance(num_layers, int):
            raise ModelError(f"{type(model).__name__} has no int num_layers; pass num_layers")
    owners = {name: module for name, module in model.named_modules()}
    depth = depths(model, num_layers)
    buckets: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():  # shared (tied) parameters come once
        layer = depth(name)
        owner = owners[name.rpartition(".")[0]]
        decay = spec.weight_decay > 0 and not _no_decay(name, owner, spec.no_decay)
        group = buckets.get((layer, decay))
        if group is None:
            top = layer == num_layers + 1
            label = "head" if top else f"layer{layer}"
            lr = group_lr(spec, layer, num_layers)
            group = buckets[(layer, decay)] = {
                "params": [], "lr": lr, "weight_decay": spec.weight_decay if decay else 0.0,
                "name": f"{label}.{'decay' if decay else 'no_decay'}", "layer": layer, "param_names": [],
            }
        group["params"].append(param)
        group["param_names"].append(name)
    if not buckets:
        raise ModelError(f"{type(model).__name__} has no parameters to optimise")
    return [buckets[key] for key in sorted(buckets, key=lambda k: (k[0], not k[1]))]


def describe_param_groups(groups: list[dict]) -> list[tuple[str, float, float, int]]:
    """(name, lr, weight decay, number of parameter values) per group, for display."""
    return [
        (g.get("name", f"group{i}"), float(g["lr"]), float(g["weight_decay"]), sum(p.numel() for p in g["params"]))
        for i, g in enumerate(groups)
    ]
