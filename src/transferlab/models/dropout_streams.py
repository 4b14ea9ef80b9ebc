"""Dropout drawn from each run's own random stream (``train.dropout_rng: run``), so that runs stacked as slots
draw exactly the masks they draw alone, each at its own dropout probability (issue 24: dropout 0 beside 0.1).

    streams = install_streams({"": model}, [dropout_probs(model)], seeds=[spec.seed], device=device)  # one run
    streams = install_streams({"backbone.": stack.backbone, "head.": template.head}, probs, seeds, device)
    streams.keep([0, 2])        # slots 1 and 3 left the stack: their generators and probabilities go too

Every ``nn.Dropout`` of the model becomes a :class:`StreamDropout` holding one probability per slot and drawing
each slot's mask from that slot's ``torch.Generator`` (seeded from the run's seed). A stacked forward holds the
slots' rows seed-major (S*B rows, train/stacked.py), so the module splits them and draws slot by slot, in the
order and shapes the run alone draws. Attention-probability dropout, which the library draws inside SDPA from
the global generator, moves into :func:`stream_attention` (the library's eager attention with the module's own
dropout), registered with transformers' ``AttentionInterface``. The BERT family's layer loop
(models/backbone.layer_loop) runs the layers in the library's order, the same alone and stacked.

With the default ``train.dropout_rng: global`` none of this is installed: dropout draws from torch's global
generator (seeded with the run's seed), as every run before the field existed did; a stack then shares one
stream, so its slots must agree on their dropout (train/support.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transferlab.errors import ModelError

ATTENTION = "transferlab_stream"
_STREAM_SALT = 0x5EED_D80  # a run's dropout stream differs from its global stream (same seed, other numbers)


class DropoutStreams:
    """The slots' generators, in slot order. ``slot``: None while a forward holds every slot's rows
    (seed-major); a slot index while a head runs one slot at a time (train/stacked.py ``_per_seed``)."""

    def __init__(self, seeds: list[int], device: torch.device):
        self.generators = [torch.Generator(device=device).manual_seed(int(s) + _STREAM_SALT) for s in seeds]
        self.modules: list[StreamDropout] = []
        self.slot: int | None = None

    def keep(self, slots: list[int]) -> None:
        self.generators = [self.generators[i] for i in slots]
        for module in self.modules:
            module.ps = [module.ps[i] for i in slots]


class StreamDropout(nn.Module):
    """``nn.Dropout`` with a probability per slot, each slot's mask from its own generator."""

    def __init__(self, streams: DropoutStreams, ps: list[float]):
        super().__init__()
        self.streams, self.ps = streams, list(ps)
        streams.modules.append(self)

    @property
    def p(self) -> float:  # read by the library's attention call (dropout=module.dropout.p); ours ignores it
        return max(self.ps)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not any(self.ps):
            return x
        gens, slot = self.streams.generators, self.streams.slot
        if slot is not None:
            return _drop(x, self.ps[slot], gens[slot])
        if len(gens) == 1:
            return _drop(x, self.ps[0], gens[0])
        chunks = x.reshape(len(gens), x.shape[0] // len(gens), *x.shape[1:]).unbind(0)
        return torch.stack([_drop(c, p, g) for c, p, g in zip(chunks, self.ps, gens)]).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"ps={self.ps}"


def _drop(x: Tensor, p: float, generator: torch.Generator) -> Tensor:
    if p == 0:
        return x
    keep = torch.empty_like(x).bernoulli_(1 - p, generator=generator)
    return x * keep / (1 - p)


def stream_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                     scaling: float | None = None, dropout: float = 0.0, **kwargs) -> tuple[Tensor, Tensor]:
    """The library's eager attention (transformers' BERT ``eager_attention_forward``) with the probabilities'
    dropout drawn by the module's own :class:`StreamDropout` (``module.dropout``)."""
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            weights = weights.masked_fill(~attention_mask, torch.finfo(weights.dtype).min)
        else:
            weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1)
    weights = module.dropout(weights) if isinstance(module.dropout, StreamDropout) else weights
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, stream_attention)


def dropout_probs(model: nn.Module) -> dict[str, float]:
    """Each ``nn.Dropout``'s probability by its path in ``model`` (a TransferModel)."""
    return {name: float(m.p) for name, m in model.named_modules() if isinstance(m, nn.Dropout)}


def install_streams(roots: dict[str, nn.Module], probs: list[dict[str, float]], seeds: list[int],
                    device: torch.device, configs=()) -> DropoutStreams:
    """Replace every ``nn.Dropout`` under ``roots`` (path prefix -> module; the prefixes are those of the
    TransferModel paths in ``probs``) by a StreamDropout holding each slot's probability, and route the
    attention of ``configs`` (the backbones' configs) through :func:`stream_attention`."""
    _register()
    streams = DropoutStreams(seeds, device)
    for prefix, root in roots.items():
        if root is None:
            continue
        for name, module in list(root.named_modules()):
            if not isinstance(module, nn.Dropout):
                continue
            path = prefix + name
            if any(path not in p for p in probs):
                raise ModelError(f"train.dropout_rng: run: the slots' models differ at {path} (a dropout module)")
            parent, _, attr = name.rpartition(".")
            setattr(root.get_submodule(parent) if parent else root, attr,
                    StreamDropout(streams, [p[path] for p in probs]))
    for config in configs:
        config._attn_implementation = ATTENTION
    return streams
