"""Models: backbones (pretrained transformers), heads, input adapters, the full model and export."""

from transferlab.models.adapters import TokenAdapter, VectorAdapter, build_adapter
from transferlab.models.backbone import TINY_ALIASES, Backbone, load_backbone
from transferlab.models.common import minilm_path
from transferlab.models.export import export_model, load_exported
from transferlab.models.heads import HEADS, Head, build_head
from transferlab.models.model import TransferModel, build_model

__all__ = [
    "HEADS", "TINY_ALIASES", "Backbone", "Head", "TokenAdapter", "TransferModel", "VectorAdapter",
    "build_adapter", "build_head", "build_model", "export_model", "load_backbone", "load_exported",
    "minilm_path",
]
