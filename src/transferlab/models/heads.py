"""Heads: all hidden states and the attention mask in, (B, num_outputs) logits out.

A head pools the backbone's hidden states into one feature vector per example
(``pool``), then applies dropout and a linear layer to ``num_outputs`` (1 for
regression). Every pooling over time is padding-aware: padded positions never
change a prediction. A new head is one class and one decorator:

    @HEADS.register("mean")
    class MeanHead(Head):
        def pool(self, hidden_states, mask): return masked_mean(hidden_states[-1], mask)

``fused=True`` at registration declares that the head pools padding-aware from hidden states
alone, so the fused stacked encoder (train/fused.py: zeros at padded positions) may feed it.
``options`` (a class attribute) lists the head's keyword options and their defaults;
``HeadSpec.options`` must only use those keys. See docs/methods/heads.md for sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from transferlab.errors import SpecError
from transferlab.registry import Registry


@dataclass(frozen=True)
class HeadCaps:
    fused: bool = False  # the fused encoder (train/fused.py) can feed it


HEADS: Registry = Registry("head", HeadCaps)
INIT_STD = 0.02  # BERT's initializer_range: new linear layers get N(0, 0.02) weights and zero biases


def init_linear(layer: nn.Linear) -> nn.Linear:
    nn.init.normal_(layer.weight, std=INIT_STD)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


# ---------------------------------------------------------------- masked pooling (written by hand: torch has none)


def _mask(mask: Tensor, like: Tensor) -> Tensor:
    """(B, T) mask -> (B, T, 1) bool."""
    return mask.to(device=like.device).bool().unsqueeze(-1)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    m = _mask(mask, x)
    return (x * m).sum(1) / m.sum(1).clamp(min=1)


def masked_max(x: Tensor, mask: Tensor) -> Tensor:
    return x.masked_fill(~_mask(mask, x), torch.finfo(x.dtype).min).amax(1)


def last_token(x: Tensor, mask: Tensor) -> Tensor:
    """The last position whose mask is 1 (works for right and left padding)."""
    pos = torch.arange(x.shape[1], device=x.device)
    idx = (mask.to(x.device).bool() * (pos + 1)).argmax(1)
    return x[torch.arange(x.shape[0], device=x.device), idx]


def masked_softmax_pool(x: Tensor, scores: Tensor, mask: Tensor) -> Tensor:
    """Sum over time of x weighted by softmax(scores) over the real positions. scores: (B, T)."""
    scores = scores.masked_fill(~_mask(mask, x).squeeze(-1), torch.finfo(scores.dtype).min)
    return (scores.softmax(1).unsqueeze(-1) * x).sum(1)


# ---------------------------------------------------------------- base class


class Head(nn.Module):
    """Base head. Subclasses set ``options`` and ``features`` (width of ``pool``) and define ``pool``."""

    options: ClassVar[dict[str, Any]] = {}  # allowed option keys -> defaults

    def __init__(self, hidden_size: int, num_layers: int, num_outputs: int, dropout: float, **options: Any):
        super().__init__()
        self.name = next((n for n in HEADS.names() if HEADS.get(n) is type(self)), type(self).__name__)
        unknown = [k for k in options if k not in self.options]
        if unknown:
            allowed = ", ".join(f"{k} (default {v})" for k, v in self.options.items()) or "none"
            raise SpecError(
                f"head.options.{unknown[0]}: unknown option for head {self.name!r}; allowed options: {allowed}"
            )
        self.given_options = dict(options)  # what the spec asked for (kept for export)
        self.opts = {**self.options, **options}
        self.hidden_size, self.num_layers, self.num_outputs = hidden_size, num_layers, num_outputs
        self.dropout = nn.Dropout(dropout)

    def int_option(self, key: str, default: int, low: int = 1, high: int | None = None) -> int:
        value = self.opts[key] if self.opts[key] is not None else default
        if not isinstance(value, int) or isinstance(value, bool) or value < low or (high and value > high):
            span = f"{low}..{high}" if high else f">= {low}"
            raise SpecError(f"head.options.{key}: {value!r} is not an integer in {span} (head {self.name!r})")
        return value

    def build_out(self, features: int) -> None:
        """The final dropout -> linear: call at the end of ``__init__`` with the width of ``pool``."""
        self.features = features
        self.out = init_linear(nn.Linear(features, self.num_outputs))

    def pool(self, hidden_states: tuple[Tensor, ...], mask: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, hidden_states: tuple[Tensor, ...], mask: Tensor) -> Tensor:
        return self.out(self.dropout(self.pool(hidden_states, mask)))


# ---------------------------------------------------------------- first-token heads


@HEADS.register("cls", fused=True)
class ClsHead(Head):
    """Devlin et al. 2019 / RoBERTa: first token -> dropout -> dense(H, H) -> tanh (new weights).

    For decoders (GPT-2) the first token is just the first token: it has seen nothing else.
    """

    def __init__(self, hidden_size: int, num_layers: int, num_outputs: int, dropout: float, **options: Any):
        super().__init__(hidden_size, num_layers, num_outputs, dropout, **options)
        self.dense = init_linear(nn.Linear(hidden_size, hidden_size))
        self.build_out(hidden_size)

    def pool(self, hidden_states, mask):
        return torch.tanh(self.dense(self.dropout(hidden_states[-1][:, 0])))


def pooler_dense(pooler: nn.Module | None) -> nn.Linear | None:
    """The linear layer of a pretrained pooler: BERT's ``pooler.dense``, ALBERT's ``pooler`` itself."""
    if isinstance(pooler, nn.Linear):
        return pooler
    dense = getattr(pooler, "dense", None)
    return dense if isinstance(dense, nn.Linear) else None


@HEADS.register("pooler", fused=True)
class PoolerHead(ClsHead):
    """``cls`` with the dense layer copied from the backbone's pretrained pooler (BERT's NSP pooler).

    ``build_model`` passes ``pooler=backbone.pooler`` (BERT's has a ``dense`` layer, ALBERT's is the
    linear layer itself); families without one (GPT-2, DistilBERT, RoBERTa checkpoints saved without
    it) start with a new dense layer, as ``cls`` does.
    """

    takes_pooler = True

    def __init__(
        self, hidden_size: int, num_layers: int, num_outputs: int, dropout: float,
        pooler: nn.Module | None = None, **options: Any,
    ):
        super().__init__(hidden_size, num_layers, num_outputs, dropout, **options)
        dense = pooler_dense(pooler)
        self.from_pretrained = dense is not None and dense.weight.shape == self.dense.weight.shape
        if self.from_pretrained:
            self.dense.load_state_dict(dense.state_dict())  # a copy: the backbone's pooler is left as it is


@HEADS.register("cls_linear", fused=True)
class ClsLinearHead(Head):
    """First token -> dropout -> linear (no hidden dense layer)."""

    def __init__(self, hidden_size: int, num_layers: int, num_outputs: int, dropout: float, **options: Any):
        super().__init__(hidden_size, num_layers, num_outputs, dropout, **options)
        self.build_out(hidden_size)

    def pool(self, hidden_states, mask):
        return hidden_states[-1][:, 0]


@HEADS.register("last_k_cls", fused=True)
class LastKClsHead(Head):
    """Sun et al. 2019: concatenate the first token of the last k layers (k > layers+1 only by default)."""

    options: ClassVar[dict[str, Any]] = {"k": 4}

    def __init__(self, hidden_size: int, num_layers: int, num_outputs: int, dropout: float, **options: Any):
        super().__init__(hidden_size, num_layers, num_outputs, dropout, **options)
        if "k" in options:
            self.k = self.int_option("k", 4, 1, num_layers + 1)
        else:  # the default 4 is capped for backbones with fewer hidden states
            self.k = min(4, num_layers + 1)
        self.build_out(self.k * hidden_size)

    def pool(self, hidden_states, mask):
        return torch.cat([h[:, 0] for h in hidden_states[-self.k:]], dim=-1)


# ---------------------------------------------------------------- pooling over time


@HEADS.register("mean", fused=True)
class MeanHead(Head):
    """Mean of the last layer over real (non-padding) tokens."""

    def __init__(self, hidden_size: int, num_layers: int, num_outputs: int, dropout: float, **options: Any):
        super().__init__(hidden_size, num_layers, num_outputs, dropout, **options)
        self.build_out(hidden_size)

    def pool(self, hidden_states, mask):
        return masked_mean(hidden_states[-1], mask)


@HEADS.register("max", fused=True)
class MaxHead(Head):
    """Element-wise max of the last layer over real tokens."""

    def __init__(self, hidden_size: int, num_layers: int, num_outputs: int, dropout: float, **options: Any):
        super().__init__(hidden_size, num_layers, num_outputs, dropout, **options)
        self.build_out(hidden_size)

    def pool(self, hidden_states, mask):
        return masked_max(hidden_states[-1], mask)


@HEADS.register("mean_max", fused=True)
class MeanMaxHead(Head):
    """[mean, max] of the last layer -> 2H."""

    def __init__(self, hidden_size: int, num_layers: int, num_outputs: int, dropout: float, **options: Any):
        super().__init__(hidden_size, num_layers, num_outputs, dropout, **options)
        self.build_out(2 * hidden_size)

    def pool(self, hidden_states, mask):
        h = hidden_states[-1]
        return torch.cat([masked_mean(h, mask), masked_max(h, mask)], dim=-1)


@HEADS.register("concat_pool", fused=True)
class ConcatPoolHead(Head):
    """Howard & Ruder 2018 (ULMFiT): [last real token, max, mean] of the last layer -> 3H."""

    def __init__(self, hidden_size: int, num_layers: int, num_outputs: int, dropout: float, **options: Any):
        super().__init__(hidden_size, num_layers, num_outputs, dropout, **options)
        self.build_out(3 * hidden_size)

    def pool(self, hidden_states, mask):
        h = hidden_states[-1]
        return torch.cat([last_token(h, mask), masked_max(h, mask), masked_mean(h, mask)], dim=-1)


@HEADS.register("attention", fused=True)
class AttentionHead(Head):
    """Learned attention pooling: score_t = w^T tanh(W h_t), softmax over real tokens, weighted sum."""

    options: ClassVar[dict[str, Any]] = {"hidden": None}  # width of W; None: H

    def __init__(self, hidden_size: int, num_layers: int, num_outputs: int, dropout: float, **options: Any):
        super().__init__(hidden_size, num_layers, num_outputs, dropout, **options)
        width = self.int_option("hidden", hidden_size)
        self.proj = init_linear(nn.Linear(hidden_size, width))
        self.score = init_linear(nn.Linear(width, 1, bias=False))
        self.build_out(hidden_size)

    def pool(self, hidden_states, mask):
        h = hidden_states[-1]
        return masked_softmax_pool(h, self.score(torch.tanh(self.proj(h))).squeeze(-1), mask)


@HEADS.register("layer_mix", fused=True)
class LayerMixHead(Head):
    """Peters et al. 2018 (ELMo) scalar mix: gamma * sum_j softmax(s)_j h_j over all hidden states, then pool."""

    options: ClassVar[dict[str, Any]] = {"pool": "mean"}  # mean (masked) or cls (first token)

    def __init__(self, hidden_size: int, num_layers: int, num_outputs: int, dropout: float, **options: Any):
        super().__init__(hidden_size, num_layers, num_outputs, dropout, **options)
        if self.opts["pool"] not in ("mean", "cls"):
            raise SpecError(f"head.options.pool: {self.opts['pool']!r} is not allowed; allowed: 'mean', 'cls'")
        self.weights = nn.Parameter(torch.zeros(num_layers + 1))  # equal mix at the start
        self.gamma = nn.Parameter(torch.ones(1))
        self.build_out(hidden_size)

    def pool(self, hidden_states, mask):
        if len(hidden_states) != len(self.weights):
            raise ValueError(f"layer_mix was built for {len(self.weights)} hidden states, got {len(hidden_states)}")
        w = self.weights.softmax(0)
        mixed = self.gamma * sum(wj * h for wj, h in zip(w, hidden_states))
        return mixed[:, 0] if self.opts["pool"] == "cls" else masked_mean(mixed, mask)


# ---------------------------------------------------------------- learned sequence models on the last layer


@HEADS.register("conv1d")
class Conv1dHead(Head):
    """Conv1d over time (same padding) -> ReLU -> masked max over time. Padding is zeroed before the conv."""

    options: ClassVar[dict[str, Any]] = {"kernel_size": 3, "channels": None}  # channels None: H

    def __init__(self, hidden_size: int, num_layers: int, num_outputs: int, dropout: float, **options: Any):
        super().__init__(hidden_size, num_layers, num_outputs, dropout, **options)
        kernel = self.int_option("kernel_size", 3)
        channels = self.int_option("channels", hidden_size)
        self.conv = nn.Conv1d(hidden_size, channels, kernel, padding="same")
        self.build_out(channels)

    def pool(self, hidden_states, mask):
        h = hidden_states[-1] * _mask(mask, hidden_states[-1])  # pad positions read as the conv's zero padding
        y = torch.relu(self.conv(h.transpose(1, 2))).transpose(1, 2)
        return masked_max(y, mask)


class _LSTMHead(Head):
    """An LSTM over the real tokens of the last layer (packed, so padding is never read); final states."""

    bidirectional: ClassVar[bool] = False
    options: ClassVar[dict[str, Any]] = {"hidden": None}  # per direction; None: H (lstm) or H // 2 (bilstm)

    def __init__(self, hidden_size: int, num_layers: int, num_outputs: int, dropout: float, **options: Any):
        super().__init__(hidden_size, num_layers, num_outputs, dropout, **options)
        width = self.int_option("hidden", hidden_size // 2 if self.bidirectional else hidden_size)
        self.lstm = nn.LSTM(hidden_size, width, batch_first=True, bidirectional=self.bidirectional)
        self.build_out(width * (2 if self.bidirectional else 1))

    def pool(self, hidden_states, mask):
        h, m = hidden_states[-1], mask.to(hidden_states[-1].device).bool()
        order = torch.argsort((~m).int(), dim=1, stable=True)  # real tokens first, in order (any padding side)
        h = h.gather(1, order.unsqueeze(-1).expand_as(h))
        lengths = m.sum(1).clamp(min=1).cpu()
        _, (h_n, _) = self.lstm(pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False))
        return torch.cat(list(h_n), dim=-1)  # (directions, B, width) -> (B, directions * width)


@HEADS.register("lstm")
class LSTMHead(_LSTMHead):
    """Unidirectional LSTM; its final state after the last real token."""


@HEADS.register("bilstm")
class BiLSTMHead(_LSTMHead):
    """Bidirectional LSTM; [forward state after the last real token, backward state after the first]."""

    bidirectional = True


def build_head(
    name: str, hidden_size: int, num_layers: int, num_outputs: int, dropout: float,
    options: dict[str, Any] | None = None, pooler: nn.Module | None = None,
) -> Head:
    """Build a registered head; ``pooler`` reaches only heads that take it (``takes_pooler``)."""
    cls = HEADS.get(name, field="head.name")
    if not 0.0 <= dropout < 1.0:
        raise SpecError(f"head.dropout: {dropout} is not a probability in [0, 1)")
    extra = {"pooler": pooler} if getattr(cls, "takes_pooler", False) else {}
    return cls(hidden_size, num_layers, num_outputs, dropout, **(options or {}), **extra)
