"""Transplant across families by role and layer mapping, its report, sources and errors."""

import json

import pytest
import torch
import transformers as tf
from conftest import tiny_spec_dict

from transferlab.errors import ModelError, SpecError, UserError
from transferlab.models.artifacts import load_run_model
from transferlab.models.backbone import _tiny_config, load_backbone
from transferlab.models.schema import schema_of
from transferlab.recipes.transplant import apply_transplants, transplant
from transferlab.spec import ModelSpec, TransplantSpec, load_spec
from transferlab.store import Store
from transferlab.train.loop import run

SAME = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "hidden_act": "gelu",
        "layer_norm_eps": 1e-5}
W2V = {"conv_dim": (32, 32), "conv_stride": (5, 2), "conv_kernel": (10, 3), "num_conv_pos_embeddings": 16,
       "num_conv_pos_embedding_groups": 2, "vocab_size": 32}


def build(config, seed):
    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    return tf.AutoModel.from_config(config).eval()


def _inputs(hidden=32):
    torch.manual_seed(11)
    return torch.randn(2, 7, hidden), torch.tensor([[1] * 7, [1, 1, 1, 1, 1, 0, 0]])


def assert_layers_match(target, source, pairs):
    """On the same hidden states and mask, target layer t computes what source layer s computes."""
    x, mask = _inputs(schema_of(target).hidden_size)
    ts, ss = schema_of(target), schema_of(source)
    with torch.no_grad():
        for t, s in pairs:
            diff = (ts.call_layer(t, x, mask) - ss.call_layer(s, x, mask))[mask.bool()].abs().max().item()
            assert diff < 1e-5, (t, s, diff)


def test_wav2vec2_layers_into_bert():
    """Acceptance 2: post-LN wav2vec2 encoder layers in a BERT of the same width compute the same."""
    bert = build(tf.BertConfig(**SAME, num_hidden_layers=2, vocab_size=100), 0)
    w2v = build(tf.Wav2Vec2Config(**SAME, num_hidden_layers=3, **W2V), 1)
    report = transplant(bert, w2v, layers={0: 2, 1: 1}, source_name="w2v")
    assert_layers_match(bert, w2v, [(0, 2), (1, 1)])
    assert report["source_family"] == "wav2vec2" and report["target_family"] == "bert"
    assert report["function_changes"] is False and report["notes"] == []
    per_layer = sum(p.numel() for p in bert.encoder.layer[0].parameters())
    assert report["moved_values"] == 2 * per_layer
    assert report["moved_values"] + report["stayed_values"] == sum(p.numel() for p in bert.parameters())
    moved = {m["target"]: m for m in report["moved"]}
    assert moved["layers.0.q.weight"]["source"] == "layers.2.q.weight"
    entry = moved["layers.1.ffn_in.weight"]
    assert entry["norm_after"] == pytest.approx(entry["source_norm"]) and entry["norm_before"] != entry["norm_after"]


def test_a_default_eps_difference_is_reported():
    bert = build(tf.BertConfig(**{**SAME, "layer_norm_eps": 1e-12}, num_hidden_layers=1, vocab_size=100), 0)
    w2v = build(tf.Wav2Vec2Config(**SAME, num_hidden_layers=1, **W2V), 1)
    report = transplant(bert, w2v, layers=0)
    assert report["function_changes"] and "layer_norm_eps 1e-05 -> 1e-12" in report["notes"][0]


def test_roberta_into_bert():
    bert = build(_tiny_config("tiny-bert")[0], 0)
    roberta = build(_tiny_config("tiny-roberta")[0], 1)
    report = transplant(bert, roberta)  # layers: all
    assert_layers_match(bert, roberta, [(0, 0), (1, 1)])
    assert report["layers"] == [[0, 0], [1, 1]] and not report["function_changes"]


def test_gpt2_into_a_gpt2_of_another_depth():
    deep = build(tf.GPT2Config(n_embd=32, n_layer=3, n_head=2, n_inner=64, vocab_size=100), 0)
    shallow = build(tf.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_inner=64, vocab_size=100), 1)
    transplant(shallow, deep, layers="0-1<-1-2")
    assert_layers_match(shallow, deep, [(0, 1), (1, 2)])
    transplant(deep, shallow, layers={2: 0})
    assert_layers_match(deep, shallow, [(2, 0)])
    with pytest.raises(SpecError, match="'all' maps target layer i .* 3 layers and the source \\(gpt2\\) only 2"):
        transplant(deep, shallow)


