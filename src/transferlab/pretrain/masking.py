"""Masking for masked modelling: choose positions per sequence, then replace them (BERT's 80/10/10).

    masks = draw(candidates, spec.masking, generator, n_choices=len(random_ids), word_ids=word_ids)
    inputs, labels = apply_to_ids(ids, masks, mask_id, random_ids)
    source = MaskSource(candidates, spec.masking, n_choices, seed)     # static or dynamic, per example

Written by hand, not on transformers' ``DataCollatorForLanguageModeling`` (5.x, ``whole_word_mask``),
because that collator gives none of the guarantees asked here: it draws every token independently, so
a sequence can end with no masked token; with whole-word masking it forces 100% [MASK] (no 80/10/10);
its random replacements come from the whole vocabulary, special tokens included; it has no static masks.

Choosing. A sequence's maskable tokens are its ``candidates`` (not special, not padding); the target
is ``rate * n`` of them. Units (tokens, or whole words with ``word_ids``) are taken in a random order
until the target is reached; the unit that crosses it is taken with the probability that makes the
expected count exactly ``rate * n``; the first unit is always taken (at least one masked token per
sequence, which biases the rate upward only where ``rate * n`` is below one unit).

Replacing. The chosen tokens of a batch are put in a random order; the first ``mask_ratio * K`` become
[MASK], the next ``random_ratio * K`` a random token, the rest stay (stochastic rounding of both
counts, so the shares are exact in expectation and within a token per batch).

Static masks are drawn once for every example, up front, from ``seed`` (BERT's preprocessing);
dynamic masks are drawn anew for every batch from a generator that runs on (RoBERTa).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

IGNORE = -100  # the label of positions that are not predicted (torch's cross_entropy ignore_index)


@dataclass
class Masks:
    """Per position of a (B, T) batch: chosen, replaced by [MASK], replaced at random, and the random pick."""

    masked: Tensor  # bool: predicted
    to_mask: Tensor  # bool: input replaced by [MASK] / the mask vector
    to_random: Tensor  # bool: input replaced by choice ``pick`` of ``n_choices``
    pick: Tensor  # long in [0, n_choices)

    def rows(self, index, width: int | None = None) -> Masks:
        cut = slice(None) if width is None else slice(0, width)
        return Masks(*(t[index][:, cut] for t in (self.masked, self.to_mask, self.to_random, self.pick)))


def _rand(shape, generator: torch.Generator) -> Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float64)


def select(candidates: Tensor, rate: float, generator: torch.Generator, word_ids: Tensor | None = None) -> Tensor:
    """The positions to predict, (B, T) bool (see the module doc). ``word_ids``: (B, T), -1 outside words."""
    b, t = candidates.shape
    pos = torch.arange(t).expand(b, t)
    unit = pos if word_ids is None else word_ids.clamp(0, t - 1)
    order = torch.argsort(_rand((b, t), generator), dim=1)  # a random order of the unit indices
    unit_rank = torch.empty_like(order).scatter_(1, order, pos.clone()).gather(1, unit)
    key = torch.where(candidates, unit_rank * t + pos, t * t + pos)  # a unit's tokens stay together
    idx = torch.argsort(key, dim=1)
    s_rank, s_cand = unit_rank.gather(1, idx), candidates.gather(1, idx)
    starts = torch.ones(b, t, dtype=torch.bool)
    starts[:, 1:] = s_rank[:, 1:] != s_rank[:, :-1]
    before = torch.cummax(torch.where(starts, pos, torch.zeros_like(pos)), dim=1).values  # tokens of earlier units
    length = torch.zeros(b, t, dtype=torch.long).scatter_add_(1, unit, candidates.long()).gather(1, unit.gather(1, idx))
    target = rate * candidates.sum(1, keepdim=True).double()
    coin = _rand((b, t), generator).gather(1, unit.gather(1, idx))  # one coin per unit
    take = (before + length <= target) | ((before < target) & (coin * length < target - before)) | (before == 0)
    return torch.zeros(b, t, dtype=torch.bool).scatter_(1, idx, take & s_cand)


def split_actions(masked: Tensor, mask_ratio: float, random_ratio: float, generator: torch.Generator
                  ) -> tuple[Tensor, Tensor]:
    """(to_mask, to_random) among the ``masked`` positions of a batch (see the module doc)."""
    n = masked.numel()
    order = torch.argsort(_rand(n, generator).masked_fill(~masked.flatten(), 2.0))
    rank = torch.empty(n, dtype=torch.long).scatter_(0, order, torch.arange(n)).view_as(masked)
    k = masked.sum().double()
    u = _rand((), generator)
    n_mask = torch.floor(mask_ratio * k + u)
    n_keep_from = torch.floor((mask_ratio + random_ratio) * k + u)
    return masked & (rank < n_mask), masked & (rank >= n_mask) & (rank < n_keep_from)


def draw(candidates: Tensor, spec, generator: torch.Generator, n_choices: int, word_ids: Tensor | None = None
         ) -> Masks:
    """Masks for a (B, T) batch under a :class:`~transferlab.pretrain.spec.MaskingSpec`."""
    masked = select(candidates, spec.rate, generator, word_ids if spec.whole_word else None)
    to_mask, to_random = split_actions(masked, spec.mask_ratio, spec.random_ratio, generator)
    pick = torch.randint(max(1, n_choices), candidates.shape, generator=generator)
    return Masks(masked, to_mask, to_random, pick)


def apply_to_ids(ids: Tensor, masks: Masks, mask_id: int, random_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Token inputs with the masks applied, and the labels (the original ids where masked, else IGNORE)."""
    inputs = ids.masked_fill(masks.to_mask, mask_id)
    inputs = torch.where(masks.to_random, random_ids[masks.pick], inputs)
    return inputs, torch.where(masks.masked, ids, torch.full_like(ids, IGNORE))


class MaskSource:
    """Masks for the rows of a padded (N, T) data set: ``static`` (drawn once, here) or ``dynamic``.

    ``candidates`` (N, T) bool and optional ``word_ids`` (N, T) int are numpy arrays. ``source(index,
    width)`` gives the :class:`Masks` of rows ``index``, cut to ``width`` columns.
    """

    def __init__(self, candidates: np.ndarray, spec, n_choices: int, seed: int, word_ids: np.ndarray | None = None,
                 chunk: int = 1024):
        self.candidates = torch.from_numpy(np.ascontiguousarray(candidates, dtype=bool))
        self.word_ids = None if word_ids is None else torch.from_numpy(np.asarray(word_ids, dtype=np.int64))
        self.spec, self.n_choices = spec, n_choices
        self.generator = torch.Generator().manual_seed(int(seed))
        self.static: Masks | None = None
        if spec.strategy == "static":
            parts = [self._draw(slice(i, i + chunk)) for i in range(0, len(self.candidates), chunk)]
            self.static = Masks(*(torch.cat(p) for p in zip(*((m.masked, m.to_mask, m.to_random, m.pick)
                                                               for m in parts))))

    def _draw(self, rows, width: int | None = None) -> Masks:
        cut = slice(None) if width is None else slice(0, width)
        words = None if self.word_ids is None else self.word_ids[rows][:, cut]
        return draw(self.candidates[rows][:, cut], self.spec, self.generator, self.n_choices, words)

    def __call__(self, index: np.ndarray, width: int | None = None) -> Masks:
        index = torch.as_tensor(np.asarray(index), dtype=torch.long)
        if self.static is not None:
            return self.static.rows(index, width)
        return self._draw(index, width)
