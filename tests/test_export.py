"""Export: HF sequence classifiers give our logits; other heads round-trip through load_exported."""

import ast
import json

import pytest
import torch
import transformers as tf

from transferlab.data.task import Task
from transferlab.errors import ModelError
from transferlab.models import HEADS, build_model, export_model, load_exported
from transferlab.spec import HeadSpec, ModelSpec, RunSpec

SENTENCES = [
    "The cat sat on the mat.",
    "Transfer learning works well when labelled data is scarce!",
    "No.",
]


def make_task(problem="classification", modality="text", **kw) -> Task:
    n = 3 if problem == "classification" else 1
    names = ["neg", "neu", "pos"] if problem == "classification" else None
    return Task(name="t", splits={}, problem=problem, num_labels=n, metrics=("accuracy",),
                main_metric="accuracy", label_names=names, modality=modality, **kw)


def trained_like(backbone: str, head: str, task: Task, **options):
    """A model whose head is moved off its init (as after training), in eval mode."""
    spec = RunSpec(seed=3, model=ModelSpec(name=backbone), head=HeadSpec(name=head, options=options))
    model = build_model(spec, task)
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def logits(model, enc):
    with torch.no_grad():
        return model(**enc)


@pytest.mark.parametrize("backbone,head", [
    ("tiny-bert", "cls"), ("tiny-bert", "pooler"), ("tiny-roberta", "cls"), ("tiny-roberta", "pooler"),
    ("minilm", "pooler"),
])
def test_hf_sequence_classifier_matches(tmp_path, backbone, head):
    task = make_task()
    model = trained_like(backbone, head, task)
    enc = model.backbone.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    ours = logits(model, enc)
    export_model(model, task, tmp_path)
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))
    hf = tf.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    arch = {"bert": "BertForSequenceClassification", "roberta": "RobertaForSequenceClassification"}
    assert type(hf).__name__ == arch[model.backbone.family]
    assert hf.config.id2label == {0: "neg", 1: "neu", 2: "pos"} and hf.config.label2id["pos"] == 2
    assert hf.config.problem_type == "single_label_classification" and hf.config.num_labels == 3
    with torch.no_grad():
        theirs = hf(**tf.AutoTokenizer.from_pretrained(tmp_path)(SENTENCES, padding=True, return_tensors="pt")).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert torch.allclose(ours, logits(load_exported(tmp_path), enc), atol=1e-6)


def test_regression_export_config(tmp_path):
    task = make_task("regression")
    model = trained_like("tiny-bert", "cls", task)
    export_model(model, task, tmp_path)
    cfg = tf.AutoConfig.from_pretrained(tmp_path)
    assert cfg.problem_type == "regression" and cfg.num_labels == 1
    enc = model.backbone.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    hf = tf.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(logits(model, enc), hf(**enc).logits, atol=1e-5)


OPTIONS = {"layer_mix": {"pool": "cls"}, "conv1d": {"kernel_size": 5}, "attention": {"hidden": 8}}


def imported_modules(folder) -> set[str]:
    """Top-level modules the exported .py files import (relative ones with their dot)."""
    found = set()
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                found.add("." * node.level + (node.module or "") if node.level else node.module.split(".")[0])
    return found


def hf_tokens(folder):
    return tf.AutoTokenizer.from_pretrained(folder, trust_remote_code=False)(SENTENCES, padding=True,
                                                                             return_tensors="pt")


@pytest.mark.parametrize("head", HEADS.primary_names())
def test_every_head_exports_faithfully(tmp_path, head):
    """Every registered head: plain HF class (cls/pooler on BERT) or our modeling file behind
    trust_remote_code; the same logits either way, a loud failure without trust_remote_code."""
    task = make_task()
    options = OPTIONS.get(head, {})
    model = trained_like("tiny-bert", head, task, **options)
    enc = model.backbone.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    ours = logits(model, enc)
    export_model(model, task, tmp_path)
    meta = json.loads((tmp_path / "head.json").read_text())
    assert meta["head"] == head and meta["options"] == options
    assert "head" in (tmp_path / "README.md").read_text()
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))
    if head in ("cls", "pooler"):
        assert meta["layout"] == "hf-bert"
        hf = tf.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    else:
        assert meta["layout"] == "remote" and (tmp_path / "modeling_transferlab.py").is_file()
        assert imported_modules(tmp_path) <= {"inspect", "torch", "transformers", ".configuration_transferlab"}
        assert tf.AutoConfig.from_pretrained(tmp_path, trust_remote_code=True).model_type == "transferlab"
        with pytest.raises(ValueError):  # its own model_type: no random classifier without the code
            tf.AutoModelForSequenceClassification.from_pretrained(tmp_path, trust_remote_code=False)
        hf = tf.AutoModelForSequenceClassification.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert hf.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    with torch.no_grad():
        theirs = hf(**hf_tokens(tmp_path)).logits
    assert (ours - theirs).abs().max() < 1e-5
    assert torch.allclose(ours, logits(load_exported(tmp_path), enc), atol=1e-6)


