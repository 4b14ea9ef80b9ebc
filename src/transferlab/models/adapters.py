"""Input adapters: non-text inputs straight into a backbone's transformer blocks (Lu et al. 2021, FPT).

The adapter replaces the backbone's token embeddings; its output is the backbone's
``inputs_embeds``, so the backbone still adds its positions (and, in BERT, the segment-0
embedding) and applies its embedding LayerNorm. Families whose forward takes no ``inputs_embeds``
(ViT, DeiT) are fed through their layers directly (:func:`feed_embeds`): adapter output + the
patch rows of their position table, then every layer; wav2vec2 and HuBERT through their encoder
module (positional convolution, norm, layers): the adapter stands for the feature encoder.

* ``modality="vectors"``: (B, T, D) floats -> :class:`VectorAdapter`, a linear layer with
  orthogonal weights times ``gain`` (FPT: 1.41) and zero bias: patches, pixels, bit groups;
* ``modality="tokens"``: (B, T) ids of the task's own vocabulary -> :class:`TokenAdapter`, a new
  table N(0, std) (std: the backbone's initializer_range): ListOps symbols, amino acids, pixel
  intensities of a pixel sequence.

``build_input(spec.input_adapter, backbone, task)`` also sets the positions: ``backbone`` keeps
the backbone's own table, and a sequence longer than it is a SpecError; ``new`` replaces the table
by a new one of ``max_positions`` rows (default: the task's longest sequence), N(0, std), under the
same name, so freezing policies treat it as positions. ``match_norm`` rescales the input layer so
that its outputs on (up to 512) training inputs have the mean norm of the backbone's token
embeddings. ``from: FOLDER`` starts the input layer from the one a masked-input pretraining
(pretrain/masked_inputs.py) wrote to FOLDER, usually with ``model.name: FOLDER`` too. See docs/methods/input_adapters.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from transferlab.errors import DataError, ModelError, SpecError


class VectorAdapter(nn.Module):
    """Linear D -> H with orthogonal weights (scaled by ``gain``) and zero bias."""

    def __init__(self, input_dim: int, hidden: int, gain: float = 1.0):
        super().__init__()
        self.input_dim, self.hidden, self.gain = input_dim, hidden, gain
        self.proj = nn.Linear(input_dim, hidden)
        nn.init.orthogonal_(self.proj.weight, gain=gain)
        nn.init.zeros_(self.proj.bias)

    def forward(self, inputs: Tensor) -> Tensor:
        if inputs.dim() != 3 or inputs.shape[-1] != self.input_dim:
            raise DataError(f"vector inputs must have shape (B, T, {self.input_dim}); got {tuple(inputs.shape)}")
        return self.proj(inputs.to(self.proj.weight.dtype))

    def describe(self) -> dict[str, Any]:
        return {"kind": "vectors", "input_dim": self.input_dim, "hidden": self.hidden, "gain": self.gain}


class TokenAdapter(nn.Module):
    """An embedding table for the task's token ids, N(0, std) like BERT's word embeddings.

    ``std`` defaults to BERT's initializer_range; at N(0, 1) (torch's default) the new embeddings
    would swamp the pretrained position embeddings before the embedding LayerNorm.
    """

    def __init__(self, vocab_size: int, hidden: int, std: float = 0.02):
        super().__init__()
        self.vocab_size, self.hidden, self.std = vocab_size, hidden, std
        self.embed = nn.Embedding(vocab_size, hidden)
        nn.init.normal_(self.embed.weight, std=std)

    def forward(self, inputs: Tensor) -> Tensor:
        if inputs.dim() != 2:
            raise DataError(f"token inputs must have shape (B, T); got {tuple(inputs.shape)}")
        return self.embed(inputs.long())

    def describe(self) -> dict[str, Any]:
        return {"kind": "tokens", "vocab_size": self.vocab_size, "hidden": self.hidden, "std": self.std}


def build_adapter(
    kind: str, hidden: int, input_dim: int | None = None, vocab_size: int | None = None,
    gain: float = 1.0, std: float = 0.02, task: str = "task",
) -> nn.Module:
    """The adapter for a task modality ("vectors" or "tokens"); ``describe()`` output rebuilds it."""
    if kind == "vectors":
        if not input_dim:
            raise DataError(f"task {task!r} has modality 'vectors' but no input_dim")
        return VectorAdapter(int(input_dim), hidden, gain)
    if kind == "tokens":
        if not vocab_size:
            raise DataError(f"task {task!r} has modality 'tokens' but no vocab_size")
        return TokenAdapter(int(vocab_size), hidden, std)
    raise DataError(f"task {task!r}: modality {kind!r} has no input adapter; known: 'vectors', 'tokens'")


# ---------------------------------------------------------------- the backbone's position table


def position_table(backbone) -> tuple[nn.Module, str, Tensor] | None:
    """(owner module, attribute, tensor) of the backbone's learned position table; None when it has none."""
    if backbone.family == "lstm":
        return None
    from transferlab.models.schema import SCHEMAS

    if backbone.family not in SCHEMAS:
        return None
    params = dict(backbone.model.named_parameters())
    name = SCHEMAS.get(backbone.family).positions  # None: relative, rotary or convolutional positions
    if name is None or name not in params:
        return None
    path, _, leaf = name.rpartition(".")
    owner = backbone.model.get_submodule(path)
    if isinstance(owner, nn.Embedding):  # BERT, RoBERTa, GPT-2: an embedding module
        parent, _, attr = path.rpartition(".")
        return backbone.model.get_submodule(parent), attr, owner.weight
    return owner, leaf, params[name]  # ViT, DeiT: a (1, rows, H) parameter


