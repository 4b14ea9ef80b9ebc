"""ALBERT (``model_type`` albert): a post-LN BERT layer shared by all layers, factorised embeddings.

    encoder.albert_layer_groups.{g}.albert_layers.0.attention.{query,key,value,dense}   q, k, v, o
    ... .attention.LayerNorm                          attn_ln (after the residual sum)
    ... .ffn / ffn_output                             ffn_in, ffn_out
    ... .full_layer_layer_norm                        ffn_ln
    embeddings.* (size E), encoder.embedding_hidden_mapping_in (E -> H)    embeddings (positions, embed_norm)
    pooler (a Linear, then tanh)                      pooler

Layer ``i`` is computed by group ``g = i // (num_hidden_layers / num_hidden_groups)``; every released
ALBERT has one group, so ``layers.0.q.weight`` and ``layers.11.q.weight`` are the same tensor. What
that means for each strategy (docs/methods/families.md): re-initialising or transplanting into a layer
writes the shared weights, so every layer of its group changes (the report lists them); a transplant
that maps two different source layers onto one group is refused; layer-wise LR decay gives a shared
tensor the rate of the top layer that uses it. ``inner_group_num`` > 1 is not supported.
"""

from __future__ import annotations

import transformers as tf

from transferlab.errors import ModelError
from transferlab.models.schema.base import TEXT, TINY, FamilyMap, linear, register


class AlbertMap(FamilyMap):
    def _per_group(self, config) -> int:
        if int(getattr(config, "inner_group_num", 1)) != 1:
            raise ModelError(f"albert schema: inner_group_num {config.inner_group_num} is not supported (only 1, "
                             "as in every released ALBERT)")
        return max(1, int(config.num_hidden_layers) // int(config.num_hidden_groups))

    def layer_path(self, config, layer: int) -> str:
        return self.layer_prefix.format(i=layer // self._per_group(config))

    def shared_layers(self, config) -> list[list[int]]:
        per = self._per_group(config)
        groups: dict[int, list[int]] = {}
        for i in range(int(config.num_hidden_layers)):
            groups.setdefault(i // per, []).append(i)
        return [g for g in groups.values() if len(g) > 1]


ALBERT = register(AlbertMap(
    name="albert", model_types=("albert",), layer_prefix="encoder.albert_layer_groups.{i}.albert_layers.0.",
    norm="post", reorderable=False,
    slots={
        **linear("q", "attention.query"), **linear("k", "attention.key"), **linear("v", "attention.value"),
        **linear("o", "attention.dense"), **linear("attn_ln", "attention.LayerNorm"), **linear("ffn_in", "ffn"),
        **linear("ffn_out", "ffn_output"), **linear("ffn_ln", "full_layer_layer_norm"),
    },
    globals=[("embeddings.position_embeddings.", "positions"), ("embeddings.position_ids", "positions"),
             ("embeddings.LayerNorm.", "embed_norm"), ("embeddings.", "embeddings"),
             ("encoder.embedding_hidden_mapping_in.", "embeddings"), ("pooler.", "pooler")],
    positions="embeddings.position_embeddings.weight", pooler_dense="pooler", lora_targets=("query", "value"),
    tiny=lambda _: tf.AlbertConfig(**TINY, **TEXT, embedding_size=16, max_position_embeddings=512,
                                   hidden_act="gelu"),
))
