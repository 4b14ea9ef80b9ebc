"""The canonical layer schema: every transformer's weights under one set of names.

Each layer ``i`` has the roles ``q, k, v, o`` (attention projections), ``attn_ln`` (the attention
sub-block's LayerNorm), ``ffn_in``, ``ffn_out`` and ``ffn_ln``, each with ``weight`` and ``bias``::

    layers.3.q.weight      (out, in)  the nn.Linear layout in every family (GPT-2's Conv1D is transposed)
    layers.3.attn_ln.bias

The rest of the model has the roles ``embeddings`` (the input side: token/patch embeddings, a
wav2vec2 feature encoder), ``positions``, ``embed_norm``, ``final_norm`` and ``pooler``; their keys
keep the Hugging Face name after the role: ``embeddings:embeddings.word_embeddings.weight``.

``attn_ln`` is the norm that belongs to the attention sub-block: applied before it in a pre-LN
family (GPT-2, ViT, wav2vec2 "stable layer norm") and after its residual sum in a post-LN one
(BERT, wav2vec2-base); ``ffn_ln`` likewise for the feed-forward sub-block.

    s = schema_of(model)                  # a TransferModel, Backbone or Hugging Face model
    s.view("layers.0.q.weight")           # a view into the live parameter, canonical layout
    s.read(); s.write(tensors)            # all canonical tensors out and back in (bit-identical)
    s.head_view("layers.0.o.weight", 1)   # attention head 1 inside q, k, v (rows) or o (columns)

A family is one :class:`FamilyMap` registered under its ``model_type`` names in ``SCHEMAS``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from transferlab.errors import ModelError
from transferlab.registry import Registry

LAYER_ROLES = ("q", "k", "v", "o", "attn_ln", "ffn_in", "ffn_out", "ffn_ln")
# roles only some families have in a layer: the gate half of a GLU feed-forward (ModernBERT, T5 v1.1),
# DeBERTa's own projections of the relative positions (share_att_key: false), T5's relative position
# bias (layer 0 only; every layer uses it)
EXTRA_LAYER_ROLES = ("ffn_gate", "pos_q", "pos_k", "rel_bias")
ALL_LAYER_ROLES = LAYER_ROLES + EXTRA_LAYER_ROLES
ATTENTION_ROLES = ("q", "k", "v", "o")
GLOBAL_ROLES = ("embeddings", "positions", "embed_norm", "final_norm", "pooler")
# what each role is, for freezing policies (FPT trains norms and positions, not attention or feed-forward)
CATEGORY = {"q": "attention", "k": "attention", "v": "attention", "o": "attention", "ffn_in": "ffn",
            "ffn_out": "ffn", "attn_ln": "norm", "ffn_ln": "norm", "embed_norm": "norm", "final_norm": "norm",
            "embeddings": "input", "positions": "positions", "pooler": "pooler", "ffn_gate": "ffn",
            "pos_q": "attention", "pos_k": "attention", "rel_bias": "positions"}


@dataclass(frozen=True)
class Slot:
    """Where one canonical tensor lives inside a layer: a Hugging Face key suffix and how to read it."""

    name: str
    transpose: bool = False  # stored (in, out), as GPT-2's Conv1D
    part: int = 0  # index of this tensor inside a fused one (GPT-2's c_attn holds q, k, v)
    parts: int = 1


def linear(role: str, module: str, transpose: bool = False, part: int = 0, parts: int = 1) -> dict[str, Slot]:
    """The weight and bias slots of a linear (or Conv1D) module."""
    return {f"{role}.weight": Slot(f"{module}.weight", transpose, part, parts),
            f"{role}.bias": Slot(f"{module}.bias", False, part, parts)}


@dataclass
class FamilyMap:
    """How one family's Hugging Face names map onto the schema.

    ``layer_prefix`` holds ``{i}``; ``slots`` maps canonical ``role.weight``/``role.bias`` to slots in a
    layer; ``globals`` maps key prefixes outside the layers to roles (first match wins);
    ``norm`` is ``"pre"`` or ``"post"``; ``causal`` marks decoders (their layers see a causal mask).

    The other per-family facts live here too: ``optional`` (slots a model may lack: biases switched off
    by its config, ModernBERT's first attention norm, T5's bias table outside layer 0), ``positions``
    (the HF name of the learned position table, None for relative/rotary/convolutional positions),
    ``position_offset`` (table rows before the first input token), ``pooler_dense`` (the pretrained
    pooler's linear layer, None without one), ``lora_targets`` (the module names LoRA adapts by
    default: q and v), ``model_class`` (the transformers class to load, when ``AutoModel`` would load
    more than the encoder: T5), ``reorderable`` (its layers form one ``nn.ModuleList`` that can be cut
    and reordered: not ALBERT's shared layer), ``feed`` (where an input adapter's output enters: the
    forward's ``inputs_embeds``, the ``layers`` one by one (ViT, DeiT), or the ``encoder`` module after
    the feature encoder (wav2vec2, HuBERT)), ``norm_type``, ``ffn`` (plain or glu) and ``position_kind``
    (absolute, relative, rotary, convolutional), and ``tiny`` (a small random config for tests).
    ``stackable``: the seed-stacked engine can hold it (every weight in a Linear, Conv1D, LayerNorm
    or Embedding module); ``layer_loop``: models/backbone.layer_loop computes its hidden states
    (BERT-shaped encoders); ``classifier``: how the family's Hugging Face ``*ForSequenceClassification``
    lays out its head (``"bert"``: dropout + linear on the pooler; ``"roberta"``: dense -> tanh ->
    out_proj on token 0; None: no plain export).
    """

    name: str
    model_types: tuple[str, ...]
    layer_prefix: str
    slots: dict[str, Slot]
    globals: list[tuple[str, str]]
    norm: str
    causal: bool = False
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    optional: tuple[str, ...] = ()  # canonical slot keys (``ffn_in.bias``) a model of the family may lack
    positions: str | None = None
    position_offset_rows: int = 0
    pooler_dense: str | None = None
    lora_targets: tuple[str, ...] = ()
    model_class: str | None = None
    reorderable: bool = True
    stackable: bool = False  # the seed-stacked engine can hold it
    layer_loop: bool = False
    classifier: str | None = None
    norm_type: str = "layernorm"
    ffn: str = "plain"
    position_kind: str = "absolute"
    feed: str = "inputs_embeds"  # how an input adapter's output enters: inputs_embeds, layers (ViT), encoder (wav2vec2)
    tiny: Any = None  # model_type -> a small PretrainedConfig (hidden 32, 2 layers, 2 heads, MiniLM's vocab)

    def tiny_config(self, model_type: str | None = None):
        """A small random config of this family (of ``model_type``, default its first) for tests."""
        if self.tiny is None:
            raise ModelError(f"the {self.name} family has no tiny test config")
        return self.tiny(model_type or self.model_types[0])

    def layer_slots(self, config) -> dict[str, Slot]:
        """The slots of a layer for this config (T5: gated or plain feed-forward)."""
        return self.slots

    def layer_path(self, config, layer: int) -> str:
        """The HF name prefix of layer ``layer`` (ALBERT: the shared group that computes it)."""
        return self.layer_prefix.format(i=layer)

    def layer_stack(self) -> str:
        """The path of the ``nn.ModuleList`` of layers (``encoder.layer``)."""
        return self.layer_prefix.format(i=0).rstrip(".").rpartition(".")[0]

    def shared_layers(self, config) -> list[list[int]]:
        """Groups of layers that share one set of weights (ALBERT); empty when every layer has its own."""
        return []

    def position_offset(self, config) -> int:
        """Rows of the position table before the first input position (RoBERTa: padding_idx + 1; ViT: CLS)."""
        return self.position_offset_rows

    def max_positions(self, config) -> int | None:
        """How many input tokens the family's learned position table covers; None without one."""
        if self.positions is None:
            return None
        n = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        return None if n is None else int(n) - self.position_offset(config)

    def call_layer(self, model: nn.Module, layer: int, hidden: Tensor, additive: Tensor) -> Tensor:
        """Layer ``layer`` of ``model`` on hidden states with an additive (B, 1, T, T) mask."""
        out = model.get_submodule(self.layer_path(model.config, layer).rstrip("."))(hidden, attention_mask=additive)
        return out[0] if isinstance(out, tuple) else out

    def norm_position(self, config) -> str:
        return self.norm

    def global_roles(self, config) -> list[tuple[str, str]]:
        return self.globals

    def activation(self, config) -> str:
        return str(getattr(config, "hidden_act", None) or getattr(config, "activation_function", "?"))

    def layer_norm_eps(self, config) -> float:
        return float(getattr(config, "layer_norm_eps", None) or getattr(config, "layer_norm_epsilon", 0.0))

    def attention_scale(self, config, layer: int) -> float:
        """The factor on q.k beyond 1/sqrt(head_dim) (GPT-2 can scale by 1/(layer+1))."""
        return 1.0

    def traits(self, config, layer: int) -> dict[str, Any]:
        """What decides a layer's function besides its weights; a transplant notes every difference."""
        return {"norm": self.norm_position(config), "activation": self.activation(config),
                "layer_norm_eps": self.layer_norm_eps(config), "causal": self.causal,
                "attention_scale": self.attention_scale(config, layer), "norm_type": self.norm_type,
                "ffn": self.ffn, "positions_in_layer": self.layer_positions(config)}

    def layer_positions(self, config) -> str:
        """Positions the layer itself uses (relative bias, rotary); "none" when they come with the input."""
        return self.position_kind if self.position_kind in ("relative", "rotary") else "none"