def position_offset(backbone) -> int:
    """Rows of the table before the first input position (RoBERTa: padding_idx + 1; ViT: CLS)."""
    from transferlab.models.schema import SCHEMAS

    if backbone.family not in SCHEMAS:
        return 0
    return SCHEMAS.get(backbone.family).position_offset(backbone.config)


def position_limit(backbone) -> int | None:
    """How many input tokens the backbone's positions cover; None when it has no position table."""
    table = position_table(backbone)
    if table is None:
        return None
    rows = table[2].shape[-2]
    return rows - position_offset(backbone)


@torch.no_grad()
def new_positions(backbone, n: int, std: float) -> None:
    """Replace the position table by a new N(0, std) one covering ``n`` input tokens (same name)."""
    table = position_table(backbone)
    if table is None:
        raise SpecError(f"input_adapter.positions: new needs a learned position table; {backbone.family} has none")
    owner, attr, old = table
    rows = n + position_offset(backbone)
    if isinstance(getattr(owner, attr), nn.Embedding):
        new = nn.Embedding(rows, old.shape[-1])
        nn.init.normal_(new.weight, std=std)
        setattr(owner, attr, new.to(old.device, old.dtype))
        for buf, fill in (("position_ids", torch.arange(rows)), ("token_type_ids", torch.zeros(rows))):
            if buf in dict(owner.named_buffers(recurse=False)):
                owner.register_buffer(buf, fill.long().unsqueeze(0).to(old.device), persistent=False)
        for key in ("max_position_embeddings", "n_positions"):
            if hasattr(backbone.config, key):
                setattr(backbone.config, key, rows)
    else:
        setattr(owner, attr, nn.Parameter(torch.randn(1, rows, old.shape[-1], dtype=old.dtype,
                                                      device=old.device) * std))


# ---------------------------------------------------------------- building and feeding


def _sequence_length(task) -> int | None:
    """The longest sequence of the task's data; for a data-less task (a restored model) its recorded one."""
    lengths = [int(s.inputs.shape[1]) for s in task.splits.values() if s.inputs is not None and len(s.inputs)]
    return max(lengths) if lengths else task.extra.get("num_tokens")


def embedding_norm(backbone) -> float:
    """Mean L2 norm of the rows of the backbone's token-embedding table."""
    table = backbone.model.get_input_embeddings() if hasattr(backbone.model, "get_input_embeddings") else None
    if not isinstance(table, nn.Embedding):
        raise SpecError(f"input_adapter.match_norm: {backbone.family} has no token-embedding table to match")
    return float(table.weight.detach().float().norm(dim=-1).mean())


@torch.no_grad()
def match_norm(adapter: nn.Module, inputs: np.ndarray, target: float) -> float:
    """Scale the adapter's weights so its mean output norm on ``inputs`` is ``target``; returns the factor."""
    x = torch.as_tensor(inputs[:512])
    current = float(adapter(x).float().norm(dim=-1).mean())
    if current <= 0:
        raise DataError("input_adapter.match_norm: the input layer's outputs are all zero on the training inputs")
    factor = target / current
    for p in adapter.parameters():
        p.mul_(factor)
    return factor


PRETRAINED_INPUT = "masked_inputs.safetensors"  # what pretrain/masked_inputs.py writes beside the backbone


@torch.no_grad()
def load_pretrained_input(adapter: nn.Module, folder: str) -> None:
    """Copy the input layer a masked-input pretraining saved in ``folder`` into ``adapter``. A token table
    has one more row there (the mask symbol, last): the task's rows are copied, the mask row is left out."""
    from pathlib import Path

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder).expanduser() / PRETRAINED_INPUT
    if not path.is_file():
        raise SpecError(f"input_adapter.from: {path} does not exist (a masked_inputs pretraining writes it)")
    try:
        saved = {k[len("input_adapter."):]: v for k, v in load_file(str(path)).items() if k.startswith("input_adapter.")}
    except (SafetensorError, OSError) as e:
        raise SpecError(f"input_adapter.from: cannot read {path}: {e}") from None
    own = adapter.state_dict()
    if set(saved) != set(own):
        raise SpecError(f"input_adapter.from: {path} holds a {', '.join(sorted(saved)) or 'no'} input layer; this "
                        f"task's ({adapter.describe()['kind']}) has {', '.join(sorted(own))}")
    for key, value in saved.items():
        if key == "embed.weight" and value.shape[0] == own[key].shape[0] + 1:
            value = value[:-1]  # the mask symbol's row
        if value.shape != own[key].shape:
            raise SpecError(f"input_adapter.from: {key} is {tuple(value.shape)} in {path}, but this task and "
                            f"backbone need {tuple(own[key].shape)}")
        own[key].copy_(value)


