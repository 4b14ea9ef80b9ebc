"""The canonical layer schema (q, k, v, o, attn_ln, ffn_in, ffn_out, ffn_ln per layer) and one map per
family: BERT/RoBERTa/XLM-R/ELECTRA/MiniLM, DeBERTa-v2/v3, DistilBERT, ALBERT, ModernBERT, the T5
encoder, GPT-2, ViT/DeiT, wav2vec2/HuBERT. See ``base.py`` and docs/methods/families.md."""

from transferlab.models.schema import (  # noqa: F401  (registers the families)
    albert,
    bert,
    deberta,
    distilbert,
    gpt2,
    modernbert,
    t5,
    vit,
    wav2vec2,
)
from transferlab.models.schema.base import (
    ALL_LAYER_ROLES,
    ATTENTION_ROLES,
    CATEGORY,
    EXTRA_LAYER_ROLES,
    GLOBAL_ROLES,
    LAYER_ROLES,
    SCHEMAS,
    FamilyMap,
    ModelSchema,
    Slot,
    family_of,
    schema_of,
)

__all__ = [
    "ALL_LAYER_ROLES",
    "ATTENTION_ROLES",
    "CATEGORY",
    "EXTRA_LAYER_ROLES",
    "GLOBAL_ROLES",
    "LAYER_ROLES",
    "SCHEMAS",
    "FamilyMap",
    "ModelSchema",
    "Slot",
    "family_of",
    "schema_of",
]