SCHEMAS: Registry[FamilyMap] = Registry("layer schema (model_type)")

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
TEXT = {"vocab_size": 30522, "pad_token_id": 0, "bos_token_id": 101, "eos_token_id": 102}  # MiniLM's tokenizer


def register(family: FamilyMap) -> FamilyMap:
    SCHEMAS.register(*family.model_types)(family)  # its facts (stackable, layer_loop) live on the FamilyMap
    return family


def family_of(model_type: str) -> FamilyMap | None:
    """The registered map of a ``config.model_type``, or None (no schema: the family's facts default)."""
    return SCHEMAS.get(model_type) if model_type in SCHEMAS else None


def hf_model(model: nn.Module) -> tuple[nn.Module, str]:
    """The Hugging Face model inside a TransferModel / Backbone, and the prefix of its parameter names."""
    if hasattr(model, "backbone") and hasattr(model.backbone, "model"):
        return model.backbone.model, "backbone.model."
    if hasattr(model, "model") and hasattr(model, "family"):  # a Backbone
        return model.model, "model."
    if hasattr(model, "config"):
        return model, ""
    raise ModelError(f"{type(model).__name__} is not a Hugging Face model, Backbone or TransferModel")


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or "Norm" in type(module).__name__


class ModelSchema:
    """The schema bound to one model: canonical keys, views into its parameters, heads."""

    def __init__(self, model: nn.Module):
        # every family is registered: importing this module ran models/schema/__init__.py first
        self.model, self.prefix = hf_model(model)
        self.config = self.model.config
        model_type = str(self.config.model_type)
        if model_type not in SCHEMAS:
            raise ModelError(f"no layer schema for model type {model_type!r}; supported model types: "
                             f"{', '.join(SCHEMAS.names())}")
        self.family = SCHEMAS.get(model_type)
        self.num_layers = int(self.config.num_hidden_layers)
        self.num_heads = int(self.config.num_attention_heads)
        self.hidden_size = int(self.config.hidden_size)
        self.head_dim = self.hidden_size // self.num_heads
        self.norm = self.family.norm_position(self.config)
        self.state = self.model.state_dict()  # detached tensors sharing the parameters' storage
        self.slots: dict[str, tuple[str, Slot]] = {}  # canonical key -> (HF key, slot)
        self.roles: dict[str, tuple[int | None, str]] = {}  # HF key -> (layer or None, role)
        self.shared = self.family.shared_layers(self.config)
        # a module LoRA (peft) wrapped keeps its weights under ``.base_layer.``: the schema reads them there
        wrapped = {k.replace(".base_layer.", "."): k for k in self.state if ".base_layer." in k}
        for i in range(self.num_layers):  # a shared layer's tensors get the top layer that uses them
            pre = self.family.layer_path(self.config, i)
            for key, slot in self.family.layer_slots(self.config).items():
                name = wrapped.get(pre + slot.name, pre + slot.name)
                if name not in self.state:
                    if key in self.family.optional:
                        continue  # e.g. no biases in this config; ModernBERT's layer 0 has no attention norm
                    raise ModelError(f"{self.family.name} schema: {name} is not in the {model_type} model")
                self.slots[f"layers.{i}.{key}"] = (name, slot)
                self.roles[name] = (i, key.split(".")[0])
        claimed = set(self.roles)
        for name in self.state:
            if name in claimed:
                continue
            if ".lora_" in name:  # an adapter's A/B: the layer and role of the module it adapts (not a slot)
                self.roles[name] = self._adapted(name)
                continue
            role = next((r for p, r in self.family.global_roles(self.config) if name.startswith(p)), None)
            if role is None:
                raise ModelError(f"{self.family.name} schema: parameter {name} of the {model_type} model has no role")
            self.slots[f"{role}:{name}"] = (name, Slot(name))
            self.roles[name] = (None, role)

    def _adapted(self, name: str) -> tuple[int | None, str]:
        module = name.split(".lora_")[0] + ".base_layer."
        found = next((r for k, r in self.roles.items() if k.startswith(module)), None)
        if found is None:
            raise ModelError(f"{self.family.name} schema: LoRA parameter {name} adapts no module of the schema")
        return found

    # ------------------------------------------------------------------ keys and views
    def keys(self, pattern: str = "*") -> list[str]:
        return [k for k in self.slots if fnmatch.fnmatchcase(k, pattern)]

    def layer_key(self, layer: int, role: str, part: str) -> str:
        return f"layers.{layer}.{role}.{part}"

    def shared_with(self, layer: int) -> list[int]:
        """The layers that share layer ``layer``'s weights (itself included)."""
        return next((g for g in self.shared if layer in g), [layer])

    def depth(self, hf_name: str) -> int:
        """Where a backbone parameter sits for layer-wise learning rates: 0 input side, 1..L layers
        (a shared layer: the top layer that uses it), L the pooler and final norm."""
        layer, role = self.roles[hf_name]
        if layer is not None:
            return layer + 1
        return self.num_layers if role in ("pooler", "final_norm") else 0

    def has_role(self, role: str) -> bool:
        return any(r == role for _, r in self.roles.values())

    def view(self, key: str) -> Tensor:
        """The canonical tensor ``key`` as a view of the live parameter (writes go into the model)."""
        try:
            name, slot = self.slots[key]
        except KeyError:
            raise ModelError(f"{self.family.name} model has no canonical tensor {key!r}") from None
        t = self.state[name]
        if slot.parts > 1:
            dim = 1 if slot.transpose else 0
            size = t.shape[dim] // slot.parts
            t = t.narrow(dim, slot.part * size, size)
        return t.t() if slot.transpose else t

    def head_view(self, key: str, head: int) -> Tensor:
        """Attention head ``head`` inside q/k/v (its rows of weight and bias) or o (its weight columns)."""
        return self.head_part(key, head, self.view(key))

    def head_part(self, key: str, head: int, t: Tensor) -> Tensor:
        """The part of ``t`` (a tensor shaped like canonical ``key``) that belongs to attention head ``head``."""
        layer_role = key.split(".")[2] if key.startswith("layers.") else None
        if layer_role not in ATTENTION_ROLES or key.endswith("o.bias"):
            raise ModelError(f"{key}: attention heads live in q, k, v (weight, bias) and o (weight) only")
        if not 0 <= head < self.num_heads:
            raise ModelError(f"head {head} does not exist: {self.family.name} has heads 0-{self.num_heads - 1}")
        sl = slice(head * self.head_dim, (head + 1) * self.head_dim)
        return t[:, sl] if layer_role == "o" else t[sl]

    def kind(self, key: str) -> str:
        """``matrix``, ``embedding``, ``bias``, ``norm_weight``, ``norm_bias`` (decides how a scheme fills it)."""
        name, _ = self.slots[key]
        owner = self.model.get_submodule(name.rpartition(".")[0]) if "." in name else self.model
        leaf = name.rpartition(".")[2]
        if _is_norm(owner):
            return "norm_bias" if leaf == "bias" else "norm_weight"
        if leaf == "bias":
            return "bias"
        layer_like = isinstance(owner, (nn.Linear, nn.modules.conv._ConvNd)) or type(owner).__name__ == "Conv1D"
        return "matrix" if layer_like and self.view(key).dim() >= 2 else "embedding"

    def read(self) -> dict[str, Tensor]:
        return {k: self.view(k).detach().clone() for k in self.slots}

    @torch.no_grad()
    def write(self, tensors: dict[str, Tensor]) -> None:
        for key, value in tensors.items():
            target = self.view(key)
            if target.shape != value.shape:
                raise ModelError(f"{key}: shape {tuple(value.shape)} does not fit {tuple(target.shape)}")
            target.copy_(value)

    def layer_traits(self, layer: int) -> dict[str, Any]:
        return self.family.traits(self.config, layer)

    # ------------------------------------------------------------------ calling one layer
    def layer_module(self, layer: int) -> nn.Module:
        if not 0 <= layer < self.num_layers:
            raise ModelError(f"layer {layer} does not exist: {self.family.name} has layers 0-{self.num_layers - 1}")
        return self.model.get_submodule(self.family.layer_path(self.config, layer).rstrip("."))

    def call_layer(self, layer: int, hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        """Layer ``layer`` on hidden states (B, T, H) with a (B, T) 0/1 mask (causal too for decoders)."""
        b, t, _ = hidden.shape
        keep = torch.ones(b, 1, t, t, dtype=torch.bool, device=hidden.device)
        if mask is not None:
            keep = keep & mask.bool()[:, None, None, :]
        if self.family.causal:
            keep = keep & torch.ones(t, t, dtype=torch.bool, device=hidden.device).tril()
        additive = torch.zeros(keep.shape, dtype=hidden.dtype, device=hidden.device)
        additive = additive.masked_fill(~keep, torch.finfo(hidden.dtype).min)
        self.layer_module(layer)  # checks the index
        return self.family.call_layer(self.model, layer, hidden, additive)


def schema_of(model: nn.Module) -> ModelSchema:
    """The canonical schema of ``model`` (a TransferModel, Backbone or Hugging Face model)."""
    return ModelSchema(model)