def test_pre_ln_into_post_ln_is_allowed_and_reported():
    gpt2 = build(tf.GPT2Config(n_embd=32, n_layer=1, n_head=2, n_inner=64, vocab_size=100,
                               layer_norm_epsilon=1e-5), 0)
    bert = build(tf.BertConfig(**SAME, num_hidden_layers=1, vocab_size=100), 1)
    report = transplant(bert, gpt2, layers=0)
    assert report["function_changes"] is True
    assert report["source_norm_position"] == "pre" and report["target_norm_position"] == "post"
    notes = " ".join(report["notes"])
    assert "norm pre -> post" in notes and "function changes" in notes and "causal True -> False" in notes
    gs = schema_of(gpt2)
    assert torch.equal(schema_of(bert).view("layers.0.k.weight"), gs.view("layers.0.k.weight"))


def test_minilm_embeddings_and_encoder_reproduce_its_hidden_states():
    """Acceptance 3: MiniLM's embeddings and encoder in a random BERT of the same shape: same hidden states."""
    minilm = load_backbone(ModelSpec(name="minilm")).eval()
    fresh = load_backbone(ModelSpec(name="minilm", init="random"), seed=3).eval()
    text = ["The cat sat on the mat because it was warm.",
            "Stock markets fell sharply on Tuesday after the central bank raised interest rates."]
    batch = minilm.tokenizer(text, padding=True, return_tensors="pt")
    with torch.no_grad():
        want, mask = minilm(**batch)
        before, _ = fresh(**batch)
    assert not torch.allclose(before[-1], want[-1])
    report = transplant(fresh, minilm, layers="all", modules=["embeddings", "positions", "embed_norm"])
    with torch.no_grad():
        got, _ = fresh(**batch)
    for g, w in zip(got, want):
        assert torch.equal(g[mask.bool()], w[mask.bool()])
    pooler = sum(p.numel() for p in minilm.model.pooler.parameters())
    assert report["stayed_values"] == pooler  # everything but the pooler moved


def test_one_attention_head():
    a = build(_tiny_config("tiny-bert")[0], 0)
    b = build(_tiny_config("tiny-bert")[0], 1)
    sa, sb = schema_of(a), schema_of(b)
    q, ob = sa.view("layers.1.q.weight").clone(), sa.view("layers.1.o.bias").clone()
    report = transplant(a, b, layers=1, heads={0: 1})
    assert torch.equal(sa.view("layers.1.q.weight")[:16], sb.view("layers.1.q.weight")[16:])
    assert torch.equal(sa.view("layers.1.q.weight")[16:], q[16:])
    assert torch.equal(sa.view("layers.1.o.weight")[:, :16], sb.view("layers.1.o.weight")[:, 16:])
    assert torch.equal(sa.view("layers.1.o.bias"), ob)
    assert report["roles"] == ["q", "k", "v", "o"] and report["heads"] == [(0, 1)]
    assert report["moved_values"] == 3 * (16 * 32 + 16) + 32 * 16


def test_shape_mismatch_lists_them_or_fits_on_request():
    small = build(tf.BertConfig(**SAME, num_hidden_layers=1, vocab_size=100), 0)
    big = build(tf.BertConfig(**{**SAME, "intermediate_size": 128}, num_hidden_layers=1, vocab_size=100), 1)
    before = {k: v.clone() for k, v in small.state_dict().items()}
    with pytest.raises(ModelError, match="3 shapes do not match.*ffn_in.weight \\(64, 32\\) <- layers.0.ffn_in.weight "
                                         "\\(128, 32\\).*ffn_in.bias.*ffn_out.weight"):
        transplant(small, big, layers=0)
    assert all(torch.equal(v, small.state_dict()[k]) for k, v in before.items())  # nothing copied

    report = transplant(small, big, layers=0, on_mismatch="truncate")
    ss, sb = schema_of(small), schema_of(big)
    assert torch.equal(ss.view("layers.0.ffn_in.weight"), sb.view("layers.0.ffn_in.weight")[:64])
    assert {m["target"] for m in report["moved"] if m.get("resized")} == {
        "layers.0.ffn_in.weight", "layers.0.ffn_in.bias", "layers.0.ffn_out.weight"}

    report = transplant(big, small, layers=0, on_mismatch={"ffn_in": "tile", "ffn_out": "truncate"})
    assert torch.equal(sb.view("layers.0.ffn_in.weight"), torch.cat([ss.view("layers.0.ffn_in.weight")] * 2))
    out_before = before["encoder.layer.0.output.dense.weight"]
    assert not torch.equal(sb.view("layers.0.ffn_out.weight")[:, 64:], out_before)  # big's own values kept there
    assert torch.equal(sb.view("layers.0.ffn_out.weight")[:, :64], ss.view("layers.0.ffn_out.weight"))


