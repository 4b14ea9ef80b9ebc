"""wav2vec2 and HuBERT (``model_type`` wav2vec2, hubert): the transformer encoder layers.

    encoder.layers.{i}.attention.{q,k,v}_proj, out_proj   q, k, v, o
    encoder.layers.{i}.layer_norm                         attn_ln
    encoder.layers.{i}.feed_forward.intermediate_dense    ffn_in
    encoder.layers.{i}.feed_forward.output_dense          ffn_out
    encoder.layers.{i}.final_layer_norm                   ffn_ln

The base models are post-LN; ``do_stable_layer_norm`` (the large ones) makes them pre-LN, and then
``encoder.layer_norm`` is the final norm instead of the norm after the positional convolution.
The convolutional feature encoder and its projection are this family's input side (``embeddings``),
the positional convolution its ``positions``.
"""

from __future__ import annotations

import transformers as tf

from transferlab.models.schema.base import TINY, FamilyMap, linear, register


class Wav2Vec2Map(FamilyMap):
    def norm_position(self, config) -> str:
        return "pre" if getattr(config, "do_stable_layer_norm", False) else "post"

    def global_roles(self, config) -> list[tuple[str, str]]:
        norm = "final_norm" if self.norm_position(config) == "pre" else "embed_norm"
        return [("encoder.layer_norm.", norm), *self.globals]


def _tiny(model_type: str) -> tf.PretrainedConfig:
    return tf.AutoConfig.for_model(model_type, **TINY, conv_dim=(32, 32), conv_stride=(5, 2), conv_kernel=(10, 3),
                                   num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, vocab_size=32)


def _family(name: str, model_type: str) -> Wav2Vec2Map:
    return register(Wav2Vec2Map(tiny=_tiny,
        name=name, model_types=(model_type,), layer_prefix="encoder.layers.{i}.", norm="post",
        positions=None, position_kind="convolutional", lora_targets=("q_proj", "v_proj"), feed="encoder",
        slots={
            **linear("q", "attention.q_proj"), **linear("k", "attention.k_proj"), **linear("v", "attention.v_proj"),
            **linear("o", "attention.out_proj"), **linear("attn_ln", "layer_norm"),
            **linear("ffn_in", "feed_forward.intermediate_dense"), **linear("ffn_out", "feed_forward.output_dense"),
            **linear("ffn_ln", "final_layer_norm"),
        },
        globals=[("encoder.pos_conv_embed.", "positions"), ("feature_extractor.", "embeddings"),
                 ("feature_projection.", "embeddings"), ("masked_spec_embed", "embeddings")],
    ))


WAV2VEC2 = _family("wav2vec2", "wav2vec2")
HUBERT = _family("hubert", "hubert")