def build_input(spec, backbone, task) -> nn.Module:
    """The input adapter of ``task`` for ``backbone`` per ``spec`` (an InputAdapterSpec); sets positions."""
    std = spec.std if spec.std is not None else float(getattr(backbone.config, "initializer_range", 0.02))
    adapter = build_adapter(task.modality, backbone.hidden_size, input_dim=task.input_dim,
                            vocab_size=task.vocab_size, gain=spec.gain, std=std, task=task.name)
    if spec.from_ is not None:
        if spec.match_norm:
            raise SpecError("input_adapter.match_norm: the input layer comes from input_adapter.from; "
                            "drop match_norm (it would rescale the pretrained layer)")
        load_pretrained_input(adapter, spec.from_)
    length = _sequence_length(task)
    if spec.positions == "new":
        n = spec.max_positions or length
        if n is None:
            raise ModelError(f"input_adapter.max_positions: task {task.name} has no data to size the new table; "
                             "set it")
        if length is not None and n < length:
            raise SpecError(f"input_adapter.max_positions: {n} rows, but task {task.name} has sequences of "
                            f"{length} tokens")
        new_positions(backbone, n, std)
    else:
        if spec.max_positions is not None:
            raise SpecError("input_adapter.max_positions: sizes a new table; set input_adapter.positions: new")
        limit = position_limit(backbone)
        if limit is not None and length is not None and length > limit:
            raise SpecError(f"task {task.name}: sequences of {length} tokens, but {backbone.family} has {limit} "
                            f"positions; set input_adapter.positions: new (and max_positions >= {length}) "
                            "or make the sequences shorter (a larger patch_size, task.options.max_tokens)")
    if spec.match_norm and task.splits.get("train") is not None and task.splits["train"].inputs is not None:
        match_norm(adapter, task.splits["train"].inputs, embedding_norm(backbone))
    return adapter


def encoder_states(encoder: nn.Module, embeds: Tensor, mask: Tensor) -> tuple[Tensor, ...]:
    """All hidden states of a wav2vec2/HuBERT ``encoder`` module run on ``embeds``: layer 0's input, each
    layer's output, the last one as the encoder returns it (after the final norm of a pre-LN model).

    The module returns its last state only (transformers 5 gathers the others with hooks on the
    top-level model), so the states are taken here with hooks on its layers; a layer LayerDrop
    skips in training passes its input on, as in the library's loop."""
    states: dict[int, Tensor] = {}

    def keep_input(_module, _args, out):  # the encoder's dropout after the positions: layer 0's input
        states[-1] = out

    def keep(i):
        def hook(_module, _args, out):
            states[i] = out[0] if isinstance(out, tuple) else out
        return hook

    layers = encoder.layers
    handles = [encoder.dropout.register_forward_hook(keep_input)]
    handles += [layer.register_forward_hook(keep(i)) for i, layer in enumerate(layers)]
    try:
        last = encoder(embeds, attention_mask=mask.bool()).last_hidden_state
    finally:
        for h in handles:
            h.remove()
    hidden = [states[-1]]
    for i in range(len(layers) - 1):
        hidden.append(states.get(i, hidden[-1]))
    return (*hidden, last)


def feed_embeds(backbone, embeds: Tensor, mask: Tensor | None) -> tuple[tuple[Tensor, ...], Tensor]:
    """All hidden states and the mask for adapter outputs ``embeds`` (B, T, H)."""
    from transferlab.models.schema import SCHEMAS, schema_of

    if "inputs_embeds" in getattr(backbone, "_args", {"inputs_embeds"}):
        return backbone(inputs_embeds=embeds, attention_mask=mask)
    feed = SCHEMAS.get(backbone.family).feed if backbone.family in SCHEMAS else None
    if feed not in ("layers", "encoder"):
        raise ModelError(f"input adapters need a backbone that takes inputs_embeds, a ViT/DeiT or a wav2vec2/"
                         f"HuBERT; {backbone.family} is none of them")
    if mask is None:
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    if feed == "encoder":  # wav2vec2: the adapter stands for the feature encoder and its projection
        return encoder_states(backbone.model.encoder, embeds, mask), mask
    route = backbone.__dict__.get("_blocks_route")
    if route is None:  # built once: the schema's layer calls and where the position table lives
        owner, attr, _ = position_table(backbone)
        route = backbone.__dict__["_blocks_route"] = (owner, attr, schema_of(backbone))
    owner, attr, schema = route
    offset = position_offset(backbone)
    x = embeds + getattr(owner, attr)[:, offset : offset + embeds.shape[1]]
    x = backbone.model.embeddings.dropout(x)
    hidden = [x]
    for i in range(backbone.num_layers):
        x = schema.call_layer(i, x, mask)
        hidden.append(x)
    return tuple(hidden), mask
