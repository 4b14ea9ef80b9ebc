"""Pretraining (transferlab pretrain): MLM on text, masked modelling of patches and symbols, the folders."""

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import SHARED_DATA, needs_shared_data, write_sentiment_csv
from safetensors import safe_open

from transferlab.cli import main
from transferlab.data.task import Split, Task
from transferlab.errors import SpecError
from transferlab.models.backbone import load_backbone
from transferlab.models.common import minilm_path
from transferlab.pretrain import load_pretrain_spec, pretrain
from transferlab.pretrain.masked_inputs import train_masked_inputs
from transferlab.recipes.transplant import transplant
from transferlab.spec import ModelSpec


def corpus_file(tmp_path, n=300):
    folder = write_sentiment_csv(tmp_path / "toy", n_train=n, n_dev=4)
    lines = [row.rsplit(",", 1)[0] for row in (folder / "train.csv").read_text().splitlines()[1:]]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_pretrains_tiny_bert_and_the_folder_is_a_backbone(tmp_path, capsys):
    out = tmp_path / "mlm"
    spec = {"name": "tiny-mlm", "model": {"name": "tiny-bert", "max_length": 32},
            "corpus": {"files": [str(corpus_file(tmp_path))], "heldout": 0.1},
            "masking": {"strategy": "dynamic"}, "train": {"max_steps": 40, "batch_size": 16, "num_evals": 1},
            "optim": {"lr": 3e-3}, "out": str(out)}
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["pretrain", str(path), "--quiet"]) == 0
    assert "held-out loss" in capsys.readouterr().out
    record = json.loads((out / "pretrain.json").read_text())
    s = record["summary"]
    assert s["mlm_head"] == "new" and s["steps"] == 40 and len(s["heldout"]) == 3
    assert s["heldout_after"] < s["heldout_before"] - 0.5  # the toy corpus has 30 words: easy to learn
    backbone = load_backbone(ModelSpec(name=str(out), max_length=32))
    assert backbone.num_layers == 2 and backbone.tokenizer is not None
    enc = backbone.tokenizer(["the movie was great"], return_tensors="pt")
    hidden, _ = backbone(enc["input_ids"], enc["attention_mask"])
    assert len(hidden) == 3 and torch.isfinite(hidden[-1]).all()
    # user mistakes: one line, exit 2
    assert main(["pretrain", str(path), "--quiet"]) == 2  # out exists
    assert "overwrite" in capsys.readouterr().err
    assert main(["pretrain", str(path), "--set", "masking.rte=0.2"]) == 2
    assert "unknown key 'rte'" in capsys.readouterr().err


def test_spec_errors_name_the_field(tmp_path):
    with pytest.raises(SpecError, match="out"):
        load_pretrain_spec({"corpus": {"files": ["x.txt"]}})
    with pytest.raises(SpecError, match="corpus"):
        load_pretrain_spec({"out": "x"})
    with pytest.raises(SpecError, match="masked_inputs takes exactly corpus.task"):
        load_pretrain_spec({"objective": "masked_inputs", "corpus": {"files": ["x.txt"]}, "out": "x"})
    with pytest.raises(SpecError, match="random_ratio"):
        load_pretrain_spec({"corpus": {"files": ["x.txt"]}, "out": "x", "masking": {"random_ratio": 0.5}})
    spec = load_pretrain_spec({"corpus": {"files": [str(tmp_path / "missing.txt")]}, "out": str(tmp_path / "o"),
                               "model": {"name": "tiny-bert"}})
    from transferlab.errors import DataError

    with pytest.raises(DataError, match="missing.txt"):
        pretrain(spec, progress=False)


def test_layers_keeps_a_subset_of_layers_and_zero_steps_just_writes(tmp_path):
    out = tmp_path / "student"
    spec = load_pretrain_spec({"model": {"name": "minilm", "max_length": 32}, "layers": [0, 1],
                               "corpus": {"files": [str(corpus_file(tmp_path, 20))]},
                               "train": {"max_steps": 0}, "out": str(out)})
    s = pretrain(spec, progress=False)
    assert s["steps"] == 0 and s["layers"] == [0, 1] and s["mlm_head"] == "new"
    small, full = load_backbone(ModelSpec(name=str(out))), load_backbone(ModelSpec(name="minilm"))
    assert small.num_layers == 2
    a, b = small.model.state_dict(), full.model.state_dict()
    for key in ("encoder.layer.1.output.dense.weight", "embeddings.word_embeddings.weight", "pooler.dense.weight"):
        assert torch.equal(a[key], b[key])  # the first two layers, the embeddings and the pooler are MiniLM's
    assert not any(k.startswith("encoder.layer.2.") for k in a)


def _digits_spec(tmp_path, **train):
    return load_pretrain_spec({
        "name": "digits-mim", "objective": "masked_inputs", "corpus": {"task": {"name": "digits"}},
        "architecture": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64},
        "masking": {"rate": 0.25}, "train": {"batch_size": 32, "num_evals": 1, **train},
        "optim": {"lr": 2e-3, "weight_decay": 0.0}, "out": str(tmp_path / "digits-src")})


def test_masked_patches_learn_and_the_folder_is_a_backbone_and_transplant_source(tmp_path):
    spec = _digits_spec(tmp_path, max_steps=60)
    s = pretrain(spec, progress=False)
    assert s["modality"] == "vectors" and s["loss"] == "mse"
    assert s["heldout_after"] < 0.8 * s["heldout_before"]  # masked patches are predicted from their neighbours
    out = tmp_path / "digits-src"
    with safe_open(str(out / "masked_inputs.safetensors"), "pt") as f:
        assert {"input_adapter.proj.weight", "mask_embedding", "decoder.3.weight"} <= set(f.keys())
    source = load_backbone(ModelSpec(name=str(out), max_length=16))
    assert source.num_layers == 2
    target = load_backbone(ModelSpec(name="tiny-bert"))
    report = transplant(target, source, layers="all", source_name=str(out))
    assert report["moved_values"] > 0 and not report["function_changes"]
    key = "encoder.layer.1.attention.self.query.weight"
    assert torch.equal(target.model.state_dict()[key], source.model.state_dict()[key])


