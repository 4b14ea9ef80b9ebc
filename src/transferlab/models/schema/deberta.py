"""DeBERTa-v2 and v3 (``model_type`` deberta-v2): a post-LN encoder with disentangled relative attention.

    encoder.layer.{i}.attention.self.{query,key,value}_proj      q, k, v
    encoder.layer.{i}.attention.self.pos_{query,key}_proj        pos_q, pos_k (only with share_att_key: false;
                                                                 v2/v3 checkpoints share q, k for positions)
    encoder.layer.{i}.attention.output.dense / LayerNorm         o, attn_ln (after the residual sum)
    encoder.layer.{i}.intermediate.dense                         ffn_in
    encoder.layer.{i}.output.dense / LayerNorm                   ffn_out, ffn_ln
    encoder.rel_embeddings, encoder.LayerNorm                    positions (the relative position table and
                                                                 its norm, used by every layer)
    embeddings.position_embeddings                               positions (only position_biased_input: v2)

A layer's attention adds content-to-position and position-to-content scores to q.k and scales by
1/sqrt(head_dim * (1 + len(pos_att_type))): a trait, so a BERT layer moved in (or out) is reported
as a function change. ``encoder.conv`` (v2-xlarge's convolution after layer 0) counts as input side.
"""

from __future__ import annotations

import math

import transformers as tf
from torch import Tensor, nn

from transferlab.models.schema.base import TEXT, TINY, FamilyMap, linear, register


class DebertaMap(FamilyMap):
    def attention_scale(self, config, layer: int) -> float:
        kinds = config.pos_att_type or []
        return 1.0 / math.sqrt(1 + ("c2p" in kinds) + ("p2c" in kinds))

    def layer_positions(self, config) -> str:
        return "relative" if getattr(config, "relative_attention", False) else "none"

    def max_positions(self, config) -> int | None:
        return int(config.max_position_embeddings) if getattr(config, "position_biased_input", True) else None

    def call_layer(self, model: nn.Module, layer: int, hidden: Tensor, additive: Tensor) -> Tensor:
        encoder = model.encoder
        keep = additive == 0  # the layer takes a 0/1 mask and builds its own fill
        out = encoder.layer[layer](hidden, keep, relative_pos=encoder.get_rel_pos(hidden),
                                   rel_embeddings=encoder.get_rel_embedding())
        return out[0] if isinstance(out, tuple) else out


def _tiny(_: str) -> tf.PretrainedConfig:
    """v3's attention settings (relative positions, shared q/k for them, no absolute table), small."""
    return tf.DebertaV2Config(**TINY, **TEXT, max_position_embeddings=512, relative_attention=True,
                              pos_att_type=["p2c", "c2p"], position_buckets=16, max_relative_positions=-1,
                              share_att_key=True, position_biased_input=False, norm_rel_ebd="layer_norm",
                              type_vocab_size=0)


DEBERTA_V2 = register(DebertaMap(
    name="deberta-v2", model_types=("deberta-v2",), layer_prefix="encoder.layer.{i}.", norm="post",
    slots={
        **linear("q", "attention.self.query_proj"), **linear("k", "attention.self.key_proj"),
        **linear("v", "attention.self.value_proj"), **linear("pos_q", "attention.self.pos_query_proj"),
        **linear("pos_k", "attention.self.pos_key_proj"), **linear("o", "attention.output.dense"),
        **linear("attn_ln", "attention.output.LayerNorm"), **linear("ffn_in", "intermediate.dense"),
        **linear("ffn_out", "output.dense"), **linear("ffn_ln", "output.LayerNorm"),
    },
    optional=("pos_q.weight", "pos_q.bias", "pos_k.weight", "pos_k.bias"),
    globals=[("embeddings.position_embeddings.", "positions"), ("embeddings.position_ids", "positions"),
             ("embeddings.LayerNorm.", "embed_norm"), ("embeddings.", "embeddings"),
             ("encoder.rel_embeddings.", "positions"), ("encoder.LayerNorm.", "positions"),
             ("encoder.conv.", "embeddings")],
    positions="embeddings.position_embeddings.weight", position_kind="relative",
    lora_targets=("query_proj", "value_proj"), tiny=_tiny,
))
