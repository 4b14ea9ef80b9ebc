"""The multi-task model: one shared encoder, a head per task (train/multitask.py trains it).

    model = build_multitask_model(spec, {"rte": task, "mrpc": task2})
    model.active = "rte"; logits = model(**batch)      # the shared backbone, then the rte head

Parameter names are ``backbone.*`` and ``head.<task>.*``, so layer-wise learning rates treat every head
as the top layer and freezing policies see every head as new weights.
"""

from __future__ import annotations

from torch import Tensor, nn

from transferlab.models.backbone import load_backbone
from transferlab.models.common import seeded
from transferlab.models.model import TransferModel, build_task_head
from transferlab.models.token_heads import KIND_HEADS


class MultiTaskModel(nn.Module):
    """``backbone`` shared; ``head`` a ModuleDict by task name; ``active`` names the head ``forward`` uses."""

    def __init__(self, backbone, heads: dict[str, nn.Module], problems: dict[str, str]):
        super().__init__()
        self.backbone = backbone
        self.head = nn.ModuleDict(heads)
        self.input_adapter = None
        self.problems = problems
        self.active = next(iter(heads))

    @property
    def num_layers(self) -> int:
        return self.backbone.num_layers

    @property
    def regression(self) -> bool:
        return self.problems[self.active] == "regression"

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> Tensor:
        hidden, mask = self.backbone(input_ids, attention_mask, token_type_ids)
        return self.head[self.active](hidden, mask)

    def view(self, name: str) -> TransferModel:
        """A TransferModel sharing the backbone and task ``name``'s head (prediction, export)."""
        view = TransferModel.__new__(TransferModel)
        nn.Module.__init__(view)
        view.backbone, view.head, view.input_adapter = self.backbone, self.head[name], None
        view.train(self.training)
        return view


def build_multitask_model(spec, tasks: dict) -> MultiTaskModel:
    """The backbone of ``spec.model`` and a head per task (``multitask.heads`` or the task kind's or
    ``head.name``), each seeded by ``spec.seed`` and its position."""
    backbone = load_backbone(spec.model, seed=spec.seed)
    heads = {}
    for i, (name, task) in enumerate(tasks.items()):
        head = spec.multitask.heads.get(name) or (task.kind if task.kind in KIND_HEADS else spec.head.name)
        heads[name] = seeded(spec.seed + 101 * (i + 1), lambda h=head, t=task: build_task_head(
            h, t, backbone.hidden_size, backbone.num_layers, spec.head.dropout,
            dict(spec.head.options) if h == spec.head.name else {}, backbone.pooler))
    return MultiTaskModel(backbone, heads, {n: t.problem for n, t in tasks.items()})
