"""The fused stacked encoder for the BERT family: S seeds' encoders as one batched computation.

    fused = FusedModel(model0, seeds=4, device="cuda")   # a StackedModel: same parameters, same names
    fused.load_slot(1, model1); ...
    logits = fused(batch)                               # batch tensors (S, B, ...); "pack_index": unpadded

Families whose FamilyMap declares ``layer_loop`` (BERT, RoBERTa, XLM-R, ELECTRA, MiniLM: post-LN
encoders with one layer shape). The parameters are those of :class:`StackedModel` (each weight
with a leading seed dimension, names of a TransferModel), so parameter groups, freezing policies,
optimizers, ``load_slot``/``copy_slot_to`` (the Hugging Face modules' weights in and out) and
``keep`` work unchanged. Only the computation differs: the layer's tensors are found through the
canonical layer schema (``q, k, v, o, attn_ln, ffn_in, ffn_out, ffn_ln``: models/schema) and each
layer is one plain function over (S, N, H) activations: q, k and v each one batched matrix product
(``baddbmm`` over the seeds, straight from the stored weights), attention by ``scaled_dot_product_attention`` over the S*B sequences
(no vmap), output projection, dropout, residual and LayerNorm (post-LN), GELU feed-forward. Dropout
draws its masks over the whole (S, ...) tensor, so each seed gets its own. On CUDA the activations
are bf16 under autocast. ``compile()`` compiles that one layer function (regional compilation: the
same graph for every layer, so compile time does not grow with depth or S). ``checkpoint = True``
recomputes each layer in the backward (activation checkpointing; torch.utils.checkpoint keeps the
dropout masks): only layer inputs are kept, for many seeds at large batches.

Unpadding (written by hand: no library unpads a seed-stacked batch): with ``pack_index`` (built on
the host by :func:`pack_index`), the embeddings, projections, LayerNorms, GELU and dropout run only
on each seed's real tokens, gathered before the embeddings as ModernBERT does. Attention is over a
block-diagonal mask of the packed tokens (each sequence attends to itself only); without the
``flash-attn`` varlen kernel it is computed block by block, each block being one row of the padded
batch under its key mask (a dense N x N mask would cost B times the attention work).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn
from transformers.activations import ACT2FN

from transferlab.models.schema import family_of
from transferlab.train.fast import Compiled
from transferlab.train.stacked import StackedModel, StackError

_SAID: set[str] = set()


def say_once(message: str) -> None:
    """One warning per process (the flash-attn fallback note)."""
    if message not in _SAID:
        _SAID.add(message)
        warnings.warn(message, stacklevel=2)


def flash_varlen_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------- packing (host side)

def pack_index(mask: Tensor) -> Tensor:
    """(S, B, T) 0/1 host mask -> (S, N) positions of each seed's real tokens in its flattened B*T
    batch, in order; N is the most real tokens any seed has, and a seed's remaining slots point at
    position B*T (a scratch row that nothing reads back)."""
    s, b, t = mask.shape
    real = mask.reshape(s, b * t).bool()
    counts = real.sum(1)
    n = int(counts.max())
    order = torch.argsort((~real).to(torch.int8), dim=1, stable=True)[:, :n]
    return order.masked_fill(torch.arange(n) >= counts[:, None], b * t)


def pack_offsets(mask: Tensor, n: int) -> Tensor:
    """(S, B, T) 0/1 host mask, N packed slots per seed -> the offsets of the sequences in the flattened
    (S*N) packed tokens: each seed's B sequences in order, then its filler slots cut into pieces of at most
    T (so no segment is longer than T and filler attends only to filler). Empty segments are left out."""
    s, b, t = mask.shape
    lengths = mask.sum(-1)  # (S, B)
    segments = []
    for seed in range(s):
        segments.append(lengths[seed])
        filler = n - int(lengths[seed].sum())
        segments.append(torch.full((filler // t,), t, dtype=lengths.dtype))
        segments.append(torch.tensor([filler % t], dtype=lengths.dtype))
    seg = torch.cat(segments)
    seg = seg[seg > 0]
    return torch.cat([seg.new_zeros(1), seg.cumsum(0)])


def pack_seqlens(offsets: Tensor) -> tuple[int, int]:
    """The shortest and longest segment of host ``offsets`` (:func:`pack_offsets`), read while collating:
    given to the nested tensors, torch needs no ``.item()`` (a device sync and a graph break) per layer."""
    lengths = offsets.diff()
    return int(lengths.min()), int(lengths.max())


def _pack(x: Tensor, index: Tensor) -> Tensor:
    """(S, B*T, ...) -> (S, N, ...): the packed tokens (scratch slots read a zero row)."""
    x = torch.cat([x, x.new_zeros(x.shape[0], 1, *x.shape[2:])], 1)
    idx = index.view(*index.shape, *[1] * (x.dim() - 2)).expand(*index.shape, *x.shape[2:])
    return torch.gather(x, 1, idx)


def _unpack(x: Tensor, index: Tensor, rows: int) -> Tensor:
    """(S, N, H) packed -> (S, rows, H) with zeros at the padded positions."""
    idx = index.unsqueeze(-1).expand(*index.shape, x.shape[-1])
    out = x.new_zeros(x.shape[0], rows + 1, x.shape[-1]).scatter(1, idx, x)
    return out[:, :rows]


# ---------------------------------------------------------------------------- one layer

def _linear(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """(S, N, in) x per-seed (S, out, in) weights + (S, out) biases: one batched product for all seeds."""
    return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))


def _norm(x: Tensor, w: Tensor, b: Tensor, eps: float) -> Tensor:
    return torch.addcmul(b.unsqueeze(1), F.layer_norm(x, x.shape[-1:], eps=eps), w.unsqueeze(1))


def _attend_jagged(qkv: tuple[Tensor, Tensor, Tensor], offsets: Tensor, seqlens: tuple[int, int], heads: int,
                   p: float) -> Tensor:
    """SDPA over the packed tokens as a jagged nested tensor (torch.nested, offsets from
    :func:`pack_offsets`, their shortest and longest segment from :func:`pack_seqlens`, both on the host):
    each sequence attends to itself only, at its real length. On CUDA this is the varlen flash /
    memory-efficient kernel (no flash-attn package needed); on the CPU, per-sequence math. q, k and v come
    from their own products, so each is already the contiguous values of its nested tensor (no copy)."""
    s, n, h = qkv[0].shape
    low, high = seqlens
    q, k, v = (torch.nested.nested_tensor_from_jagged(x.reshape(s * n, heads, h // heads), offsets, min_seqlen=low,
                                                      max_seqlen=high).transpose(1, 2) for x in qkv)
    ctx = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
    return ctx.transpose(1, 2).values().reshape(s, n, h)


def _attend(qkv: tuple[Tensor, Tensor, Tensor], index: Tensor | None, keys: Tensor | None, b: int, t: int,
            heads: int, p: float, offsets: Tensor | None = None, seqlens: tuple[int, int] | None = None) -> Tensor:
    """SDPA over the S*B sequences; packed tokens are put in their rows for it and taken back after
    (or, with ``offsets`` and ``seqlens``, attend as a jagged batch without re-padding)."""
    s, h = qkv[0].shape[0], qkv[0].shape[-1]
    if offsets is not None:
        return _attend_jagged(qkv, offsets, seqlens if seqlens is not None else pack_seqlens(offsets), heads, p)
    if index is not None:
        qkv = tuple(_unpack(x, index, b * t) for x in qkv)
    q, k, v = (x.reshape(s * b, t, heads, h // heads).transpose(1, 2) for x in qkv)
    if keys is not None:  # additive, as the library's eager path: a boolean mask gave NaNs on CPU with dropout
        keys = torch.zeros(keys.shape, dtype=q.dtype, device=q.device).masked_fill(~keys, torch.finfo(q.dtype).min)
    ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=keys, dropout_p=p)
    ctx = ctx.transpose(1, 2).reshape(s, b * t, h)
    return _pack(ctx, index) if index is not None else ctx


def fused_layer(x: Tensor, w: list[Tensor], index: Tensor | None, keys: Tensor | None, b: int, t: int,
                heads: int, eps: float, p_hidden: float, p_attn: float, act: nn.Module, training: bool,
                offsets: Tensor | None = None, seqlens: tuple[int, int] | None = None) -> Tensor:
    """One post-LN BERT layer for S seeds. ``w``: q, k, v, o, attn_ln, ffn_in, ffn_out, ffn_ln as
    (weight, bias) pairs, flattened, each with a leading seed dimension.

    q, k and v are three batched products straight from the stored weights: no per-call ``torch.cat`` of the
    fp32 weights (and of their gradients in the backward); the parameters stay separate, contiguous tensors, so
    per-seed weights load and export as before and torch's fused optimizers take them as they are."""
    (qw, qb, kw, kb, vw, vb, ow, ob, aw, ab, iw, ib, fw, fb, nw, nb) = w
    qkv = (_linear(x, qw, qb), _linear(x, kw, kb), _linear(x, vw, vb))
    ctx = _attend(qkv, index, keys, b, t, heads, p_attn if training else 0.0, offsets, seqlens)
    x = _norm(F.dropout(_linear(ctx, ow, ob), p_hidden, training) + x, aw, ab, eps)
    f = _linear(act(_linear(x, iw, ib)), fw, fb)
    return _norm(F.dropout(f, p_hidden, training) + x, nw, nb, eps)


