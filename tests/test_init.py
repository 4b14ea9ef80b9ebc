"""Init schemes, selections and re-init of the top layers (Zhang et al. 2021)."""

import math

import pytest
import torch

from transferlab.errors import SpecError
from transferlab.models.backbone import load_backbone
from transferlab.models.schema import schema_of
from transferlab.recipes.init import INIT_SCHEMES, apply_init
from transferlab.spec import InitRule, InitSpec, ModelSpec, load_spec


@pytest.fixture(scope="module")
def minilm_state():
    return {k: v.clone() for k, v in load_backbone(ModelSpec(name="minilm")).state_dict().items()}


@pytest.fixture
def minilm(minilm_state):
    backbone = load_backbone(ModelSpec(name="minilm"))
    backbone.load_state_dict(minilm_state)
    return backbone


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k, v in before.items() if not torch.equal(v, after[k])}


@pytest.mark.parametrize("std", [None, 0.05])
def test_reinit_top_layers_and_pooler(minilm, std):
    """Acceptance 4: the top L layers and the pooler change, all else is bit-identical, LayerNorms are
    (1, 0), biases 0, and the new weights have the requested std within 5%."""
    before = {k: v.clone() for k, v in minilm.state_dict().items()}
    report = apply_init(minilm, InitSpec(reinit_layers=2, std=std), seed=0)
    after = minilm.state_dict()
    top = ("model.encoder.layer.4.", "model.encoder.layer.5.", "model.pooler.")
    changed, touched = _changed(before, after), {k for k in before if k.startswith(top)}
    assert changed <= touched
    for key in touched - changed:  # already at its re-init value (MiniLM's pooler bias is all zeros)
        assert key.endswith("bias") and (after[key] == 0).all(), key
    assert {k for k in changed if k.startswith("model.pooler.")} and len(changed) >= len(touched) - 1
    want = std if std is not None else 0.02  # MiniLM's initializer_range
    for key, value in after.items():
        if not key.startswith(top):
            continue
        if "LayerNorm.weight" in key:
            assert (value == 1).all(), key
        elif key.endswith("bias"):
            assert (value == 0).all(), key
        else:
            assert abs(value.std().item() / want - 1) < 0.05, (key, value.std().item())
            assert abs(value.mean().item()) < want * 0.05
    assert [r["select"] for r in report["rules"]] == [{"layers": "top:2"}, {"modules": ["pooler"]}]


def test_reinit_keeps_a_pooler_head_in_step(tiny_model):
    model = tiny_model("pooler")
    apply_init(model, InitSpec(reinit_layers=1), seed=0)
    assert torch.equal(model.head.dense.weight, model.backbone.pooler.dense.weight)


@pytest.fixture
def tiny_model():
    from transferlab.models.artifacts import task_from_meta
    from transferlab.models.model import build_model
    from transferlab.spec import RunSpec

    def make(head: str = "cls", name: str = "tiny-bert"):
        meta = {"name": "toy", "problem": "classification", "num_labels": 2, "metrics": ["accuracy"],
                "main_metric": "accuracy", "label_names": None, "modality": "text", "vocab_size": None,
                "input_dim": None}
        spec = RunSpec(model=ModelSpec(name=name, max_length=32))
        spec.head.name = head
        return build_model(spec, task_from_meta(meta))

    return make


@pytest.mark.parametrize("scheme,options,expected", [
    ("xavier_uniform", {}, lambda fo, fi: math.sqrt(2 / (fi + fo))),
    ("xavier_normal", {"gain": 2.0}, lambda fo, fi: 2 * math.sqrt(2 / (fi + fo))),
    ("kaiming_normal", {}, lambda fo, fi: math.sqrt(2 / fi)),
    ("kaiming_uniform", {"mode": "fan_out"}, lambda fo, fi: math.sqrt(2 / fo)),
    ("uniform", {"a": 0.1}, lambda fo, fi: 0.1 / math.sqrt(3)),
    ("normal", {"std": 0.03}, lambda fo, fi: 0.03),
])
def test_schemes_give_their_standard_deviation(minilm, scheme, options, expected):
    rule = InitRule(select={"layers": 0, "roles": ["ffn_in", "attn_ln"]}, scheme=scheme, options=options)
    apply_init(minilm, InitSpec(rules=[rule]), seed=1)
    s = schema_of(minilm)
    w = s.view("layers.0.ffn_in.weight")  # (1536, 384)
    assert abs(w.std().item() / expected(*w.shape) - 1) < 0.05
    assert (s.view("layers.0.ffn_in.bias") == 0).all()
    assert (s.view("layers.0.attn_ln.weight") == 1).all() and (s.view("layers.0.attn_ln.bias") == 0).all()


