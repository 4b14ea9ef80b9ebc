"""The ``last`` head: FPT's output layer (Lu et al. 2021), a linear map of the last token(s).

For a classification task it reads the last real token of the last layer (GPT-style; the mean
of tokens is the ``mean`` head). For a task with per-token outputs (the bit tasks declare
``output_tokens`` k and ``outputs_per_token`` p) it reads the last k tokens, each giving p
predictions, and returns (B, k * p, num_outputs) logits: FPT's ``return_last_only``.
``build_model`` fills ``tokens`` and ``outputs_per_token`` from the task.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from transferlab.errors import SpecError
from transferlab.models.heads import HEADS, Head, init_linear, last_token
from transferlab.registry import Registry

# Heads of token and span tasks (train/shapes.py): outputs per token, not per example, so they are kept
# apart from HEADS (whose heads all pool to one vector per example); build_model picks them by task kind.
KIND_HEADS: Registry = Registry("task-kind head")


def last_tokens(x: Tensor, mask: Tensor, k: int) -> Tensor:
    """(B, T, H) -> (B, k, H): the last k real tokens of each row, in order (right padding)."""
    ends = mask.to(x.device).long().sum(1)  # one past the last real token
    idx = (ends[:, None] - k + torch.arange(k, device=x.device)[None, :]).clamp(min=0)
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


@HEADS.register("last")
class LastHead(Head):
    options: ClassVar[dict[str, Any]] = {"tokens": 1, "outputs_per_token": None}  # None: one output per example

    def __init__(self, hidden_size: int, num_layers: int, num_outputs: int, dropout: float, **options: Any):
        super().__init__(hidden_size, num_layers, num_outputs, dropout, **options)
        self.k = self.int_option("tokens", 1)
        self.per_token = self.opts["outputs_per_token"] is not None
        self.p = self.int_option("outputs_per_token", 1) if self.per_token else 1
        if not self.per_token and self.k != 1:
            raise SpecError("head.options.tokens: only per-token tasks (bit_memory, bit_xor) read several tokens")
        self.features = hidden_size
        self.out = init_linear(nn.Linear(hidden_size, self.p * num_outputs))

    def pool(self, hidden_states, mask):
        h = hidden_states[-1]
        return last_tokens(h, mask, self.k) if self.per_token else last_token(h, mask)

    def forward(self, hidden_states: tuple[Tensor, ...], mask: Tensor) -> Tensor:
        logits = self.out(self.dropout(self.pool(hidden_states, mask)))
        if self.per_token:  # (B, k, p * C) -> (B, k * p, C): one row of logits per predicted label
            return logits.reshape(logits.shape[0], self.k * self.p, self.num_outputs)
        return logits


@KIND_HEADS.register("token")
class TokenHead(Head):
    """Token classification (Devlin et al. 2019, CoNLL-2003 NER): dropout -> linear on every token of the
    last layer; (B, T, num_labels) logits. Positions without a label carry IGNORE in the batch."""

    def __init__(self, hidden_size: int, num_layers: int, num_outputs: int, dropout: float, **options: Any):
        super().__init__(hidden_size, num_layers, num_outputs, dropout, **options)
        self.name = "token"
        self.build_out(hidden_size)

    def forward(self, hidden_states: tuple[Tensor, ...], mask: Tensor) -> Tensor:
        return self.out(self.dropout(hidden_states[-1]))


@KIND_HEADS.register("span")
class SpanHead(Head):
    """Extractive QA (Devlin et al. 2019, SQuAD): a linear map of every token to a start and an end score.

    Returns (B, 2, T): row 0 the start scores, row 1 the end scores, padded positions at the dtype's
    minimum. Labels are (B, 2) token positions, so the loop's per-row cross entropy over (B*2, T) is
    the usual mean of the start and end losses.
    """

    def __init__(self, hidden_size: int, num_layers: int, num_outputs: int, dropout: float, **options: Any):
        super().__init__(hidden_size, num_layers, 2, dropout, **options)
        self.name = "span"
        self.build_out(hidden_size)

    def forward(self, hidden_states: tuple[Tensor, ...], mask: Tensor) -> Tensor:
        scores = self.out(self.dropout(hidden_states[-1])).transpose(1, 2)  # (B, 2, T)
        pad = ~mask.to(scores.device).bool()[:, None, :]
        return scores.masked_fill(pad, torch.finfo(scores.dtype).min)
