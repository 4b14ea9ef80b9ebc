"""ViT and DeiT (``model_type`` vit, deit): pre-LN encoders over patch embeddings.

    layers.{i}.layernorm_before                  attn_ln
    layers.{i}.attention.{q,k,v,o}_proj          q, k, v, o
    layers.{i}.layernorm_after                   ffn_ln
    layers.{i}.mlp.fc1 / fc2                     ffn_in, ffn_out
    embeddings.position_embeddings               positions (a parameter, CLS first)
    embeddings.* (patches, CLS, DeiT's distillation token), layernorm, pooler
"""

from __future__ import annotations

import transformers as tf

from transferlab.models.schema.base import TINY, FamilyMap, linear, register

SLOTS = {
    **linear("q", "attention.q_proj"), **linear("k", "attention.k_proj"), **linear("v", "attention.v_proj"),
    **linear("o", "attention.o_proj"), **linear("attn_ln", "layernorm_before"), **linear("ffn_in", "mlp.fc1"),
    **linear("ffn_out", "mlp.fc2"), **linear("ffn_ln", "layernorm_after"),
}
GLOBALS = [("embeddings.position_embeddings", "positions"), ("embeddings.", "embeddings"),
           ("layernorm.", "final_norm"), ("pooler.", "pooler")]

_COMMON = {"layer_prefix": "layers.{i}.", "slots": SLOTS, "globals": GLOBALS, "norm": "pre",
           "positions": "embeddings.position_embeddings", "pooler_dense": "pooler.dense",
           "lora_targets": ("q_proj", "v_proj"), "feed": "layers"}
# position rows before the patches: CLS (and DeiT's distillation token)
VIT = register(FamilyMap(name="vit", model_types=("vit",), position_offset_rows=1, **_COMMON,
                         tiny=lambda _: tf.ViTConfig(**TINY, image_size=32, patch_size=4, num_channels=3)))
DEIT = register(FamilyMap(name="deit", model_types=("deit",), position_offset_rows=2, **_COMMON))
