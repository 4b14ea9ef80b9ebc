"""Input adapters, positions, the LSTM baseline, the depth axis, per-token outputs and FPT freezing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferlab.data import build_task
from transferlab.data.metrics import baseline, compute
from transferlab.errors import SpecError
from transferlab.models.adapters import (
    TokenAdapter,
    VectorAdapter,
    embedding_norm,
    feed_embeds,
    position_limit,
)
from transferlab.models.backbone import load_backbone
from transferlab.models.model import build_model
from transferlab.models.token_heads import LastHead, last_tokens
from transferlab.recipes.freeze import build_freezer
from transferlab.spec import ModelSpec, load_spec
from transferlab.train.batches import collate, encode
from transferlab.train.steps import count_parameters, loss_fn


def spec(**parts):
    base = {"model": {"name": "tiny-bert"}, "task": {"name": "digits", "options": {"patch_size": 4}},
            "head": {"name": "mean"}}
    return load_spec({**base, **parts})


def model_and_task(**parts):
    s = spec(**parts)
    t = build_task(s.task)
    return build_model(s, t), t


def batch(model, task, n=4, split="train"):
    enc = encode(task.splits[split], task, model.backbone.tokenizer, 64)
    b = collate(enc, np.arange(n), False)
    return b, b.pop("labels")


# ---------------------------------------------------------------- adapters


@pytest.mark.parametrize("gain", [1.0, 1.41])
def test_vector_adapter_is_orthogonal_with_gain(gain):
    torch.manual_seed(0)
    a = VectorAdapter(16, 32, gain)
    w = a.proj.weight.detach()  # (32, 16): orthonormal columns times gain
    assert torch.allclose(w.T @ w, gain**2 * torch.eye(16), atol=1e-5) and not a.proj.bias.any()


def test_input_gain_and_std_come_from_the_spec():
    model, _ = model_and_task(input_adapter={"gain": 1.41})
    w = model.input_adapter.proj.weight.detach()
    assert torch.allclose(w.T @ w, 1.41**2 * torch.eye(16), atol=1e-5)
    tok, _ = model_and_task(task={"name": "listops", "options": {"num_train": 20, "num_dev": 10, "num_test": 10,
                                                                  "balance": False}},
                            input_adapter={"std": 0.5})
    assert isinstance(tok.input_adapter, TokenAdapter) and 0.4 < tok.input_adapter.embed.weight.std() < 0.6


def test_match_norm_gives_the_backbones_token_embedding_norm():
    model, task = model_and_task(input_adapter={"match_norm": True, "gain": 3.0})
    x = torch.as_tensor(task.splits["train"].inputs[:512])
    with torch.no_grad():
        got = model.input_adapter(x).norm(dim=-1).mean()
    assert got == pytest.approx(embedding_norm(model.backbone), rel=1e-4)
    with pytest.raises(SpecError, match="match_norm: vit has no token-embedding table"):
        model_and_task(model={"name": "tiny-vit"}, input_adapter={"match_norm": True})


def test_new_positions_are_sized_by_the_user_and_stay_positions():
    model, task = model_and_task(input_adapter={"positions": "new", "max_positions": 40})
    table = model.backbone.model.embeddings.position_embeddings
    assert table.weight.shape == (40, 32) and position_limit(model.backbone) == 40
    assert model.backbone.config.max_position_embeddings == 40
    b, _ = batch(model, task)
    assert model(**b).shape == (4, 10)
    freezer = build_freezer(load_spec({"freeze": {"name": "fpt", "options": {"freeze_positions": True}}}).freeze,
                            model)
    freezer.apply(0)
    assert not table.weight.requires_grad  # the new table is the positions FPT's flags talk about
    with pytest.raises(SpecError, match="max_positions: sizes a new table"):
        model_and_task(input_adapter={"max_positions": 40})


def test_new_positions_for_gpt2_and_roberta_offsets():
    gpt, task = model_and_task(model={"name": "tiny-gpt2"}, input_adapter={"positions": "new"})
    assert gpt.backbone.model.wpe.weight.shape == (4, 32)  # the task's 4 patches
    rob, _ = model_and_task(model={"name": "tiny-roberta"}, input_adapter={"positions": "new"})
    assert rob.backbone.model.embeddings.position_embeddings.weight.shape == (5, 32)  # padding_idx 0, + 1, + 4
    for m in (gpt, rob):
        b, _ = batch(m, task)
        assert torch.isfinite(m(**b)).all()


def test_vit_is_fed_through_its_layers():
    model, task = model_and_task(model={"name": "tiny-vit"})
    assert position_limit(model.backbone) == 64  # 65 rows, CLS first
    b, labels = batch(model, task)
    hidden, mask = feed_embeds(model.backbone, model.input_adapter(b["inputs"]), b["attention_mask"])
    assert len(hidden) == 3 and hidden[-1].shape == (4, 4, 32) and mask.shape == (4, 4)
    loss_fn(model(**b), labels, False).backward()
    assert model.input_adapter.proj.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- padded token inputs


def test_padded_token_batches_are_cropped_and_masked():
    model, task = model_and_task(task={"name": "listops", "options": {"num_train": 40, "num_dev": 10,
                                                                      "num_test": 10, "balance": False}})
    enc = encode(task.splits["train"], task, None, 0)
    assert enc.padded_inputs and (enc.lengths == (task.splits["train"].inputs != 0).sum(1)).all()
    index = np.argsort(enc.lengths)[:3]
    b = collate(enc, index, False)
    assert b["inputs"].shape[1] == enc.lengths[index].max()
    assert (b["attention_mask"].sum(1).numpy() == enc.lengths[index]).all()
    model.eval()
    with torch.no_grad():  # padding never changes a prediction
        alone = model(inputs=b["inputs"][:1, : enc.lengths[index[0]]])
        padded = model(inputs=b["inputs"][:1], attention_mask=b["attention_mask"][:1])
    assert torch.allclose(alone, padded, atol=1e-5)


# ---------------------------------------------------------------- per-token outputs (bits)


def test_last_tokens_and_per_token_head():
    x = torch.arange(2 * 5, dtype=torch.float).reshape(2, 5, 1)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert last_tokens(x, mask, 2)[..., 0].tolist() == [[3.0, 4.0], [6.0, 7.0]]
    head = LastHead(8, 2, 2, 0.0, tokens=3, outputs_per_token=4)
    out = head((torch.randn(2, 6, 8),), torch.ones(2, 6))
    assert out.shape == (2, 12, 2)
    with pytest.raises(SpecError, match="only per-token tasks"):
        LastHead(8, 2, 2, 0.0, tokens=3)


def test_bit_memory_model_predicts_every_bit():
    bits = {"name": "bit_memory", "options": {"num_train": 64, "num_dev": 32, "num_test": 32}}
    model, task = model_and_task(task=bits, head={"name": "last"})
    b, labels = batch(model, task)
    logits = model(**b)
    assert logits.shape == (4, 64, 2) and labels.shape == (4, 64)
    assert loss_fn(logits, labels, False).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits.reshape(-1, 2), labels.reshape(-1)).item())
    with pytest.raises(SpecError, match="head.name: task bit_memory predicts every bit .* use head.name: last"):
        model_and_task(task=bits, head={"name": "mean"})


def test_per_token_metric_and_baseline_count_every_bit():
    labels = np.array([[1, 0, 1, 1], [0, 0, 1, 1]])
    preds = np.array([[1, 1, 1, 1], [0, 0, 0, 1]])
    assert compute(["accuracy"], preds, labels)["accuracy"] == 0.75  # 6 of 8 bits
    task = build_task(load_spec({"task": {"name": "bit_xor", "options": {"num_train": 200}}}).task)
    assert 0.45 < baseline(task, "dev")["accuracy"] < 0.55


def test_bit_xor_learns_end_to_end(tmp_path, one_thread):
    from transferlab.store import Store
    from transferlab.train.loop import run

    s = load_spec({"name": "xor", "model": {"name": "tiny-gpt2", "dropout": 0.0}, "head": {"name": "last", "dropout": 0.0},
                   "task": {"name": "bit_xor", "options": {"num_train": 2000, "num_dev": 300, "num_test": 300}},
                   "optim": {"lr": 3e-3, "weight_decay": 0.0}, "schedule": {"name": "constant", "warmup_steps": 10},
                   "train": {"max_steps": 200, "batch_size": 64, "num_evals": 2, "save_model": False}})
    result = run(s, Store(tmp_path / "s.db"), progress=False)
    assert result.status == "finished" and result.dev["accuracy"] > 0.7  # chance: 0.5 per bit


# ---------------------------------------------------------------- LSTM baseline


def test_lstm_backbone_interface():
    model, task = model_and_task(model={"name": "lstm", "init": "random", "num_layers": 2})
    assert model.backbone.family == "lstm" and model.backbone.num_layers == 2 and model.backbone.hidden_size == 384
    b, labels = batch(model, task)
    hidden, _ = model.backbone(inputs_embeds=model.input_adapter(b["inputs"]))
    assert len(hidden) == 3 and hidden[-1].shape == (4, 4, 384)
    loss_fn(model(**b), labels, False).backward()
    unused = "backbone.model.embeddings.weight"  # the token table, for text inputs only
    assert all(p.grad is not None for n, p in model.named_parameters() if n != unused)
    text = load_backbone(ModelSpec(name="lstm-64", init="random"))
    ids = text.tokenizer(["a short text"], return_tensors="pt")["input_ids"]
    assert text(ids)[0][-1].shape == (1, ids.shape[1], 64)
    with pytest.raises(SpecError, match="model.init: lstm has no pretrained weights; set model.init: random"):
        load_backbone(ModelSpec(name="lstm"))


def test_lstm_shares_input_and_output_layers_with_minilm():
    lstm, _ = model_and_task(model={"name": "lstm", "init": "random"}, head={"name": "last"})
    mini, _ = model_and_task(model={"name": "minilm"}, head={"name": "last"})
    def shapes(m):
        return {k: v.shape for k, v in m.named_parameters() if k.startswith(("head.", "input_adapter."))}

    assert shapes(lstm) == shapes(mini)


def test_lstm_is_seeded_by_the_run_seed():
    a = load_backbone(ModelSpec(name="lstm-32", init="random"), seed=1)
    b = load_backbone(ModelSpec(name="lstm-32", init="random"), seed=1)
    c = load_backbone(ModelSpec(name="lstm-32", init="random"), seed=2)
    pa, pb, pc = (dict(m.named_parameters())["model.layers.0.weight_hh_l0"] for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


# ---------------------------------------------------------------- depth axis


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-gpt2", "tiny-vit"])
def test_keep_first_layers(name):
    full = load_backbone(ModelSpec(name=name))
    cut = load_backbone(ModelSpec(name=name, num_layers=1))
    assert cut.num_layers == 1 and cut.config.num_hidden_layers == 1
    kept = {k: v for k, v in cut.state_dict().items()}
    assert all(torch.equal(v, full.state_dict()[k]) for k, v in kept.items())  # the same first layer
    assert len(kept) < len(full.state_dict())
    with pytest.raises(SpecError, match=r"model.num_layers: 3 must be an integer in 1..2"):
        load_backbone(ModelSpec(name=name, num_layers=3))


def test_depth_in_a_model_with_an_adapter():
    model, task = model_and_task(model={"name": "tiny-bert", "num_layers": 1}, head={"name": "last"})
    b, _ = batch(model, task)
    hidden, _ = model.backbone(inputs_embeds=model.input_adapter(b["inputs"]))
    assert len(hidden) == 2 and model(**b).shape == (4, 10)


# ---------------------------------------------------------------- FPT with an input adapter


def test_fpt_freezes_the_bypassed_token_tables():
    model, _ = model_and_task(freeze={"name": "fpt"})
    freezer = build_freezer(load_spec({"freeze": {"name": "fpt"}}).freeze, model)
    freezer.apply(0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "backbone.model.embeddings.word_embeddings.weight" not in trainable  # never read with an adapter
    assert "backbone.model.embeddings.position_embeddings.weight" in trainable
    assert {"input_adapter.proj.weight", "head.out.weight"} <= trainable
    assert not any((".attention." in n or ".intermediate." in n) and "LayerNorm" not in n for n in trainable)
    assert any("LayerNorm" in n for n in trainable)
    total, n_trainable = count_parameters(model)
    assert n_trainable < 0.2 * total


def test_a_stored_per_token_run_with_new_positions_restores(tmp_path, one_thread):
    from transferlab.models.artifacts import load_run_model
    from transferlab.store import Store
    from transferlab.train.loop import run

    s = load_spec({"name": "bits", "model": {"name": "tiny-bert"}, "head": {"name": "last"},
                   "task": {"name": "bit_memory", "options": {"num_train": 64, "num_dev": 16, "num_test": 16,
                                                              "length": 16, "patch_size": 8}},
                   "input_adapter": {"positions": "new"}, "freeze": {"name": "fpt"},
                   "train": {"max_steps": 3, "batch_size": 16, "num_evals": 1}})
    store = Store(tmp_path / "s.db")
    result = run(s, store, progress=False)
    model, task = load_run_model(store, result.uid)
    assert task.extra["output_tokens"] == 2 and model.backbone.model.embeddings.position_embeddings.num_embeddings == 12
    fresh = build_task(s.task)
    x = torch.as_tensor(fresh.splits["test"].inputs[:4])
    with torch.no_grad():
        assert model(inputs=x).shape == (4, 16, 2)


def test_cli_prints_the_trainable_share(tmp_path, capsys, one_thread):
    import yaml

    from transferlab.cli import main

    spec = {"model": {"name": "tiny-bert"}, "head": {"name": "last"}, "freeze": {"name": "fpt"},
            "task": {"name": "bit_xor", "options": {"num_train": 64, "num_dev": 16, "num_test": 16}},
            "train": {"max_steps": 2, "batch_size": 16, "num_evals": 1, "save_model": False}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    assert main(["run", str(tmp_path / "s.yaml"), "--store", str(tmp_path / "s.db"), "--quiet"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "trainable:" in x)
    n, total = (int(v.replace(",", "")) for v in line.split()[1:4:2])
    assert 0 < n < 0.05 * total and line.endswith(f"({n / total:.2%})")


def test_exporting_an_lstm_run_is_a_clear_error(tmp_path):
    from transferlab.errors import ModelError
    from transferlab.models.export import export_model

    model, task = model_and_task(model={"name": "lstm-64", "init": "random"}, head={"name": "last"})
    with pytest.raises(ModelError, match="LSTM baseline.*not a Hugging Face model"):
        export_model(model, task, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_wav2vec2_is_a_backbone_for_vector_tasks(tmp_path, one_thread):
    """The adapter's output enters wav2vec2's encoder (positional convolution, norm, layers) in place of
    its feature encoder; no position table to check, padding changes no prediction, a run trains."""
    from transferlab.store import Store
    from transferlab.train.loop import run

    model, task = model_and_task(model={"name": "tiny-wav2vec2"})
    assert position_limit(model.backbone) is None  # convolutional positions: no table, no limit
    b, labels = batch(model, task)
    hidden, _mask = feed_embeds(model.backbone, model.input_adapter(b["inputs"]), b["attention_mask"])
    assert len(hidden) == 3 and hidden[-1].shape[-1] == 32
    loss_fn(model(**b), labels, False).backward()
    assert model.input_adapter.proj.weight.grad.abs().sum() > 0
    assert model.backbone.model.encoder.layers[0].attention.q_proj.weight.grad.abs().sum() > 0
    s = spec(model={"name": "tiny-wav2vec2"}, train={"max_steps": 2, "batch_size": 8, "num_evals": 1,
                                                   "save_model": False})
    s.task.max_train_samples, s.task.max_eval_samples = 32, 16
    result = run(s, Store(tmp_path / "s.db"), progress=False)
    assert result.status == "finished" and result.steps == 2


def test_max_length_is_checked_for_text_only(tmp_path):
    """model.max_length bounds tokenised text; a vector task never tokenises, so 600 > 512 is no error there."""
    from conftest import write_sentiment_csv

    model, _ = model_and_task(model={"name": "tiny-roberta", "max_length": 600})
    assert position_limit(model.backbone) == 512
    s = load_spec({"model": {"name": "tiny-roberta", "max_length": 600},
                   "task": {"name": "csv", "path": str(write_sentiment_csv(tmp_path / "toy", 8, 4))}})
    with pytest.raises(SpecError, match=r"model\.max_length: 600 exceeds the 512"):
        build_model(s, build_task(s.task))


def test_the_input_layer_of_masked_input_pretraining_is_reused(tmp_path, one_thread):
    from transferlab.pretrain import pretrain
    from transferlab.pretrain.spec import load_pretrain_spec

    out = tmp_path / "digits-src"
    pretrain(load_pretrain_spec({
        "name": "digits-mim", "objective": "masked_inputs",
        "corpus": {"task": {"name": "digits", "options": {"patch_size": 4}}},
        "architecture": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64},
        "train": {"batch_size": 32, "num_evals": 1, "max_steps": 3}, "optim": {"lr": 2e-3}, "out": str(out)}),
        progress=False)
    from safetensors.torch import load_file

    saved = load_file(str(out / "masked_inputs.safetensors"))
    model, _ = model_and_task(model={"name": str(out)}, input_adapter={"from": str(out)})
    assert torch.equal(model.input_adapter.proj.weight, saved["input_adapter.proj.weight"])
    assert torch.equal(model.input_adapter.proj.bias, saved["input_adapter.proj.bias"])
    fresh, _ = model_and_task(model={"name": str(out)})
    assert not torch.equal(fresh.input_adapter.proj.weight, saved["input_adapter.proj.weight"])
    with pytest.raises(SpecError, match="input_adapter.from: .*nowhere/masked_inputs.safetensors does not exist"):
        model_and_task(input_adapter={"from": str(tmp_path / "nowhere")})
    with pytest.raises(SpecError, match=r"input_adapter.from: proj.weight is \(32, 16\) .* need \(32, 4\)"):
        model_and_task(model={"name": str(out)}, input_adapter={"from": str(out)},
                       task={"name": "digits", "options": {"patch_size": 2}})
    with pytest.raises(SpecError, match="input_adapter.from: .*has embed.weight"):  # a tokens task, a vectors layer
        model_and_task(model={"name": str(out)}, input_adapter={"from": str(out)},
                       task={"name": "listops", "options": {"num_train": 20, "num_dev": 5, "num_test": 5}})
