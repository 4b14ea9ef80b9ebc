"""GPT-2 (``model_type`` gpt2): a pre-LN decoder whose linear layers are ``Conv1D`` (weights stored
(in, out), transposed here to the (out, in) layout) and whose q, k, v are one fused ``c_attn``.

    h.{i}.ln_1                 attn_ln (before attention)
    h.{i}.attn.c_attn          q, k, v = thirds of the output dimension
    h.{i}.attn.c_proj          o
    h.{i}.ln_2                 ffn_ln (before the feed-forward)
    h.{i}.mlp.c_fc / c_proj    ffn_in, ffn_out
    wte, wpe, ln_f             embeddings, positions, final_norm

With ``scale_attn_by_inverse_layer_idx`` a layer's attention depends on its index (a trait).
"""

from __future__ import annotations

import transformers as tf

from transferlab.models.schema.base import TEXT, FamilyMap, linear, register


class GPT2Map(FamilyMap):
    def attention_scale(self, config, layer: int) -> float:
        return 1.0 / (layer + 1) if getattr(config, "scale_attn_by_inverse_layer_idx", False) else 1.0


GPT2 = register(GPT2Map(
    name="gpt2", model_types=("gpt2",), layer_prefix="h.{i}.", norm="pre", causal=True, stackable=True,
    slots={
        **linear("q", "attn.c_attn", transpose=True, part=0, parts=3),
        **linear("k", "attn.c_attn", transpose=True, part=1, parts=3),
        **linear("v", "attn.c_attn", transpose=True, part=2, parts=3),
        **linear("o", "attn.c_proj", transpose=True), **linear("attn_ln", "ln_1"),
        **linear("ffn_in", "mlp.c_fc", transpose=True), **linear("ffn_out", "mlp.c_proj", transpose=True),
        **linear("ffn_ln", "ln_2"),
    },
    globals=[("wte.", "embeddings"), ("wpe.", "positions"), ("ln_f.", "final_norm")],
    positions="wpe.weight", lora_targets=("c_attn",),
    tiny=lambda _: tf.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_inner=64, n_positions=512, **TEXT),
))
