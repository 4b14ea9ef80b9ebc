"""The canonical layer schema: per-family maps, bit-identical round trips, heads, layer calls."""

import pytest
import torch
import torch.nn.functional as F
import transformers as tf
from transformers.activations import ACT2FN

from transferlab.errors import ModelError
from transferlab.models.backbone import _tiny_config
from transferlab.models.schema import LAYER_ROLES, SCHEMAS, schema_of

SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
W2V = {"conv_dim": (32, 32), "conv_stride": (5, 2), "conv_kernel": (10, 3), "num_conv_pos_embeddings": 16,
       "num_conv_pos_embedding_groups": 2, "vocab_size": 32}


def configs() -> dict[str, tf.PretrainedConfig]:
    """One small random config per family (the tiny aliases, plus the other model types of each map)."""
    tiny = ("tiny-bert", "tiny-roberta", "tiny-gpt2", "tiny-vit", "tiny-wav2vec2")
    out = {name: _tiny_config(name)[0] for name in tiny}
    out["electra"] = tf.ElectraConfig(**SMALL, embedding_size=16, vocab_size=100)
    out["deit"] = tf.DeiTConfig(**SMALL, image_size=16, patch_size=4)
    out["hubert"] = tf.HubertConfig(**SMALL, **W2V)
    out["wav2vec2-stable"] = tf.Wav2Vec2Config(**SMALL, **W2V, do_stable_layer_norm=True, feat_extract_norm="layer")
    out["distilbert"] = SCHEMAS.get("distilbert").tiny_config()
    out["albert"] = SCHEMAS.get("albert").tiny_config()
    return out


def all_configs() -> dict[str, tf.PretrainedConfig]:
    """configs() plus the families whose layers are not BERT's function (relative, rotary, GLU, RMSNorm)."""
    out = configs()
    for model_type in ("deberta-v2", "modernbert", "t5"):
        out[model_type] = SCHEMAS.get(model_type).tiny_config()
    out["deberta-v2-own-pos-proj"] = tf.DebertaV2Config(**{**out["deberta-v2"].to_dict(), "share_att_key": False})
    out["t5-plain-ffn"] = tf.T5Config(**{**out["t5"].to_dict(), "feed_forward_proj": "relu"})
    return out


def build(config: tf.PretrainedConfig, seed: int) -> torch.nn.Module:
    from transferlab.models.backbone import model_from_config

    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    return model_from_config(config).eval()


@pytest.mark.parametrize("name", list(all_configs()))
def test_round_trip_is_bit_identical(name):
    """Acceptance 1: read every weight through the schema, write it into another model: same state dict."""
    config = all_configs()[name]
    a, b = build(config, 0), build(config, 1)
    assert any(not torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    canonical = schema_of(a).read()
    schema_of(b).write(canonical)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert set(canonical) == set(schema_of(b).slots)  # every parameter has a canonical name


def _layer_norm(x, w, b, eps):
    return F.layer_norm(x, x.shape[-1:], w, b, eps)


def reference_layer(w: dict, x, mask, heads: int, norm: str, act: str, eps: float, causal: bool):
    """A transformer layer written from the canonical weights alone (what the schema claims they mean)."""
    b, t, h = x.shape
    d = h // heads

    def attention(z):
        q, k, v = (F.linear(z, w[f"{r}.weight"], w[f"{r}.bias"]).view(b, t, heads, d).transpose(1, 2) for r in "qkv")
        scores = q @ k.transpose(-1, -2) / d**0.5
        keep = mask.bool()[:, None, None, :].expand(b, 1, t, t)
        if causal:
            keep = keep & torch.ones(t, t, dtype=torch.bool).tril()
        scores = scores.masked_fill(~keep, torch.finfo(x.dtype).min)
        ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, h)
        return F.linear(ctx, w["o.weight"], w["o.bias"])

    def ffn(z):
        return F.linear(ACT2FN[act](F.linear(z, w["ffn_in.weight"], w["ffn_in.bias"])), w["ffn_out.weight"],
                        w["ffn_out.bias"])

    def ln(z, role):
        return _layer_norm(z, w[f"{role}.weight"], w[f"{role}.bias"], eps)

    if norm == "post":
        x = ln(x + attention(x), "attn_ln")
        return ln(x + ffn(x), "ffn_ln")
    x = x + attention(ln(x, "attn_ln"))
    return x + ffn(ln(x, "ffn_ln"))


@pytest.mark.parametrize("name", list(configs()))
def test_canonical_weights_compute_the_hf_layer(name):
    """Each map against the family's own Hugging Face module: a layer rebuilt from canonical weights
    (q, k, v, o, attn_ln, ffn_in, ffn_out, ffn_ln, pre- or post-LN) gives the module's output."""
    model = build(configs()[name], 0)
    s = schema_of(model)
    torch.manual_seed(3)
    x = torch.randn(2, 6, s.hidden_size)
    mask = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]])
    for layer in range(s.num_layers):
        w = {key.split(".", 2)[2]: s.view(key) for key in s.keys(f"layers.{layer}.*")}
        fam = s.family
        want = reference_layer(w, x, mask, s.num_heads, s.norm, fam.activation(s.config),
                               fam.layer_norm_eps(s.config), fam.causal)
        with torch.no_grad():
            got = s.call_layer(layer, x, mask)
        real = mask.bool()
        assert (got - want)[real].abs().max() < 1e-5


