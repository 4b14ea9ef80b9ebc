"""The T5 encoder (``model_type`` t5, loaded as ``T5EncoderModel``): pre-norm with RMSNorms, no biases,
unscaled attention and a relative position bias table owned by layer 0 and used by every layer.

    encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}                      q, k, v, o
    encoder.block.0.layer.0.SelfAttention.relative_attention_bias          rel_bias (layer 0 only)
    encoder.block.{i}.layer.0.layer_norm                                   attn_ln (before attention)
    encoder.block.{i}.layer.1.DenseReluDense.wi (or wi_0 and wi_1, gated)  ffn_in (ffn_gate)
    encoder.block.{i}.layer.1.DenseReluDense.wo                            ffn_out
    encoder.block.{i}.layer.1.layer_norm                                   ffn_ln (before the feed-forward)
    shared / encoder.embed_tokens (tied), encoder.final_layer_norm         embeddings, final_norm

``AutoModel`` would load the encoder-decoder; a run fine-tunes the encoder only. Attention is
q.k without 1/sqrt(head_dim) (trait ``attention_scale`` sqrt(d_kv)), and the norms are RMSNorms
(trait ``norm_type``): a BERT layer moved in keeps its weights but not its function.
"""

from __future__ import annotations

import math

import transformers as tf
from torch import Tensor, nn

from transferlab.models.schema.base import FamilyMap, linear, register


class T5Map(FamilyMap):
    def activation(self, config) -> str:
        return str(config.dense_act_fn)

    def attention_scale(self, config, layer: int) -> float:
        return math.sqrt(int(config.d_kv))

    def traits(self, config, layer: int) -> dict:
        return {**super().traits(config, layer), "ffn": "glu" if config.is_gated_act else "plain"}

    def layer_slots(self, config) -> dict:
        if not config.is_gated_act:
            return self.slots
        gated = {k: v for k, v in self.slots.items() if not k.startswith("ffn_in.")}
        return {**gated, **linear("ffn_in", _FFN + "wi_0"), **linear("ffn_gate", _FFN + "wi_1")}

    def call_layer(self, model: nn.Module, layer: int, hidden: Tensor, additive: Tensor) -> Tensor:
        blocks = model.encoder.block
        t = hidden.shape[1]
        bias = blocks[0].layer[0].SelfAttention.compute_bias(t, t, device=hidden.device) + additive
        out = blocks[layer](hidden, attention_mask=additive, position_bias=bias)
        return out[0] if isinstance(out, tuple) else out


def _tiny(_: str) -> tf.PretrainedConfig:
    return tf.T5Config(d_model=32, num_layers=2, num_heads=2, d_ff=64, d_kv=16, vocab_size=30522, pad_token_id=0,
                       eos_token_id=102, decoder_start_token_id=0, feed_forward_proj="gated-gelu")


_FFN = "layer.1.DenseReluDense."
T5 = register(T5Map(
    name="t5", model_types=("t5",), layer_prefix="encoder.block.{i}.", norm="pre", model_class="T5EncoderModel",
    slots={
        **linear("q", "layer.0.SelfAttention.q"), **linear("k", "layer.0.SelfAttention.k"),
        **linear("v", "layer.0.SelfAttention.v"), **linear("o", "layer.0.SelfAttention.o"),
        **linear("rel_bias", "layer.0.SelfAttention.relative_attention_bias"),
        **linear("attn_ln", "layer.0.layer_norm"),
        # plain T5: wi; T5 v1.1 / flan (gated): wi_0 (activated) and wi_1 (gate)
        **linear("ffn_in", _FFN + "wi"), **linear("ffn_out", _FFN + "wo"),
        **linear("ffn_ln", "layer.1.layer_norm"),
    },
    optional=("rel_bias.weight", "q.bias", "k.bias", "v.bias", "o.bias", "rel_bias.bias", "attn_ln.bias",
              "ffn_in.bias", "ffn_gate.bias", "ffn_out.bias", "ffn_ln.bias"),  # no biases; the table in layer 0
    globals=[("shared.", "embeddings"), ("encoder.embed_tokens.", "embeddings"),
             ("encoder.final_layer_norm.", "final_norm")],
    positions=None, position_kind="relative", norm_type="rmsnorm", lora_targets=("q", "v"), tiny=_tiny,
))
