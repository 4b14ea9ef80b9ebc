"""Every common encoder family under every schema strategy (issue 16, acceptance 1).

Each family's tiny random config (its FamilyMap's ``tiny_config``: hidden 32, 2 layers, 2 heads,
MiniLM's vocabulary) is built in-process and saved as a folder with MiniLM's tokenizer; the folder is
the run's ``model.name``, as a downloaded checkpoint would be. On each: re-init of the top layer,
FPT, LoRA, layer-wise LR decay (group LRs checked), transplant of layer 0 from a same-width model of
another family (function equality where both layers compute BERT's function), surgery, and two
training steps with every head (every head on two families and every family on two heads in the
default suite; the full product under ``-m slow``).
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as tf
from conftest import tiny_spec_dict, write_sentiment_csv

from transferlab.errors import ModelError
from transferlab.models.backbone import model_from_config
from transferlab.models.common import minilm_path
from transferlab.models.heads import HEADS
from transferlab.models.model import build_model
from transferlab.models.schema import SCHEMAS, schema_of
from transferlab.recipes.freeze import build_freezer
from transferlab.recipes.init import apply_init
from transferlab.recipes.param_groups import build_param_groups
from transferlab.recipes.transplant import transplant
from transferlab.spec import FreezeSpec, InitSpec, OptimSpec, load_spec
from transferlab.store import Store
from transferlab.surgery import apply_surgery, parse_surgery
from transferlab.train.loop import run

pytestmark = pytest.mark.usefixtures("one_thread")

# label -> model_type; every family the issue names
FAMILIES = {"bert": "bert", "roberta": "roberta", "electra": "electra", "deberta-v2": "deberta-v2",
            "distilbert": "distilbert", "albert": "albert", "xlm-roberta": "xlm-roberta", "modernbert": "modernbert",
            "t5": "t5", "gpt2": "gpt2"}
# families whose layer computes BERT's post-LN function (same activation and eps in the tiny configs)
BERT_LIKE = ("bert", "roberta", "electra", "distilbert", "albert", "xlm-roberta")
# the family each one takes layer 0 from (the next one in the list)
SOURCE = dict(zip(FAMILIES, list(FAMILIES)[1:] + list(FAMILIES)[:1]))
HEAD_NAMES = [h for h in HEADS.names() if h != "last"] + ["last"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One saved folder per family: config, random weights (seed 0), MiniLM's tokenizer."""
    root = tmp_path_factory.mktemp("families")
    tokenizer = tf.AutoTokenizer.from_pretrained(minilm_path())
    out = {}
    for label, model_type in FAMILIES.items():
        config = SCHEMAS.get(model_type).tiny_config(model_type)
        torch.manual_seed(0)
        model = model_from_config(config)
        model.save_pretrained(root / label)
        tokenizer.save_pretrained(root / label)
        out[label] = str(root / label)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_sentiment_csv(tmp_path_factory.mktemp("toy") / "toy", n_train=24, n_dev=8)


def model_of(folder: str, data, head: str = "cls", **spec):
    from transferlab.data.build import build_task

    d = tiny_spec_dict(data, max_steps=2, num_evals=1, save_model=False, batch_size=8)
    d["model"]["name"] = folder
    d["head"] = {"name": head}
    d.update(spec)
    s = load_spec(d)
    return build_model(s, build_task(s.task, seed=0)), s


def batch(model):
    tok = model.backbone.tokenizer(["the movie was great", "a dull plot and weak actor"], padding=True,
                                   return_tensors="pt")
    return {k: v for k, v in tok.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def layer_tensors(schema, layer: int) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in schema.read().items() if k.startswith(f"layers.{layer}.")}


@pytest.mark.parametrize("label", FAMILIES)
def test_reinit_top_layer(label, folders, data):
    model, _ = model_of(folders[label], data)
    s = schema_of(model)
    top, low = layer_tensors(s, 1), layer_tensors(s, 0)
    report = apply_init(model, InitSpec(reinit_layers=1), seed=3)
    after_top, after_low = layer_tensors(s, 1), layer_tensors(s, 0)
    assert report["values"] > 0
    assert all(not torch.equal(top[k], after_top[k]) for k in top if after_top[k].std() > 0)  # weights redrawn
    for k in after_top:  # LayerNorms to (1, 0), biases to 0
        if s.kind(k) == "norm_weight":
            assert torch.all(after_top[k] == 1), k
        elif s.kind(k) in ("bias", "norm_bias"):
            assert torch.all(after_top[k] == 0), k
    if label == "albert":  # one shared layer: layer 0 is the same tensors, so it changed too, and the report says so
        assert all(torch.equal(after_low[k], after_top[k.replace("layers.0.", "layers.1.")]) for k in after_low)
        assert "share weights" in report["shared"]
    else:
        assert all(torch.equal(low[k], after_low[k]) for k in low)
        assert "shared" not in report