def test_bad_mappings_name_what_exists():
    bert = build(_tiny_config("tiny-bert")[0], 0)
    w2v = build(tf.Wav2Vec2Config(**SAME, num_hidden_layers=2, **W2V), 1)
    with pytest.raises(SpecError, match="layer 5 does not exist; the target \\(bert\\) has layers 0-1"):
        transplant(bert, w2v, layers={5: 0})
    with pytest.raises(SpecError, match="layer 3 does not exist; the source \\(wav2vec2\\) has layers 0-1"):
        transplant(bert, w2v, layers="0<-3")
    with pytest.raises(SpecError, match="head 2 does not exist; the source \\(wav2vec2\\) has heads 0-1"):
        transplant(bert, w2v, layers=0, heads={0: 2})
    with pytest.raises(ModelError, match="no policy to move 'embeddings' from wav2vec2 into bert"):
        transplant(bert, w2v, layers=None, modules=["embeddings"])
    mpnet = tf.AutoModel.from_config(tf.MPNetConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                    intermediate_size=64, vocab_size=100))
    with pytest.raises(ModelError, match="no layer schema for model type 'mpnet'"):
        transplant(bert, mpnet)


def test_spec_steps_are_checked():
    with pytest.raises(SpecError, match="exactly one of source .* or run"):
        TransplantSpec()
    with pytest.raises(SpecError, match="'stretch' is not allowed; allowed: error, truncate, tile"):
        TransplantSpec(source="minilm", on_mismatch="stretch")
    with pytest.raises(SpecError, match="unknown role 'mlp'"):
        TransplantSpec(source="minilm", on_mismatch={"mlp": "tile"})
    with pytest.raises(SpecError, match="unknown module 'encoder'"):
        load_spec({"transplant": [{"source": "minilm", "modules": ["encoder"]}]})
    with pytest.raises(SpecError, match="'x' is not a layer"):
        load_spec({"transplant": [{"source": "minilm", "layers": "x<-1"}]})


def test_report_is_stored_with_the_run(tmp_path, toy_task_dir):
    spec = tiny_spec_dict(toy_task_dir, max_steps=2, num_evals=1, save_model=False)
    spec["transplant"] = [{"source": "tiny-roberta", "layers": "1"}]
    spec["init"] = {"rules": [{"select": {"layers": 0, "roles": ["ffn_in"]}, "scheme": "xavier_uniform"}]}
    store = Store(tmp_path / "s.db")
    result = run(load_spec(spec), store, progress=False)
    saved = json.loads((store.artifact_dir(result.uid) / "transfer.json").read_text())
    step = saved["transplant"][0]
    assert step["source"] == "tiny-roberta" and step["layers"] == [[1, 1]]
    assert {"norm_before", "norm_after", "source_norm", "values"} <= set(step["moved"][0])
    assert saved["init"]["rules"][0]["scheme"] == "xavier_uniform"
    brief = store.get(result.uid).summary["transfer"]
    assert brief["transplant"][0]["moved_values"] == step["moved_values"] > 0
    assert brief["init_values"] == 64 * 32 + 64


def test_from_a_stored_runs_checkpoint_and_bad_sources(tmp_path, toy_task_dir):
    store = Store(tmp_path / "s.db")
    first = run(load_spec(tiny_spec_dict(toy_task_dir, max_steps=2, num_evals=1)), store, progress=False)
    trained, _ = load_run_model(store, first.uid)
    target = load_backbone(ModelSpec(name="tiny-bert", init="random"), seed=9)
    (report,) = apply_transplants(target, [TransplantSpec(run=first.uid, layers="all")], store)
    assert report["source"] == f"run {first.uid}"
    for key in schema_of(target).keys("layers.*"):
        assert torch.equal(schema_of(target).view(key), schema_of(trained).view(key))

    with pytest.raises(UserError, match="no run 'nope'"):
        apply_transplants(target, [TransplantSpec(run="nope")], store)
    with pytest.raises(ModelError, match="transplant.store: .*missing.db does not exist"):
        apply_transplants(target, [TransplantSpec(run=first.uid, store=str(tmp_path / "missing.db"))], store)
    weights = store.artifact_dir(first.uid) / "model.safetensors"
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="cannot read checkpoint .*model.safetensors"):
        apply_transplants(target, [TransplantSpec(run=first.uid)], store)
    weights.unlink()
    with pytest.raises(ModelError, match="no weights at .*model.safetensors"):
        apply_transplants(target, [TransplantSpec(run=first.uid)], store)
    with pytest.raises(ModelError, match="folder .*/nowhere does not exist"):
        apply_transplants(target, [TransplantSpec(source=str(tmp_path / "nowhere"))])

    folder = tmp_path / "hf"
    load_backbone(ModelSpec(name="tiny-bert")).model.save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="cannot be loaded"):
        apply_transplants(target, [TransplantSpec(source=str(folder))])


