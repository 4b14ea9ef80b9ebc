"""BERT, RoBERTa, ELECTRA and MiniLM (``model_type`` bert): post-LN encoders with the same layer.

    encoder.layer.{i}.attention.self.{query,key,value}   q, k, v
    encoder.layer.{i}.attention.output.dense / LayerNorm  o, attn_ln (after the residual sum)
    encoder.layer.{i}.intermediate.dense                  ffn_in
    encoder.layer.{i}.output.dense / LayerNorm            ffn_out, ffn_ln

RoBERTa numbers its positions from ``pad_token_id + 1``, so its position table is its own family's
(``roberta``): layers move between the three freely, embeddings and positions only within a family.
"""

from __future__ import annotations

import transformers as tf

from transferlab.models.schema.base import TEXT, TINY, FamilyMap, linear, register

SLOTS = {
    **linear("q", "attention.self.query"), **linear("k", "attention.self.key"),
    **linear("v", "attention.self.value"), **linear("o", "attention.output.dense"),
    **linear("attn_ln", "attention.output.LayerNorm"), **linear("ffn_in", "intermediate.dense"),
    **linear("ffn_out", "output.dense"), **linear("ffn_ln", "output.LayerNorm"),
}
GLOBALS = [
    ("embeddings.position_embeddings.", "positions"), ("embeddings.position_ids", "positions"),
    ("embeddings.LayerNorm.", "embed_norm"), ("embeddings.", "embeddings"),
    ("embeddings_project.", "embeddings"),  # ELECTRA: embedding_size -> hidden_size
    ("pooler.", "pooler"),
]


def _tiny(model_type: str) -> tf.PretrainedConfig:
    if model_type in ("roberta", "xlm-roberta", "camembert"):
        # positions start after padding_idx (0 here): 512 tokens need 513 rows; one segment like the real ones
        return tf.AutoConfig.for_model(model_type, **TINY, **TEXT, max_position_embeddings=513, type_vocab_size=1)
    if model_type == "electra":
        return tf.ElectraConfig(**TINY, **TEXT, embedding_size=16, max_position_embeddings=512)
    return tf.BertConfig(**TINY, **TEXT, max_position_embeddings=512)


class RobertaMap(FamilyMap):
    def position_offset(self, config) -> int:
        return int(config.pad_token_id or 0) + 1


def _family(name: str, *model_types: str, cls=FamilyMap, **facts) -> FamilyMap:
    return register(cls(name=name, model_types=model_types, layer_prefix="encoder.layer.{i}.",
                        slots=SLOTS, globals=GLOBALS, norm="post", positions="embeddings.position_embeddings.weight",
                        pooler_dense="pooler.dense", lora_targets=("query", "value"), tiny=_tiny,
                        stackable=True, layer_loop=True, **facts))


BERT = _family("bert", "bert", classifier="bert")
ROBERTA = _family("roberta", "roberta", "xlm-roberta", "camembert", cls=RobertaMap, classifier="roberta")
ELECTRA = _family("electra", "electra")
