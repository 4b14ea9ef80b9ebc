"""ModernBERT (``model_type`` modernbert): a pre-norm encoder with fused QKV, a GLU feed-forward,
rotary positions, LayerNorms without biases and a final norm.

    layers.{i}.attn_norm        attn_ln (before attention; layer 0 has none: the embedding norm serves)
    layers.{i}.attn.Wqkv        q, k, v = thirds of the output dimension
    layers.{i}.attn.Wo          o
    layers.{i}.mlp_norm         ffn_ln (before the feed-forward)
    layers.{i}.mlp.Wi           ffn_in (first half, activated) and ffn_gate (second half): act(in) * gate
    layers.{i}.mlp.Wo           ffn_out
    embeddings.tok_embeddings / norm, final_norm     embeddings, embed_norm, final_norm

Biases exist only with ``attention_bias``/``mlp_bias``/``norm_bias``; a missing bias is a zero one,
so a transplant writes zeros into a target bias whose source has none. No position table: rotary.
"""

from __future__ import annotations

import torch
import transformers as tf
from torch import Tensor, nn

from transferlab.models.schema.base import TINY, FamilyMap, linear, register


class ModernBertMap(FamilyMap):
    def activation(self, config) -> str:
        return str(config.hidden_activation)

    def layer_norm_eps(self, config) -> float:
        return float(config.norm_eps)

    def call_layer(self, model: nn.Module, layer: int, hidden: Tensor, additive: Tensor) -> Tensor:
        module = model.layers[layer]
        positions = torch.arange(hidden.shape[1], device=hidden.device)[None]
        rotary = model.rotary_emb(hidden, positions, module.attention_type)
        return module(hidden, attention_mask=additive, position_embeddings=rotary)


def _tiny(_: str) -> tf.PretrainedConfig:
    return tf.ModernBertConfig(**TINY, vocab_size=30522, pad_token_id=0, bos_token_id=101, eos_token_id=102,
                               cls_token_id=101, sep_token_id=102, max_position_embeddings=512,
                               global_attn_every_n_layers=1)


BIASES = ("q.bias", "k.bias", "v.bias", "o.bias", "attn_ln.bias", "ffn_in.bias", "ffn_gate.bias", "ffn_out.bias",
          "ffn_ln.bias")
MODERNBERT = register(ModernBertMap(
    name="modernbert", model_types=("modernbert",), layer_prefix="layers.{i}.", norm="pre",
    slots={
        **linear("q", "attn.Wqkv", part=0, parts=3), **linear("k", "attn.Wqkv", part=1, parts=3),
        **linear("v", "attn.Wqkv", part=2, parts=3), **linear("o", "attn.Wo"), **linear("attn_ln", "attn_norm"),
        **linear("ffn_in", "mlp.Wi", part=0, parts=2), **linear("ffn_gate", "mlp.Wi", part=1, parts=2),
        **linear("ffn_out", "mlp.Wo"), **linear("ffn_ln", "mlp_norm"),
    },
    optional=(*BIASES, "attn_ln.weight"),
    globals=[("embeddings.norm.", "embed_norm"), ("embeddings.", "embeddings"), ("final_norm.", "final_norm")],
    positions=None, position_kind="rotary", ffn="glu", lora_targets=("Wqkv",), tiny=_tiny,
))