def test_the_task_classifier_moves_between_runs_with_the_same_labels(tmp_path, toy_task_dir, capsys):
    """modules: [head] from a stored run: the classifier arrives (with layers: all, the whole model: intermediate-
    task transfer); a task with another label set is one line, exit 2."""
    import yaml

    from transferlab.cli import main
    from transferlab.data.build import build_task
    from transferlab.models.model import build_model

    store = Store(tmp_path / "s.db")
    first = run(load_spec(tiny_spec_dict(toy_task_dir, max_steps=3, num_evals=1)), store, progress=False)
    trained, _ = load_run_model(store, first.uid)
    second = load_spec({**tiny_spec_dict(toy_task_dir, max_steps=1), "seed": 7})
    model = build_model(second, build_task(second.task))
    assert not torch.equal(model.head.out.weight, trained.head.out.weight)
    (report,) = apply_transplants(model, [TransplantSpec(run=first.uid, modules=["head"])], store)
    assert "head" in report["modules"]
    for key, value in trained.state_dict().items():  # backbone (layers: all; embeddings stay) and head
        if key.startswith(("head.", "backbone.model.encoder.")):
            assert torch.equal(model.state_dict()[key], value), key
    (only,) = apply_transplants(build_model(second, build_task(second.task)),
                                [TransplantSpec(run=first.uid, modules=["head"], layers=None)], store)
    assert only["modules"] == ["head"] and only["layers"] == []

    three = tmp_path / "three"
    three.mkdir()
    for split in ("train", "dev"):
        (three / f"{split}.csv").write_text("text,label\n" + "".join(f"row {i},{i % 3}\n" for i in range(12)))
    spec = tiny_spec_dict(three, max_steps=1)
    spec["transplant"] = [{"run": first.uid, "modules": ["head"]}]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["run", str(path), "--store", str(tmp_path / "s.db"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "transplant.modules: head:" in err and "has num_labels 2, this task (csv) has 3" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(SpecError, match="head moves the task classifier of a stored run; give transplant.run"):
        TransplantSpec(source="tiny-bert", modules=["head"])


def test_a_width_mismatch_names_both_widths():
    wide = build(tf.BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                               vocab_size=100), 0)
    narrow = build(tf.BertConfig(**SAME, num_hidden_layers=1, vocab_size=100), 1)
    before = {k: v.clone() for k, v in narrow.state_dict().items()}
    with pytest.raises(ModelError) as err:
        transplant(narrow, wide, layers=0, source_name="wide-bert")
    line = str(err.value)
    assert "\n" not in line and "the source is 64 wide and the target 32 wide" in line and "wide-bert" in line
    assert all(torch.equal(v, narrow.state_dict()[k]) for k, v in before.items())  # nothing copied


def test_the_classifier_transplant_example_validates_and_runs(tmp_path, capsys):
    """examples/classifier_transplant*.yaml as shipped (tiny model, toy data, few steps by --set): the source
    run, the transplant's --dry-run, and a short run whose encoder and head start as the source's."""
    import json
    from pathlib import Path

    from conftest import write_sentiment_csv

    from transferlab.cli import main

    examples = Path(__file__).resolve().parents[1] / "examples"
    source_data = write_sentiment_csv(tmp_path / "books", n_train=64, n_dev=32, seed=0)
    target_data = write_sentiment_csv(tmp_path / "films", n_train=64, n_dev=32, seed=1)
    store = str(tmp_path / "s.db")
    fast = ["--set", "model.name=tiny-bert", "--set", "model.max_length=16", "--set", "train.max_steps=3",
            "--set", "train.num_evals=1", "--store", store, "--quiet"]
    assert main(["run", str(examples / "classifier_transplant_source.yaml"), "--set", f"task.path={source_data}",
                 *fast]) == 0
    target = ["run", str(examples / "classifier_transplant.yaml"), "--set", f"task.path={target_data}",
              "--set", "task.few_sample=16", *fast]
    capsys.readouterr()
    assert main([*target, "--dry-run"]) == 0
    assert "reviews-source" in capsys.readouterr().out
    assert main(target) == 0
    rows = {r.name: r for r in Store(store).runs()}
    assert set(rows) == {"reviews-source", "reviews-transplant"}
    moved = json.loads((Store(store).artifact_dir(rows["reviews-transplant"].uid) / "transfer.json").read_text())
    (report,) = moved["transplant"]
    assert "head" in report["modules"] and report["layers"]  # the classifier and every encoder layer arrived
    assert rows["reviews-transplant"].summary.transfer["transplant"]  # the run's summary says what moved
    # a target whose labels differ from the source's is refused before the run, in one line
    three = tmp_path / "three"
    three.mkdir()
    for split in ("train", "dev"):
        (three / f"{split}.csv").write_text("text,label\n" + "".join(f"row {i},{i % 3}\n" for i in range(12)))
    capsys.readouterr()
    assert main(["run", str(examples / "classifier_transplant.yaml"), "--set", f"task.path={three}",
                 "--set", "task.few_sample=null", *fast]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "transplant.modules: head" in err[0]