@pytest.mark.parametrize("label", FAMILIES)
def test_fpt_trains_norms_positions_and_head_only(label, folders, data):
    model, _ = model_of(folders[label], data)
    freezer = build_freezer(FreezeSpec(name="fpt"), model)
    freezer.on_train_start(model, None, 2)
    s = schema_of(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for hf, (_, role) in s.roles.items():
        name = s.prefix + hf
        if name not in dict(model.named_parameters()):
            continue  # a buffer or a tied copy
        if role in ("attn_ln", "ffn_ln", "embed_norm", "final_norm", "positions", "rel_bias"):
            assert name in trainable, name
        elif role in ("q", "k", "v", "o", "ffn_in", "ffn_out", "ffn_gate", "pooler"):
            assert name not in trainable, name
    assert all(n in trainable for n, _ in model.named_parameters() if n.startswith("head."))


@pytest.mark.parametrize("label", FAMILIES)
def test_lora_adapts_q_and_v_and_merges(label, folders, data):
    model, _ = model_of(folders[label], data)
    model.eval()
    freezer = build_freezer(FreezeSpec(name="lora", options={"r": 2}), model)
    freezer.on_train_start(model, None, 2)
    lora = [n for n, p in model.named_parameters() if ".lora_" in n]
    assert lora and all(p.requires_grad == (".lora_" in n or n.startswith("head."))
                        for n, p in model.named_parameters())
    with torch.no_grad():  # B starts at 0: make the adapters do something, then merge
        for n, p in model.named_parameters():
            if ".lora_B" in n:
                p.normal_(std=0.1)
        want = model(**batch(model))
    freezer.on_finish(model)
    assert not any(".lora_" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        got = model(**batch(model))
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("label", FAMILIES)
def test_layer_decay_group_lrs(label, folders, data):
    model, _ = model_of(folders[label], data)
    spec = OptimSpec(lr=1.0, layer_decay=0.5, head_lr=2.0)
    groups = build_param_groups(model, spec)
    lr = {n: g["lr"] for g in groups for n in g["param_names"]}
    s = schema_of(model)
    top = 0.5  # lr * decay ** (L + 1 - L)
    for hf, (layer, role) in s.roles.items():
        name = s.prefix + hf
        if name not in lr:
            continue
        if role in ("final_norm", "pooler"):
            assert lr[name] == top, name  # ModernBERT's, T5's, GPT-2's final norm: the top layer's rate
        elif layer is not None:
            assert lr[name] == 0.5 ** (2 - layer), name  # ALBERT's shared layer: the top layer that uses it
        else:
            assert lr[name] == 0.5 ** 3, name  # embeddings and positions: the lowest
    assert all(v == 2.0 for n, v in lr.items() if n.startswith("head."))
    if label == "albert":
        assert lr[s.prefix + s.slots["layers.0.q.weight"][0]] == top
    if label in ("modernbert", "t5"):
        assert any(lr[s.prefix + s.slots[k][0]] == top for k in s.keys("final_norm:*"))


@pytest.mark.parametrize("label", FAMILIES)
def test_transplant_layer_zero_from_another_family(label, folders, data):
    target, _ = model_of(folders[label], data)
    other = SOURCE[label]
    source, _ = model_of(folders[other], data)
    with torch.no_grad():  # a source unlike the target's own random draw
        for p in source.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ts, ss = schema_of(target), schema_of(source)
    report = transplant(target, source, layers=0, source_name=other)
    moved = {m["target"] for m in report["moved"] if "(none" not in m["source"]}
    for key in moved:
        assert torch.equal(ts.view(key), ss.view(key)), key
    assert {"layers.0.q.weight", "layers.0.ffn_out.weight"} <= moved
    if label in BERT_LIKE and other in BERT_LIKE:
        assert report["function_changes"] is False, report["notes"]
        torch.manual_seed(11)
        x, mask = torch.randn(2, 5, 32), torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])
        with torch.no_grad():
            diff = (ts.call_layer(0, x, mask) - ss.call_layer(0, x, mask))[mask.bool()].abs().max()
        assert diff < 1e-5
    else:
        assert report["function_changes"] is True and report["notes"]


