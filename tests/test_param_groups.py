"""Parameter groups: every parameter in exactly one group with the expected layer, LR and weight decay."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from transferlab.errors import ModelError, SpecError
from transferlab.recipes.optim import OPTIMIZERS, build_optimizer
from transferlab.recipes.param_groups import build_param_groups, describe_param_groups, layer_of
from transferlab.spec import OptimSpec

L = 3  # transformer layers of the tiny BERT


class TinyModel(nn.Module):
    """The naming of a TransferModel: backbone.model.<HF names>, head.<...>, and num_layers."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=L, num_attention_heads=2,
                                      intermediate_size=64)
        self.backbone = nn.Module()
        self.backbone.model = transformers.BertModel(cfg)
        self.head = nn.ModuleDict({"norm": nn.LayerNorm(32), "out": nn.Linear(32, 3)})
        self.num_layers = L


@pytest.fixture(scope="module")
def model() -> TinyModel:
    return TinyModel()


def expected_layer(name: str) -> int:
    """Written out for BERT names, independently of layer_of."""
    if name.startswith("head."):
        return L + 1
    if name.startswith("backbone.model.embeddings."):
        return 0
    if name.startswith("backbone.model.pooler."):
        return L
    prefix = "backbone.model.encoder.layer."
    assert name.startswith(prefix), name
    return int(name[len(prefix):].split(".")[0]) + 1


def expected_decay(name: str) -> bool:
    return not (name.endswith(".bias") or ".LayerNorm." in name or name.startswith("head.norm."))


def test_every_parameter_in_one_group_with_expected_layer_lr_and_decay(model):
    spec = OptimSpec(lr=1e-3, weight_decay=0.05, layer_decay=0.5, head_lr=5e-3)
    groups = build_param_groups(model, spec)
    names = dict(model.named_parameters())
    assert len(names) == 5 + 16 * L + 2 + 4  # embeddings, layers, pooler, head of the tiny BERT
    seen: dict[str, dict] = {}
    for g in groups:
        assert len(g["params"]) == len(g["param_names"]) > 0
        for name, p in zip(g["param_names"], g["params"]):
            assert name not in seen, f"{name} is in two groups"
            assert p is names[name]
            seen[name] = g
    assert set(seen) == set(names)
    expected_lr = {0: 1e-3 * 0.5**4, 1: 1e-3 * 0.5**3, 2: 1e-3 * 0.5**2, 3: 1e-3 * 0.5, 4: 5e-3}
    for name, g in seen.items():
        layer, decay = expected_layer(name), expected_decay(name)
        assert g["layer"] == layer, name
        assert g["lr"] == pytest.approx(expected_lr[layer], rel=1e-12), name
        assert g["weight_decay"] == (0.05 if decay else 0.0), name
        label = "head" if layer == L + 1 else f"layer{layer}"
        assert g["name"] == f"{label}.{'decay' if decay else 'no_decay'}", name
    # a few literal spot checks
    q = seen["backbone.model.encoder.layer.2.attention.self.query.weight"]
    assert (q["name"], q["lr"], q["weight_decay"]) == ("layer3.decay", pytest.approx(5e-4), 0.05)
    assert seen["backbone.model.embeddings.LayerNorm.weight"]["name"] == "layer0.no_decay"
    assert seen["backbone.model.pooler.dense.weight"]["name"] == "layer3.decay"
    assert seen["head.out.weight"]["name"] == "head.decay"
    assert seen["head.norm.weight"]["name"] == "head.no_decay"
    # ordered by layer, decayed group first
    assert [g["name"] for g in groups] == [f"{lab}.{d}" for lab in ("layer0", "layer1", "layer2", "layer3", "head")
                                           for d in ("decay", "no_decay")]


def test_no_layer_decay_gives_every_backbone_group_the_base_lr(model):
    groups = build_param_groups(model, OptimSpec(lr=2e-5, layer_decay=1.0))
    assert {g["lr"] for g in groups} == {2e-5}  # head_lr None: the head at lr too


def test_frozen_parameters_are_included(model):
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    try:
        groups = build_param_groups(model, OptimSpec())
        assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


