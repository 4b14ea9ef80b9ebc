"""DistilBERT (``model_type`` distilbert): BERT's post-LN layer under other names, no segments, no pooler.

    transformer.layer.{i}.attention.{q,k,v,out}_lin     q, k, v, o
    transformer.layer.{i}.sa_layer_norm                 attn_ln (after the residual sum)
    transformer.layer.{i}.ffn.lin1 / lin2               ffn_in, ffn_out
    transformer.layer.{i}.output_layer_norm             ffn_ln
    embeddings.position_embeddings / LayerNorm / *      positions, embed_norm, embeddings

Its LayerNorms use eps 1e-12 (fixed in the code, not in the config) and its activation is
``config.activation``; with those a DistilBERT layer and a BERT layer compute the same function.
"""

from __future__ import annotations

import transformers as tf

from transferlab.models.schema.base import TEXT, FamilyMap, linear, register


class DistilBertMap(FamilyMap):
    def activation(self, config) -> str:
        return str(config.activation)

    def layer_norm_eps(self, config) -> float:
        return 1e-12


DISTILBERT = register(DistilBertMap(
    name="distilbert", model_types=("distilbert",), layer_prefix="transformer.layer.{i}.", norm="post",
    slots={
        **linear("q", "attention.q_lin"), **linear("k", "attention.k_lin"), **linear("v", "attention.v_lin"),
        **linear("o", "attention.out_lin"), **linear("attn_ln", "sa_layer_norm"), **linear("ffn_in", "ffn.lin1"),
        **linear("ffn_out", "ffn.lin2"), **linear("ffn_ln", "output_layer_norm"),
    },
    globals=[("embeddings.position_embeddings.", "positions"), ("embeddings.position_ids", "positions"),
             ("embeddings.LayerNorm.", "embed_norm"), ("embeddings.", "embeddings")],
    positions="embeddings.position_embeddings.weight", lora_targets=("q_lin", "v_lin"),
    tiny=lambda _: tf.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=512,
                                       activation="gelu", **TEXT),
))