ROLES = ("q", "k", "v", "o", "attn_ln", "ffn_in", "ffn_out", "ffn_ln")


class FusedModel(StackedModel):
    """A :class:`StackedModel` whose encoder runs as :func:`fused_layer` per layer (module docstring)."""

    def __init__(self, model: nn.Module, seeds: int, device: torch.device | str = "cpu"):
        super().__init__(model, seeds, device)
        hf, config = self.backbone.model, self.backbone.model.config
        self.map = family_of(self.family)
        if self.map is None or not self.map.layer_loop:
            raise StackError(f"the fused encoder holds the BERT family only, not {self.family}")
        depth = len(hf.get_submodule(self.map.layer_stack()))
        slots = self.map.layer_slots(config)
        self.layer_weights: list[list[nn.Parameter]] = []  # Parameter objects: ``keep`` swaps their data
        for i in range(depth):
            prefix = self.map.layer_path(config, i)
            self.layer_weights.append([hf.get_parameter(prefix + slots[f"{role}.{part}"].name)
                                       for role in ROLES for part in ("weight", "bias")])
        emb = hf.embeddings
        self.heads, self.eps = int(config.num_attention_heads), float(config.layer_norm_eps)
        self.p_hidden, self.p_attn = float(config.hidden_dropout_prob), float(config.attention_probs_dropout_prob)
        self.act = ACT2FN[config.hidden_act]
        self.offset = self.map.position_offset(config)  # RoBERTa: positions count from pad + 1
        self.pad = int(config.pad_token_id or 0)
        self.tables = (emb.word_embeddings.weight, emb.token_type_embeddings.weight, emb.position_embeddings.weight)
        self.embed_norm = (emb.LayerNorm.weight, emb.LayerNorm.bias, float(emb.LayerNorm.eps))
        project = getattr(hf, "embeddings_project", None)  # ELECTRA: embedding width -> hidden width
        self.project = None if project is None else (project.weight, project.bias)
        self.layer_fn = fused_layer
        # keep only each layer's input for the backward and recompute the layer (about a third more compute;
        # the saved activations of 20 BERT-base seeds at batch 32 x 128 would not fit in 80 GB otherwise)
        self.checkpoint = False

    def compile(self) -> None:
        """Regional compilation: the one layer function, reused by every layer (eager when it fails)."""
        self.layer_fn = Compiled(fused_layer)
        self.__dict__["encoder"] = self.layer_fn  # where the trainee looks for a compile failure to fall back from

    @property
    def compiled(self) -> bool:
        return isinstance(self.layer_fn, Compiled) and self.layer_fn.active

    # ------------------------------------------------------------------ forward
    def forward(self, batch: dict[str, Tensor], padded: bool = True) -> Tensor:
        """``batch``: (S, B, ...) inputs of every seed, with ``pack_index`` to unpad. Logits (S, B, ...)."""
        mask = batch["attention_mask"]
        s, b, t = mask.shape
        if self.model.training != self.training:  # the template runs the head: same dropout mode
            self.model.train(self.training)
        self.rows.per_seed = b
        index, offsets = batch.get("pack_index"), batch.get("pack_offsets")
        seqlens = batch.get("pack_seqlens")  # host ints (FusedTrainee.prepare); else read here (a sync on CUDA)
        if offsets is not None and seqlens is None:
            seqlens = pack_seqlens(offsets)
        keys = mask.reshape(s * b, 1, 1, t).bool() if padded and offsets is None else None
        hidden = self.encode(batch["input_ids"], batch.get("token_type_ids"), index, keys, offsets, seqlens)
        rows = tuple((_unpack(h, index, b * t) if index is not None else h).reshape(s, b, t, h.shape[-1])
                     for h in hidden)
        return self._per_seed(self.model.head, self.vmap_head, rows, mask)

    def _positions(self, ids: Tensor) -> Tensor:
        """Position ids as the library makes them: 0..T-1 (BERT), or RoBERTa's count of non-pad tokens."""
        if self.offset == 0:
            return torch.arange(ids.shape[-1], device=ids.device).expand(ids.shape)
        real = ids.ne(self.pad).long()
        return torch.cumsum(real, -1) * real + self.pad

    def encode(self, ids: Tensor, types: Tensor | None, index: Tensor | None, keys: Tensor | None,
               offsets: Tensor | None = None, seqlens: tuple[int, int] | None = None) -> list[Tensor]:
        """All hidden states (S, N, H) of the (S, B, T) ids: embedding output first."""
        s, b, t = ids.shape
        if types is None or not self.backbone._use_token_types:
            types = torch.zeros_like(ids)
        flat = [x.reshape(s, b * t) for x in (ids, types, self._positions(ids))]
        if index is not None:
            flat = [_pack(x, index) for x in flat]
        x = self._embed(*flat)
        hidden = [x]
        for w in self.layer_weights:
            args = (x, w, index, keys, b, t, self.heads, self.eps, self.p_hidden, self.p_attn, self.act, self.training,
                    offsets, seqlens)
            if self.checkpoint and self.training and torch.is_grad_enabled():  # recomputed in backward, same dropout
                x = torch.utils.checkpoint.checkpoint(self.layer_fn, *args, use_reentrant=False,
                                                      determinism_check="none")  # nested tensors have no sizes
            else:
                x = self.layer_fn(*args)
            hidden.append(x)
        return hidden

    def _embed(self, ids: Tensor, types: Tensor, positions: Tensor) -> Tensor:
        """Word + segment + position embeddings of each seed's own tables, LayerNorm, dropout."""
        seeds = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1)

        def look(table: Tensor, i: Tensor) -> Tensor:  # seed s's ids index rows s*V + id of the flat table
            return F.embedding(i + seeds * table.shape[1], table.reshape(-1, table.shape[-1]))

        words, segments, places = self.tables
        x = look(words, ids) + look(segments, types) + look(places, positions)
        x = F.dropout(_norm(x, *self.embed_norm), self.p_hidden, self.training)
        return _linear(x, *self.project) if self.project is not None else x