@pytest.mark.parametrize("backbone,head,problem", [
    ("tiny-gpt2", "cls", "classification"), ("tiny-roberta", "bilstm", "classification"),
    ("tiny-gpt2", "mean", "classification"), ("tiny-bert", "mean", "regression"),
])
def test_remote_export_on_other_families(tmp_path, backbone, head, problem):
    task = make_task(problem)
    model = trained_like(backbone, head, task)
    enc = model.backbone.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    export_model(model, task, tmp_path)
    hf = tf.AutoModelForSequenceClassification.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert hf.config.problem_type == ("regression" if problem == "regression" else "single_label_classification")
    with torch.no_grad():
        assert (logits(model, enc) - hf(**hf_tokens(tmp_path)).logits).abs().max() < 1e-5
    assert torch.equal(logits(model, enc), logits(load_exported(tmp_path), enc))


def test_pipeline_on_a_remote_export(tmp_path):
    task = make_task()
    model = trained_like("tiny-bert", "mean", task)
    export_model(model, task, tmp_path)
    pipe = tf.pipeline("text-classification", model=str(tmp_path), trust_remote_code=True, top_k=None)
    enc = model.backbone.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    probs = logits(model, enc).softmax(-1)
    for row, out in zip(probs, pipe(SENTENCES)):
        got = {d["label"]: d["score"] for d in out}
        assert got.keys() == {"neg", "neu", "pos"}
        assert max(abs(got[name] - float(p)) for name, p in zip(["neg", "neu", "pos"], row)) < 1e-5


def test_export_refuses_a_non_empty_folder(tmp_path):
    task = make_task()
    model = trained_like("tiny-bert", "mean", task)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ModelError, match="not empty.*--force"):
        export_model(model, task, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    export_model(model, task, tmp_path, force=True)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(ModelError, match="is a file"):
        export_model(model, task, tmp_path / "notes.txt")


def test_vector_adapter_round_trip(tmp_path):
    task = make_task(modality="vectors", input_dim=6)
    model = trained_like("tiny-bert", "cls", task)  # cls on BERT, but the adapter forces our own layout
    x = torch.randn(2, 5, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    export_model(model, task, tmp_path)
    assert json.loads((tmp_path / "head.json").read_text())["input_adapter"]["kind"] == "vectors"
    again = load_exported(tmp_path)
    with torch.no_grad():
        assert torch.equal(model(inputs=x, attention_mask=mask), again(inputs=x, attention_mask=mask))


def test_load_exported_needs_head_json(tmp_path):
    with pytest.raises(ModelError, match="head.json"):
        load_exported(tmp_path)


def test_cli_export_writes_a_card_with_the_study_cell(tmp_path, toy_task_dir, capsys):
    from conftest import tiny_spec_dict

    from transferlab.cli import main
    from transferlab.spec import spec_from_dict
    from transferlab.store import Store
    from transferlab.train.loop import run

    store = Store(tmp_path / "s.db")
    base = tiny_spec_dict(toy_task_dir, epochs=1, num_evals=1)
    base["head"] = {"name": "mean"}
    base["task"]["max_train_samples"] = 64
    results = [run(spec_from_dict({**base, "seed": seed}), store, study="cell", progress=False) for seed in (0, 1)]
    dev = [r.dev["accuracy"] for r in results]
    out = tmp_path / "export"
    assert main(["export", results[0].uid, "-o", str(out), "--store", str(store.path)]) == 0
    card = (out / "README.md").read_text()
    mean, std = sum(dev) / 2, abs(dev[0] - dev[1]) / 2 ** 0.5
    assert "study cell (mean ± std, n=2)" in card and f"{mean:.4f} ± {std:.4f}" in card
    assert "Recipe" in card and "name: mean" in card and "lr: 0.003" in card and "accuracy" in card
    assert "Seeds" in card and "transformers" in card and "tiny-bert" in card
    hf = tf.AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True)
    assert hf.config.id2label == {0: "0", 1: "1"}
    capsys.readouterr()
    assert main(["export", results[0].uid, "-o", str(out), "--store", str(store.path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0] and "--force" in err[0]
    assert main(["export", results[0].uid, "-o", str(out), "--store", str(store.path), "--force"]) == 0
