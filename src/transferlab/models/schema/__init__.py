"""The canonical layer schema (q, k, v, o, attn_ln, ffn_in, ffn_out, ffn_ln per layer) and one map per
family: BERT/RoBERTa/ELECTRA/MiniLM, GPT-2, ViT/DeiT, wav2vec2/HuBERT. See ``base.py``."""

from transferlab.models.schema import bert, gpt2, vit, wav2vec2  # noqa: F401  (registers the families)
from transferlab.models.schema.base import (
    ATTENTION_ROLES,
    CATEGORY,
    GLOBAL_ROLES,
    LAYER_ROLES,
    SCHEMAS,
    FamilyMap,
    ModelSchema,
    Slot,
    family_of,
    schema_of,
)

__all__ = ["ATTENTION_ROLES", "CATEGORY", "GLOBAL_ROLES", "LAYER_ROLES", "SCHEMAS", "FamilyMap", "ModelSchema",
           "Slot", "family_of", "schema_of"]