def test_zero_weight_decay_and_extra_no_decay_substrings(model):
    assert all(g["weight_decay"] == 0.0 for g in build_param_groups(model, OptimSpec(weight_decay=0.0)))
    spec = OptimSpec(weight_decay=0.1, no_decay=["bias", "norm", "position_embeddings"])
    groups = build_param_groups(model, spec)
    where = {n: g for g in groups for n in g["param_names"]}
    assert where["backbone.model.embeddings.position_embeddings.weight"]["weight_decay"] == 0.0
    assert where["backbone.model.embeddings.word_embeddings.weight"]["weight_decay"] == 0.1
    # without "norm", norm weights decay; without "bias", biases do
    where = {n: g for g in build_param_groups(model, OptimSpec(weight_decay=0.1, no_decay=[])) for n in g["param_names"]}
    assert where["backbone.model.embeddings.LayerNorm.weight"]["weight_decay"] == 0.1
    assert where["head.out.bias"]["weight_decay"] == 0.1


class RMSNorm(nn.Module):  # like T5LayerNorm / LlamaRMSNorm: a norm class that is not nn.LayerNorm
    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))


def test_norm_is_decided_by_module_type():
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.model = nn.ModuleDict({"norm": RMSNorm(4), "proj": nn.Linear(4, 4), "ln": nn.GroupNorm(2, 4)})
    groups = build_param_groups(model, OptimSpec(weight_decay=0.1), num_layers=1)
    where = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    assert where == {"backbone.model.norm.weight": 0.0, "backbone.model.proj.weight": 0.1,
                     "backbone.model.proj.bias": 0.0, "backbone.model.ln.weight": 0.0, "backbone.model.ln.bias": 0.0}


@pytest.mark.parametrize("name, layer", [
    ("backbone.model.embeddings.word_embeddings.weight", 0),
    ("backbone.model.encoder.layer.0.attention.self.query.weight", 1),
    ("backbone.model.encoder.layer.11.output.dense.bias", 12),
    ("backbone.model.pooler.dense.weight", 12),
    ("backbone.model.wte.weight", 0),
    ("backbone.model.h.3.attn.c_attn.weight", 4),
    ("backbone.model.ln_f.weight", 12),
    ("backbone.model.layernorm.weight", 12),  # ViT final norm
    ("backbone.model.embeddings.patch_embeddings.projection.weight", 0),
    ("backbone.model.encoder.layers.5.attention.k_proj.weight", 6),  # wav2vec2
    ("backbone.model.feature_extractor.conv_layers.0.conv.weight", 0),
    ("backbone.model.encoder.pos_conv_embed.conv.bias", 0),
    ("backbone.model.encoder.block.2.layer.0.SelfAttention.q.weight", 3),  # T5: the block counts
    ("backbone.model.embeddings.norm.weight", 0),  # Swin's patch-embedding norm is input side
    ("input_adapter.proj.weight", 0),
    ("head.out.weight", 13),
    ("head.layer.0.weight", 13),
])
def test_layer_of(name, layer):
    assert layer_of(name, 12) == layer


def test_layer_of_rejects_a_layer_beyond_num_layers():
    with pytest.raises(ModelError, match="num_layers=2"):
        layer_of("backbone.model.encoder.layer.2.output.dense.weight", 2)


@pytest.mark.parametrize("field, value", [("layer_decay", 0.0), ("layer_decay", 1.5), ("lr", 0.0),
                                          ("head_lr", -1.0), ("weight_decay", -0.1)])
def test_bad_spec_values_name_the_field(model, field, value):
    with pytest.raises(SpecError, match=f"optim.{field}"):
        build_param_groups(model, OptimSpec(**{field: value}))


def test_num_layers_is_required_without_model_attribute():
    with pytest.raises(ModelError, match="num_layers"):
        build_param_groups(nn.Linear(2, 2), OptimSpec())


def test_describe_param_groups(model):
    rows = describe_param_groups(build_param_groups(model, OptimSpec(lr=1e-3, layer_decay=0.5)))
    assert rows[-1] == ("head.no_decay", 1e-3, 0.0, 32 + 32 + 3)  # head norm weight, bias; out bias
    assert sum(r[3] for r in rows) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_groups_work_with_every_optimizer(model, name):
    groups = build_param_groups(model, OptimSpec(name=name, layer_decay=0.8))
    opt = build_optimizer(groups, OptimSpec(name=name, layer_decay=0.8))
    assert [g["name"] for g in opt.param_groups] == [g["name"] for g in groups]
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in groups]
    saved = opt.state_dict()
    assert saved["param_groups"][0]["param_names"] == groups[0]["param_names"]
