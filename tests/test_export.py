"""Export: HF sequence classifiers give our logits; other heads round-trip through load_exported."""

import json

import pytest
import torch
import transformers as tf

from transferlab.data.task import Task
from transferlab.errors import ModelError
from transferlab.models import build_model, export_model, load_exported
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


@pytest.mark.parametrize("backbone,head,options", [
    ("tiny-bert", "bilstm", {}), ("tiny-bert", "layer_mix", {"pool": "cls"}), ("tiny-bert", "conv1d", {"kernel_size": 5}),
    ("tiny-gpt2", "cls", {}), ("tiny-roberta", "attention", {}),
])
def test_backbone_and_head_round_trip(tmp_path, backbone, head, options):
    task = make_task()
    model = trained_like(backbone, head, task, **options)
    enc = model.backbone.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    export_model(model, task, tmp_path)
    assert (tmp_path / "head.safetensors").is_file() and (tmp_path / "model.safetensors").is_file()
    meta = json.loads((tmp_path / "head.json").read_text())
    assert meta["head"] == head and meta["options"] == options and meta["layout"] == "backbone+head"
    assert tf.AutoConfig.from_pretrained(tmp_path).id2label[2] == "pos"
    again = load_exported(tmp_path)
    assert not again.training
    assert torch.equal(logits(model, enc), logits(again, enc))


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
