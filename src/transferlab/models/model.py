"""The full model: optional input adapter -> backbone (all hidden states) -> head -> logits.

Parameter names are ``backbone.model.<HF names>``, ``head.*`` and ``input_adapter.*``; layer-wise
learning rates rely on them.
"""

from __future__ import annotations

from torch import Tensor, nn

from transferlab.data.task import Task
from transferlab.models.adapters import build_adapter
from transferlab.models.backbone import Backbone, load_backbone, seeded
from transferlab.models.heads import Head, build_head
from transferlab.spec import RunSpec


class TransferModel(nn.Module):
    """Holds ``backbone`` (a :class:`Backbone`), ``head`` (a :class:`Head`) and ``input_adapter``
    (None for text tasks). ``forward`` returns logits (B, num_outputs); (B, 1) for regression."""

    def __init__(self, backbone: Backbone, head: Head, input_adapter: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.input_adapter = input_adapter

    @property
    def num_layers(self) -> int:
        return self.backbone.num_layers

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        inputs: Tensor | None = None,
    ) -> Tensor:
        """Text: ``input_ids`` (+ mask, segment ids). Other modalities: ``inputs`` through the adapter."""
        if inputs is not None:
            if self.input_adapter is None:
                raise ValueError("inputs= given but the model has no input adapter (a text model)")
            embeds = self.input_adapter(inputs)
            hidden, mask = self.backbone(inputs_embeds=embeds, attention_mask=attention_mask)
        else:
            hidden, mask = self.backbone(input_ids, attention_mask, token_type_ids)
        return self.head(hidden, mask)


def build_model(spec: RunSpec, task: Task) -> TransferModel:
    """The backbone of ``spec.model``, the head of ``spec.head`` sized for ``task``, and an input
    adapter when ``task.modality`` is not text. New weights are seeded by ``spec.seed``."""
    backbone = load_backbone(spec.model, seed=spec.seed)
    head = seeded(spec.seed, lambda: build_head(
        spec.head.name, backbone.hidden_size, backbone.num_layers, task.num_outputs,
        spec.head.dropout, spec.head.options, pooler=backbone.pooler,
    ))
    adapter = None
    if task.modality != "text":
        std = float(getattr(backbone.config, "initializer_range", 0.02))
        adapter = seeded(spec.seed + 1, lambda: build_adapter(
            task.modality, backbone.hidden_size, input_dim=task.input_dim, vocab_size=task.vocab_size,
            gain=float(task.extra.get("adapter_gain", 1.0)), std=std, task=task.name,
        ))
    return TransferModel(backbone, head, adapter)
