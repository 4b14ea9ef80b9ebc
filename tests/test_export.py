"""Export: HF sequence classifiers give our logits; other heads round-trip through load_exported."""

import ast
import json

import numpy as np
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


# ---------------------------------------------------------------- token and span heads: plain HF classes


def kind_task(kind):
    from transferlab.data.conll import CONLL2003_TAGS

    if kind == "token":
        return Task(name="conll2003", splits={}, problem="classification", num_labels=len(CONLL2003_TAGS),
                    metrics=("entity_f1",), main_metric="entity_f1", label_names=list(CONLL2003_TAGS), kind="token")
    return Task(name="squad", splits={}, problem="classification", num_labels=2, metrics=("span_f1",),
                main_metric="span_f1", kind="span", extra={"doc_stride": None, "max_answer_length": 30, "n_best": 20})


def kind_model(kind, backbone="tiny-bert", scale=3.0):
    """A token/span model whose head is moved well off its init (varied tags and answers), in eval mode."""
    from transferlab.models.model import build_model

    spec = RunSpec(seed=5, model=ModelSpec(name=backbone, max_length=256), head=HeadSpec(name=kind))
    model = build_model(spec, kind_task(kind))
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(scale * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("backbone", ["tiny-bert", "tiny-roberta"])
@pytest.mark.parametrize("kind", ["token", "span"])
def test_token_and_span_heads_export_as_plain_hf_models(tmp_path, kind, backbone):
    model = kind_model(kind, backbone)
    task = kind_task(kind)
    export_model(model, task, tmp_path)
    meta = json.loads((tmp_path / "head.json").read_text())
    assert meta["layout"] == f"hf-{kind}" and meta["kind"] == kind
    assert not (tmp_path / "modeling_transferlab.py").exists()
    auto = tf.AutoModelForTokenClassification if kind == "token" else tf.AutoModelForQuestionAnswering
    hf = auto.from_pretrained(tmp_path).eval()  # no trust_remote_code: a plain transformers class
    assert type(hf).__name__.endswith("ForTokenClassification" if kind == "token" else "ForQuestionAnswering")
    card = (tmp_path / "README.md").read_text()
    assert f"{auto.__name__}.from_pretrained(folder)" in card
    assert ("token-classification" if kind == "token" else "question-answering") in card
    if kind == "token":
        assert hf.config.id2label[1] == "B-PER" and hf.config.label2id["I-MISC"] == task.label_names.index("I-MISC")
    tok = tf.AutoTokenizer.from_pretrained(tmp_path)
    enc = tok(["EU rejects German call to boycott British lamb .", "Peter Blackburn"], padding=True,
              return_tensors="pt")
    ours = logits(model, enc)
    again = logits(load_exported(tmp_path), enc)
    with torch.no_grad():
        out = hf(**enc)
    real = enc["attention_mask"].bool()
    if kind == "token":
        assert (ours - out.logits).abs().max() < 1e-5 and torch.allclose(ours, again, atol=1e-6)
    else:
        assert (ours[:, 0][real] - out.start_logits[real]).abs().max() < 1e-5
        assert (ours[:, 1][real] - out.end_logits[real]).abs().max() < 1e-5
        assert torch.allclose(ours[:, :, real[0]], again[:, :, real[0]], atol=1e-6)


def conll_sentences(n):
    """Dev sentences whose words are each one pre-token (letters/digits only, or one character): the
    pipeline's word boundaries (WordPiece's ## continuations) then equal the whitespace words."""
    from conftest import SHARED_DATA

    from transferlab.data import build_task
    from transferlab.spec import TaskSpec

    words = build_task(TaskSpec(name="conll2003", path=str(SHARED_DATA / "conll2003"))).splits["dev"].words
    return [w for w in words if all(x.isalnum() or len(x) == 1 for x in w) and len(w) <= 40][:n]


def test_token_pipeline_on_the_export_equals_predict(tmp_path):
    from conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    from transferlab.predict import predict

    model, task = kind_model("token"), kind_task("token")
    folder = tmp_path / "export"
    export_model(model, task, folder)
    sentences = conll_sentences(60)
    new = tmp_path / "new.jsonl"
    new.write_text("".join(json.dumps({"tokens": w}) + "\n" for w in sentences))
    ours = predict(folder, new)["entities"].tolist()
    pipe = tf.pipeline("token-classification", model=str(folder), aggregation_strategy="first")
    total = 0
    for words, mine, theirs in zip(sentences, ours, pipe(sentences, is_split_into_words=True), strict=True):
        total += len(theirs)
        assert [(e["entity_group"], e["start"], e["end"]) for e in theirs] == \
            [(e["entity_group"], e["start"], e["end"]) for e in mine]
        assert all(abs(float(a["score"]) - b["score"]) < 1e-5 for a, b in zip(theirs, mine))
        assert all(b["word"] == " ".join(words)[b["start"]:b["end"]] for b in mine)
    assert total > 50 and len({e["entity_group"] for row in ours for e in row}) == 4  # all four types occur


def hf_qa_answer(hf, tok, question, context, max_length=256, stride=85, n_best=20, max_answer=30):
    """The standard extractive-QA decoding (run_qa.py's postprocess) on AutoModelForQuestionAnswering:
    windows over the context, the n-best start and end logits of each, the best valid span by start + end."""
    enc = tok(question, context, truncation="only_second", max_length=max_length, stride=stride,
              return_overflowing_tokens=True, return_offsets_mapping=True, padding=True, return_tensors="pt")
    offsets = enc.pop("offset_mapping")
    enc.pop("overflow_to_sample_mapping")
    with torch.no_grad():
        out = hf(**enc)
    best = None
    for w in range(len(offsets)):
        context_tokens = [i for i, s in enumerate(enc.sequence_ids(w)) if s == 1]
        start, end = out.start_logits[w], out.end_logits[w]
        top = lambda x: sorted(context_tokens, key=lambda i: -float(x[i]))[:n_best]  # noqa: E731
        for i in top(start):
            for j in top(end):
                if i <= j < i + max_answer:
                    score = float(start[i] + end[j])
                    if best is None or score > best[0]:
                        best = (score, int(offsets[w][i][0]), int(offsets[w][j][1]))
    return context[best[1]:best[2]], best[1], best[2]


def test_qa_export_through_hf_equals_predict(tmp_path):
    """transformers 5.24 has no "question-answering" pipeline (pipelines.SUPPORTED_TASKS): the export is
    read by AutoModelForQuestionAnswering and decoded the standard way, which must give predict's answers."""
    from conftest import SHARED_DATA, overflow_windows_whole

    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    from transferlab.data import build_task
    from transferlab.predict import predict
    from transferlab.spec import TaskSpec

    assert "question-answering" not in tf.pipelines.SUPPORTED_TASKS  # else compare with the pipeline itself
    model, task = kind_model("span", scale=1.0), kind_task("span")
    folder = tmp_path / "export"
    export_model(model, task, folder)
    dev = build_task(TaskSpec(name="squad", path=str(SHARED_DATA / "squad"), options={"dev_articles": 0.5}))
    rows = dev.splits["dev"].subset(np.arange(0, 400, 8))  # 50 questions over several paragraphs
    new = tmp_path / "new.jsonl"
    new.write_text("".join(json.dumps({"question": q, "context": c}) + "\n" for q, c in zip(rows.texts, rows.text_pairs)))
    frame = predict(folder, new)
    hf = tf.AutoModelForQuestionAnswering.from_pretrained(folder).eval()
    tok = tf.AutoTokenizer.from_pretrained(folder)
    if not overflow_windows_whole(tok):  # tokenizers 0.23.2 (the GPU image's) loses overflow windows: the
        pytest.skip("this tokenizers release returns at most two overflow windows; the standard decoding "
                    "it would feed is not whole (train/shapes.py context_windows)")  # reference, not predict
    theirs = [hf_qa_answer(hf, tok, q, c) for q, c in zip(rows.texts, rows.text_pairs)]
    assert [(a, s, e) for a, s, e in zip(frame["answer"], frame["start"], frame["end"])] == theirs
    assert frame["answer"].nunique() > 10


@pytest.mark.parametrize("head", ["cls", "mean", "token"])
def test_export_files_are_0644_and_loading_never_prompts(tmp_path, head, monkeypatch):
    """Weights, config and tokenizer files are readable by others (mode 0644) even under umask 077; reading
    the export back (load_exported, predict's tokenizer) never asks the y/N remote-code question."""
    import builtins
    import os

    task = kind_task("token") if head == "token" else make_task()
    model = kind_model("token") if head == "token" else trained_like("tiny-bert", head, task)
    old = os.umask(0o077)
    try:
        export_model(model, task, tmp_path / "out")
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in files}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: "0o644" for p in files}

    def no_prompt(*args, **kwargs):
        raise AssertionError(f"interactive prompt: {args}")

    monkeypatch.setattr(builtins, "input", no_prompt)
    again = load_exported(tmp_path / "out")
    remote = json.loads((tmp_path / "out" / "head.json").read_text())["layout"] == "remote"
    tf.AutoTokenizer.from_pretrained(tmp_path / "out", **({"trust_remote_code": False} if remote else {}))
    assert ("trust_remote_code=False" in (tmp_path / "out" / "README.md").read_text()) == remote
    enc = again.backbone.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    assert torch.allclose(logits(model, enc), logits(again, enc), atol=1e-6)
