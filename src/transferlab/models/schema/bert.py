"""BERT, RoBERTa, ELECTRA and MiniLM (``model_type`` bert): post-LN encoders with the same layer.

    encoder.layer.{i}.attention.self.{query,key,value}   q, k, v
    encoder.layer.{i}.attention.output.dense / LayerNorm  o, attn_ln (after the residual sum)
    encoder.layer.{i}.intermediate.dense                  ffn_in
    encoder.layer.{i}.output.dense / LayerNorm            ffn_out, ffn_ln

RoBERTa numbers its positions from ``pad_token_id + 1``, so its position table is its own family's
(``roberta``): layers move between the three freely, embeddings and positions only within a family.
"""

from __future__ import annotations

from transferlab.models.schema.base import FamilyMap, linear, register

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


def _family(name: str, *model_types: str, **facts) -> FamilyMap:
    return register(FamilyMap(name=name, model_types=model_types, layer_prefix="encoder.layer.{i}.",
                              slots=SLOTS, globals=GLOBALS, norm="post", stackable=True, layer_loop=True, **facts))


BERT = _family("bert", "bert", classifier="bert")
ROBERTA = _family("roberta", "roberta", "xlm-roberta", "camembert", positions_after_pad=True, classifier="roberta")
ELECTRA = _family("electra", "electra")