def constant_tokens(n: int, length: int = 16, vocab: int = 12, seed: int = 0) -> np.ndarray:
    """Each sequence repeats one random symbol: a masked symbol is any visible one."""
    return np.repeat(np.random.default_rng(seed).integers(0, vocab, size=(n, 1)), length, axis=1)


def test_masked_symbols_are_classified_and_static_masking_works(tmp_path):
    train, dev = constant_tokens(600), constant_tokens(100, seed=1)
    task = Task(name="motifs", problem="classification", num_labels=2, metrics=("accuracy",), main_metric="accuracy",
                modality="tokens", vocab_size=12,
                splits={"train": Split(np.zeros(600, dtype=np.int64), inputs=train),
                        "dev": Split(np.zeros(100, dtype=np.int64), inputs=dev)})
    spec = load_pretrain_spec({
        "objective": "masked_inputs", "corpus": {"task": {"name": "motifs"}},
        "architecture": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64},
        "masking": {"strategy": "static"}, "train": {"max_steps": 60, "batch_size": 32, "num_evals": 0},
        "optim": {"lr": 1e-2, "weight_decay": 0.0}, "out": str(tmp_path / "motif-src")})
    s = train_masked_inputs(spec, task=task, progress=False)
    assert s["loss"] == "cross_entropy" and s["mask_id"] == 12
    assert s["heldout_before"] > 2.0  # about ln(12) = 2.48 at the start
    assert s["heldout_after"] < 0.3 * s["heldout_before"]
    assert load_backbone(ModelSpec(name=str(tmp_path / "motif-src"), max_length=16)).num_layers == 2


@needs_shared_data
def test_minilm_mlm_on_glue_text_lowers_heldout_loss_and_loads_as_backbone(tmp_path):
    """Acceptance 2: continued MLM of MiniLM on RTE + MRPC + CoLA training text (a few hundred sentences)."""
    glue = SHARED_DATA / "glue"
    out = tmp_path / "minilm-glue"
    spec = load_pretrain_spec({
        "name": "minilm-glue-mlm", "model": {"name": "minilm", "max_length": 64},
        "corpus": {"tasks": [{"name": t, "path": str(glue / f)} for t, f in
                             (("rte", "RTE"), ("mrpc", "MRPC"), ("cola", "CoLA"))],
                   "max_examples": 400, "heldout": 0.2},
        "masking": {"strategy": "dynamic"}, "train": {"max_steps": 12, "batch_size": 16, "num_evals": 0},
        "optim": {"lr": 2e-4}, "schedule": {"warmup_ratio": 0.1}, "out": str(out)})
    s = pretrain(spec, progress=False)
    assert s["mlm_head"] == "new" and s["train_examples"] == 320 and s["heldout_examples"] == 80
    # measured 10.85 -> 7.70 (the new head learns first); the held-out masks are the same before and after
    assert s["heldout_after"] < s["heldout_before"] - 1.0, (s["heldout_before"], s["heldout_after"])
    backbone = load_backbone(ModelSpec(name=str(out), max_length=64))
    minilm = load_backbone(ModelSpec(name=str(minilm_path())))
    assert backbone.num_layers == 6 and backbone.hidden_size == 384
    mine, theirs = backbone.model.state_dict(), minilm.model.state_dict()
    assert torch.equal(mine["pooler.dense.weight"], theirs["pooler.dense.weight"])  # carried over
    assert not torch.equal(mine["encoder.layer.5.output.dense.weight"], theirs["encoder.layer.5.output.dense.weight"])


def test_overwrite_deletes_only_folders_pretrain_wrote(tmp_path, capsys):
    """overwrite: true on a folder of unrelated files refuses (one line, exit 2) and deletes nothing;
    on a folder pretrain wrote (it holds the marker) it replaces it."""
    from transferlab.pretrain.mlm import MARKER

    mine = tmp_path / "thesis"
    (mine / "chapters").mkdir(parents=True)
    (mine / "notes.txt").write_text("do not delete")
    (mine / "chapters" / "one.tex").write_text("\\chapter{One}")
    spec = {"name": "tiny-mlm", "model": {"name": "tiny-bert", "max_length": 16},
            "corpus": {"files": [str(corpus_file(tmp_path, n=40))], "heldout": 0.1},
            "train": {"max_steps": 2, "batch_size": 8, "num_evals": 1}, "out": str(mine), "overwrite": True}
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump(spec))
    capsys.readouterr()
    assert main(["pretrain", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not written by transferlab pretrain" in err[0] and MARKER in err[0]
    assert sorted(str(p.relative_to(mine)) for p in mine.rglob("*")) == ["chapters", "chapters/one.tex", "notes.txt"]
    assert (mine / "notes.txt").read_text() == "do not delete"

    ours = tmp_path / "mlm"
    assert main(["pretrain", str(path), "--quiet", "--set", f"out={ours}"]) == 0
    assert (ours / MARKER).is_file() and (ours / "config.json").is_file()
    (ours / "stale.txt").write_text("from an earlier run")
    assert main(["pretrain", str(path), "--quiet", "--set", f"out={ours}"]) == 0  # replaced: ours to delete
    assert not (ours / "stale.txt").exists() and (ours / MARKER).is_file() and (ours / "pretrain.json").is_file()
