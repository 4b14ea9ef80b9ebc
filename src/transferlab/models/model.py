"""The full model: optional input adapter -> backbone (all hidden states) -> head -> logits.

Parameter names are ``backbone.model.<HF names>``, ``head.*`` and ``input_adapter.*``; layer-wise
learning rates rely on them.
"""

from __future__ import annotations

from torch import Tensor, nn

from transferlab.data.task import Task
from transferlab.errors import SpecError
from transferlab.models.adapters import build_input, feed_embeds
from transferlab.models.backbone import Backbone, load_backbone
from transferlab.models.common import seeded
from transferlab.models.heads import Head, build_head
from transferlab.models.token_heads import KIND_HEADS  # (and registers the ``last`` head)
from transferlab.spec import RunSpec


class TransferModel(nn.Module):
    """Holds ``backbone`` (a :class:`Backbone`), ``head`` (a :class:`Head`) and ``input_adapter``
    (None for text tasks). ``forward`` returns logits (B, num_outputs); (B, 1) for regression;
    (B, L, num_outputs) for tasks with per-token outputs (the bit tasks, token tasks); (B, 2, T) start
    and end scores for span tasks (extractive QA)."""

    def __init__(self, backbone: Backbone, head: Head, input_adapter: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.input_adapter = input_adapter
        self.labels: dict | None = None  # the task's outputs (build_model): what a head transplant checks

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
            hidden, mask = feed_embeds(self.backbone, self.input_adapter(inputs), attention_mask)
        else:
            hidden, mask = self.backbone(input_ids, attention_mask, token_type_ids)
        return self.head(hidden, mask)


def build_task_head(name: str, task: Task, hidden_size: int, num_layers: int, dropout: float, options: dict,
                    pooler=None) -> Head:
    """The head ``name`` for ``task``: a pooling head (HEADS) for sequence tasks; for token and span tasks
    the kind's own head (KIND_HEADS), which ``head.name`` must then name."""
    if task.kind in KIND_HEADS or name in KIND_HEADS:
        if name != task.kind:
            raise SpecError(f"head.name: task {task.name} is a {task.kind} task; use head.name: "
                            f"{task.kind if task.kind in KIND_HEADS else 'cls (or another pooling head)'}, not {name!r}")
        if not 0.0 <= dropout < 1.0:
            raise SpecError(f"head.dropout: {dropout} is not a probability in [0, 1)")
        return KIND_HEADS.get(name, field="head.name")(hidden_size, num_layers, task.num_outputs, dropout, **options)
    return build_head(name, hidden_size, num_layers, task.num_outputs, dropout, options, pooler=pooler)


def build_model(spec: RunSpec, task: Task) -> TransferModel:
    """The backbone of ``spec.model``, the head of ``spec.head`` sized for ``task``, and an input
    adapter (``spec.input_adapter``) when ``task.modality`` is not text. New weights are seeded by
    ``spec.seed``. A task with per-token outputs (``extra["output_tokens"]``) needs the ``last`` head."""
    # model.max_length bounds tokenised text only; vector and token inputs are checked by build_input
    backbone = load_backbone(spec.model, seed=spec.seed, check_length=task.modality == "text")
    options = dict(spec.head.options)
    if task.extra.get("output_tokens"):
        if spec.head.name not in ("last", "last_token"):
            raise SpecError(f"head.name: task {task.name} predicts every bit from its last tokens; "
                            f"use head.name: last, not {spec.head.name!r}")
        options = {"tokens": task.extra["output_tokens"], "outputs_per_token": task.extra["outputs_per_token"],
                   **options}
    head = seeded(spec.seed, lambda: build_task_head(
        spec.head.name, task, backbone.hidden_size, backbone.num_layers, spec.head.dropout, options, backbone.pooler,
    ))
    adapter = None
    if task.modality != "text":
        adapter = seeded(spec.seed + 1, lambda: build_input(spec.input_adapter, backbone, task))
    model = TransferModel(backbone, head, adapter)
    model.labels = {"task": task.name, "problem": task.problem, "num_labels": task.num_labels,
                    "label_names": task.label_names}
    return model