def test_partial_schemes_touch_only_their_kind(minilm):
    before = {k: v.clone() for k, v in minilm.state_dict().items()}
    apply_init(minilm, InitSpec(rules=[InitRule(select={"layers": "all"}, scheme="zero_bias")]), seed=0)
    changed = _changed(before, minilm.state_dict())
    assert changed and all(k.endswith("bias") and ".layer." in k for k in changed)
    before = {k: v.clone() for k, v in minilm.state_dict().items()}
    apply_init(minilm, InitSpec(rules=[InitRule(select={"modules": ["embed_norm"], "layers": 1},
                                                scheme="layernorm")]), seed=0)
    changed = _changed(before, minilm.state_dict())
    assert changed and all("LayerNorm" in k for k in changed)
    before = {k: v.clone() for k, v in minilm.state_dict().items()}
    apply_init(minilm, InitSpec(rules=[InitRule(select={"layers": "all"}, scheme="pretrained")]), seed=0)
    assert not _changed(before, minilm.state_dict())


def test_heads_and_patterns_select_exactly(minilm):
    s = schema_of(minilm)
    q = s.view("layers.2.q.weight").clone()
    o = s.view("layers.2.o.weight").clone()
    ob = s.view("layers.2.o.bias").clone()
    before = {k: v.clone() for k, v in minilm.state_dict().items()}
    apply_init(minilm, InitSpec(rules=[InitRule(select={"layers": "2", "heads": [3]}, scheme="xavier_uniform")]), 0)
    d = s.head_dim  # 32
    rows = (s.view("layers.2.q.weight") != q).any(1).nonzero().flatten().tolist()
    cols = (s.view("layers.2.o.weight") != o).any(0).nonzero().flatten().tolist()
    assert rows == cols == list(range(3 * d, 4 * d))
    assert torch.equal(s.view("layers.2.o.bias"), ob)  # shared by all heads: kept
    assert all(".layer.2.attention." in k for k in _changed(before, minilm.state_dict()))

    before = {k: v.clone() for k, v in minilm.state_dict().items()}
    apply_init(minilm, InitSpec(rules=[InitRule(select={"patterns": ["layers.*.ffn_out.weight"]},
                                                scheme="normal")]), 0)
    assert _changed(before, minilm.state_dict()) == {f"model.encoder.layer.{i}.output.dense.weight" for i in range(6)}


def test_init_is_seeded(minilm, minilm_state):
    spec = InitSpec(rules=[InitRule(select={"layers": "0-1"}, scheme="xavier_uniform")])
    apply_init(minilm, spec, seed=4)
    first = {k: v.clone() for k, v in minilm.state_dict().items()}
    minilm.load_state_dict(minilm_state)
    apply_init(minilm, spec, seed=4)
    assert not _changed(first, minilm.state_dict())
    apply_init(minilm, spec, seed=5)
    assert _changed(first, minilm.state_dict())


def test_selection_errors_name_what_exists(minilm):
    def init(select, scheme="normal", options=None):
        apply_init(minilm, InitSpec(rules=[InitRule(select=select, scheme=scheme, options=options or {})]), 0)

    with pytest.raises(SpecError, match="layer 9 does not exist.*layers 0-5"):
        init({"layers": 9})
    with pytest.raises(SpecError, match="head 12 does not exist.*heads 0-11"):
        init({"layers": 0, "heads": [12]})
    with pytest.raises(SpecError, match="'nothing\\*' matches no parameter"):
        init({"patterns": ["nothing*"]})
    with pytest.raises(SpecError, match="unknown role 'query'.*q, k, v, o"):
        init({"roles": ["query"]})
    with pytest.raises(SpecError, match="selects nothing"):
        init({})
    with pytest.raises(SpecError, match="asks for 7 layers but .* has 6"):
        init({"layers": "top:7"})
    with pytest.raises(SpecError, match="unknown option for init scheme 'xavier_uniform'; allowed: std.*gain"):
        init({"layers": 0}, "xavier_uniform", {"std2": 1})
    with pytest.raises(SpecError, match="reinit_layers: 7 is not in 1..6"):
        apply_init(minilm, InitSpec(reinit_layers=7), 0)
    gpt2 = load_backbone(ModelSpec(name="tiny-gpt2"))
    with pytest.raises(SpecError, match="gpt2 has no pooler; it has embeddings, final_norm, positions"):
        apply_init(gpt2, InitSpec(rules=[InitRule(select={"modules": ["pooler"]}, scheme="normal")]), 0)


def test_spec_checks_init_names(tmp_path):
    base = {"model": {"name": "tiny-bert"}}
    with pytest.raises(SpecError, match="unknown init scheme 'xavier'; known: .*xavier_uniform"):
        load_spec({**base, "init": {"rules": [{"select": {"layers": "all"}, "scheme": "xavier"}]}})
    with pytest.raises(SpecError, match="unknown key 'layer'; known keys: layers, roles"):
        load_spec({**base, "init": {"rules": [{"select": {"layer": 1}, "scheme": "normal"}]}})
    with pytest.raises(SpecError, match="'last' is not a layer"):
        load_spec({**base, "init": {"rules": [{"select": {"layers": "last"}, "scheme": "normal"}]}})
    spec = load_spec({**base, "init": {"reinit_layers": 1, "rules": [{"select": {"layers": "top:1"},
                                                                       "scheme": "uniform", "options": {"a": 0.1}}]}})
    assert spec.init.rules[0].options == {"a": 0.1}
    assert {"pretrained", "normal", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
            "uniform", "zero_bias", "layernorm"} <= set(INIT_SCHEMES.names())