def test_norm_position_recorded_per_family():
    norms = {name: schema_of(build(c, 0)).norm for name, c in configs().items()}
    assert norms == {"tiny-bert": "post", "tiny-roberta": "post", "tiny-gpt2": "pre", "tiny-vit": "pre",
                     "tiny-wav2vec2": "post", "electra": "post", "deit": "pre", "hubert": "post",
                     "wav2vec2-stable": "pre", "distilbert": "post", "albert": "post"}
    stable = schema_of(build(configs()["wav2vec2-stable"], 0))
    assert stable.keys("final_norm:*") == ["final_norm:encoder.layer_norm.weight", "final_norm:encoder.layer_norm.bias"]
    base = schema_of(build(configs()["tiny-wav2vec2"], 0))
    assert base.keys("embed_norm:*") and not base.keys("final_norm:*")
    assert base.keys("positions:*") and all("pos_conv_embed" in k for k in base.keys("positions:*"))
    assert any("feature_extractor" in k for k in base.keys("embeddings:*"))


def test_heads_are_addressable_inside_fused_and_plain_projections():
    gpt2 = build(configs()["tiny-gpt2"], 0)  # n_embd 32, 2 heads of 16; c_attn (in, 3 * out)
    s = schema_of(gpt2)
    before = gpt2.h[0].attn.c_attn.weight.detach().clone()
    with torch.no_grad():
        s.head_view("layers.0.k.weight", 1).fill_(7.0)
    after = gpt2.h[0].attn.c_attn.weight.detach()
    changed = (after != before).any(0).nonzero().flatten().tolist()
    assert changed == list(range(32 + 16, 32 + 32))  # k is the second third; head 1 its second half
    assert (after[:, 48:64] == 7.0).all()

    bert = build(configs()["tiny-bert"], 0)
    s = schema_of(bert)
    dense = bert.encoder.layer[1].attention.output.dense.weight
    before = dense.detach().clone()
    with torch.no_grad():
        s.head_view("layers.1.o.weight", 0).zero_()
    assert (dense[:, :16] == 0).all() and torch.equal(dense[:, 16:], before[:, 16:])
    with pytest.raises(ModelError, match="heads 0-1"):
        s.head_view("layers.1.q.weight", 2)
    with pytest.raises(ModelError, match="o .weight.|q, k, v"):
        s.head_view("layers.1.o.bias", 0)


def test_gpt2_conv1d_is_transposed_to_linear_layout():
    gpt2 = build(configs()["tiny-gpt2"], 0)
    s = schema_of(gpt2)
    x = torch.randn(3, 32)
    for role, want in zip("qkv", gpt2.h[0].attn.c_attn(x).split(32, dim=-1)):
        got = F.linear(x, s.view(f"layers.0.{role}.weight"), s.view(f"layers.0.{role}.bias"))
        assert torch.allclose(got, want, atol=1e-6)
    assert s.view("layers.0.ffn_in.weight").shape == (64, 32)  # (out, in) like nn.Linear


def test_schema_of_a_transfer_model_uses_its_parameter_names():
    from transferlab.models.backbone import Backbone
    from transferlab.models.heads import build_head
    from transferlab.models.model import TransferModel

    backbone = Backbone(build(configs()["tiny-bert"], 0), None, 32)
    model = TransferModel(backbone, build_head("cls", 32, 2, 2, 0.1))
    s = schema_of(model)
    names = dict(model.named_parameters())
    assert s.prefix == "backbone.model."
    for hf_name, (layer, role) in s.roles.items():
        assert s.prefix + hf_name in names
        assert role in LAYER_ROLES or layer is None


def test_a_family_without_a_map_is_a_clear_error():
    mpnet = tf.AutoModel.from_config(tf.MPNetConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                    intermediate_size=64, vocab_size=100))
    with pytest.raises(ModelError, match="no layer schema for model type 'mpnet'; supported model types: .*bert.*gpt2"):
        schema_of(mpnet)
    assert {"bert", "roberta", "electra", "gpt2", "vit", "deit", "wav2vec2", "hubert", "deberta-v2", "distilbert",
            "albert", "modernbert", "t5"} <= set(SCHEMAS.names())


@pytest.mark.parametrize("model_type", ["deberta-v2", "modernbert", "t5", "distilbert", "albert"])
def test_call_layer_chain_reproduces_the_models_hidden_states(model_type):
    """The family's call_layer (relative positions, rotary, T5's shared bias) runs each layer as the model does."""
    model = build(SCHEMAS.get(model_type).tiny_config(), 0)
    s = schema_of(model)
    ids = torch.tensor([[101, 2023, 3185, 2001, 2307, 102], [101, 2023, 102, 0, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        x = want[0]
        for layer in range(s.num_layers - 1):  # the last state may carry the final norm (T5, ModernBERT)
            x = s.call_layer(layer, x, mask)
            assert (x - want[layer + 1])[mask.bool()].abs().max() < 1e-5, layer
