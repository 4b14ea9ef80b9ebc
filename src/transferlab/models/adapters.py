"""Input adapters for non-text tasks: they turn task inputs into ``inputs_embeds`` for the backbone.

The backbone's embedding module still adds its position (and token type) embeddings and
LayerNorm on top, so a pretrained text transformer can read vectors or foreign token ids.

* ``modality="vectors"``: (B, T, D) floats -> ``VectorAdapter`` (a linear map, orthogonal init);
* ``modality="tokens"``: (B, T) int ids of the task's own vocabulary -> ``TokenAdapter`` (an embedding).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from transferlab.errors import DataError


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