def test_transplant_into_a_shared_albert_layer_is_one_source(folders, data):
    albert, _ = model_of(folders["albert"], data)
    bert, _ = model_of(folders["bert"], data)
    report = transplant(albert, bert, layers={1: 0})
    assert "layers 0-1" in " ".join(report["notes"])  # both layers now hold BERT's layer 0
    s = schema_of(albert)
    assert torch.equal(s.view("layers.0.q.weight"), schema_of(bert).view("layers.0.q.weight"))
    with pytest.raises(ModelError, match="albert layers \\[0, 1\\] share one set of weights"):
        transplant(albert, bert, layers="all")


@pytest.mark.parametrize("label", FAMILIES)
def test_surgery_init_then_put_back(label, folders, data):
    model, _ = model_of(folders[label], data)
    model.eval()
    original = copy.deepcopy(model)
    with torch.no_grad():
        want = model(**batch(model))
    apply_surgery(model, original, parse_surgery("init layers=0 roles=q,v scheme=xavier_uniform"), seed=1)
    with torch.no_grad():
        changed = model(**batch(model))
    assert not torch.allclose(changed, want)
    apply_surgery(model, original, parse_surgery("transplant source=self layers=0"))
    with torch.no_grad():
        back = model(**batch(model))
    assert torch.allclose(back, want, atol=1e-6)


def _train(label, head, folders, data, tmp_path):
    d = tiny_spec_dict(data, max_steps=2, num_evals=1, save_model=False, batch_size=8)
    d["model"]["name"] = folders[label]
    d["head"] = {"name": head}
    result = run(load_spec(d), Store(tmp_path / "s.db"), progress=False)
    assert result.status == "finished" and result.steps == 2
    assert 0.0 <= result.dev["accuracy"] <= 1.0


DEFAULT_PAIRS = sorted({(f, h) for f in ("bert", "t5") for h in HEAD_NAMES}
                       | {(f, h) for f in FAMILIES for h in ("cls", "pooler")})


@pytest.mark.parametrize("label,head", DEFAULT_PAIRS)
def test_two_training_steps(label, head, folders, data, tmp_path):
    _train(label, head, folders, data, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("label,head", [(f, h) for f in FAMILIES for h in HEAD_NAMES
                                        if (f, h) not in DEFAULT_PAIRS])
def test_two_training_steps_every_head_every_family(label, head, folders, data, tmp_path):
    _train(label, head, folders, data, tmp_path)


def test_pooler_head_uses_albert_pretrained_pooler(folders, data):
    model, _ = model_of(folders["albert"], data, head="pooler")
    assert model.head.from_pretrained
    assert torch.equal(model.head.dense.weight, model.backbone.model.pooler.weight)
    apply_init(model, InitSpec(reinit_layers=1), seed=5)  # re-init touches the pooler: the head's copy follows
    assert torch.equal(model.head.dense.weight, model.backbone.model.pooler.weight)


def test_t5_loads_the_encoder_only(folders, data):
    model, _ = model_of(folders["t5"], data)
    assert type(model.backbone.model).__name__ == "T5EncoderModel"
    hidden, _mask = model.backbone(**batch(model))
    assert len(hidden) == 3 and hidden[-1].shape[-1] == 32


@pytest.mark.parametrize("strategy", [{"init": {"reinit_layers": 1}}, {"freeze": {"name": "fpt"}},
                                      {"freeze": {"name": "lora"}},
                                      {"transplant": [{"source": "tiny-bert", "layers": 0}]}])
def test_a_family_without_a_map_is_one_line_exit_2(strategy, tmp_path, data, capsys):
    import yaml

    from transferlab.cli import main

    config = tf.MPNetConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            vocab_size=30527, pad_token_id=0)
    folder = tmp_path / "mpnet"
    model_from_config(config).save_pretrained(folder)
    tf.AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    spec = tiny_spec_dict(data, max_steps=1, save_model=False)
    spec["model"]["name"] = str(folder)
    spec.update(strategy)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    capsys.readouterr()  # the folder writer's progress bar
    assert main(["run", str(path), "--store", str(tmp_path / "s.db"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "no layer schema for model type 'mpnet'; supported model types:" in err
    assert all(t in err for t in ("albert", "deberta-v2", "distilbert", "modernbert", "t5", "xlm-roberta"))


def test_albert_depth_runs_the_shared_layer_k_times(folders, data):
    from transferlab.models.depth import keep_layers

    model, _ = model_of(folders["albert"], data, model={"name": folders["albert"], "max_length": 32, "num_layers": 1})
    hidden, _ = model.backbone(**batch(model))
    assert model.num_layers == 1 and len(hidden) == 2
    with pytest.raises(ModelError, match="albert layers share their weights, so they cannot be cut or reordered"):
        keep_layers(model.backbone.model, [1, 0])
