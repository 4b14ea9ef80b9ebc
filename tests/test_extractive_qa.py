"""Extractive QA (issue 16): SQuAD v1.1 files split by article, windows with a document stride, span
decoding (max answer length, n-best), the official EM/F1, bad answers (question id, exit 2), learning."""

from __future__ import annotations

import json
import re
import string
from collections import Counter

import numpy as np
import pytest
import yaml
from conftest import SHARED_DATA, needs_shared_data, overflow_windows_whole

from transferlab.cli import main
from transferlab.data import build_task
from transferlab.data.squad import best_spans, first_sentence, qa_metrics
from transferlab.errors import DataError
from transferlab.models.backbone import load_backbone
from transferlab.spec import ModelSpec, TaskSpec, load_spec
from transferlab.store import Store
from transferlab.train import shapes
from transferlab.train.batches import encode
from transferlab.train.loop import run

pytestmark = pytest.mark.usefixtures("one_thread")
SQUAD = SHARED_DATA / "squad"


# ---------------------------------------------------------------- the official evaluate-v1.1.py, as the reference


def ref_normalize_answer(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def ref_f1_score(prediction, ground_truth):
    prediction_tokens = ref_normalize_answer(prediction).split()
    ground_truth_tokens = ref_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def ref_evaluate(dataset, predictions):
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue
                truths = [a["text"] for a in qa["answers"]]
                pred = predictions[qa["id"]]
                exact_match += max(ref_normalize_answer(pred) == ref_normalize_answer(t) for t in truths)
                f1 += max(ref_f1_score(pred, t) for t in truths)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


DATASET = [{"title": "T", "paragraphs": [{"context": "The Broncos beat the Panthers 24-10 in Super Bowl 50.", "qas": [
    {"id": "q1", "question": "Who won?", "answers": [{"text": "The Broncos", "answer_start": 0},
                                                     {"text": "Broncos", "answer_start": 4}]},
    {"id": "q2", "question": "Score?", "answers": [{"text": "24-10", "answer_start": 30}]},
    {"id": "q3", "question": "Which game?", "answers": [{"text": "Super Bowl 50", "answer_start": 39}]},
    {"id": "q4", "question": "Loser?", "answers": [{"text": "the Panthers", "answer_start": 17}]},
    {"id": "q5", "question": "Missing?", "answers": [{"text": "Broncos", "answer_start": 4}]}]}]}]
PREDICTIONS = {"q1": "broncos!", "q2": "2410", "q3": "the Super Bowl", "q4": "Panthers beat"}  # q5 missing


def test_em_f1_equal_the_official_script():
    targets = [{"id": qa["id"], "answers": [a["text"] for a in qa["answers"]]}
               for qa in DATASET[0]["paragraphs"][0]["qas"]]
    ours, ref = qa_metrics(PREDICTIONS, targets), ref_evaluate(DATASET, PREDICTIONS)
    assert ours["exact_match"] * 100 == pytest.approx(ref["exact_match"])
    assert ours["span_f1"] * 100 == pytest.approx(ref["f1"])
    assert ours["exact_match"] == pytest.approx(2 / 5)  # q1 (punctuation, case, article), q2 ("24-10" -> "2410")
    # q3: P 1, R 2/3 -> 0.8; q4: P 1/2, R 1 -> 2/3; q5: no prediction -> 0
    assert ours["span_f1"] == pytest.approx((1 + 1 + 0.8 + 2 / 3 + 0) / 5)


def write_squad(folder, data):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dev-v1.1.json").write_text(json.dumps({"data": data, "version": "1.1"}))
    return folder


def test_answer_not_matching_its_offset_names_the_question(tmp_path, capsys):
    bad = json.loads(json.dumps(DATASET))
    bad[0]["paragraphs"][0]["qas"][2]["answers"][0]["answer_start"] = 38
    folder = write_squad(tmp_path / "sq", bad * 2)
    with pytest.raises(DataError, match="question q3: answer 'Super Bowl 50' does not match the context at offset 38"):
        build_task(TaskSpec(name="squad", path=str(folder), options={"dev_articles": 0.5}))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"model": {"name": "tiny-bert"}, "head": {"name": "span"},
                                    "task": {"name": "squad", "path": str(folder), "options": {"dev_articles": 0.5}}}))
    assert main(["run", str(spec), "--store", str(tmp_path / "s.db"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "question q3" in err and len(err.splitlines()) == 1


def test_best_spans_respects_order_length_and_context():
    start = np.array([0.0, 5.0, 1.0, 4.0, 0.0])
    end = np.array([9.0, 0.0, 3.0, 0.0, 2.0])
    context = np.array([False, True, True, True, True])  # token 0 is the question/[CLS]
    assert best_spans(start, end, context, 20, 30)[0] == (8.0, 1, 2)  # end 0 is outside the context
    single = best_spans(start, end, context, 20, 1)  # max length 1: single tokens only
    assert sorted(s[1:] for s in single) == [(1, 1), (2, 2), (3, 3), (4, 4)] and [s[0] for s in single] == [5, 4, 4, 2]
    assert [s[1:] for s in best_spans(start, end, context, 2, 30)] == [(1, 2), (1, 4)]  # n-best 2
    assert first_sentence("It rained. Then it stopped.") == "It rained."


@needs_shared_data
def test_squad_dev_split_by_article_and_few_sample():
    spec = TaskSpec(name="squad", path=str(SQUAD), options={"dev_articles": 0.5})
    task = build_task(spec)
    train, dev = task.splits["train"], task.splits["dev"]
    assert len(train) + len(dev) == 10570 and task.kind == "span"
    assert not set(train.text_pairs) & set(dev.text_pairs)  # no paragraph on both sides
    assert len(task.extra["split_by_article"]["dev_articles"]) == 24
    few = build_task(TaskSpec(name="squad", path=str(SQUAD), options={"dev_articles": 0.5}, few_sample=64), seed=3)
    assert len(few.splits["train"]) == 64 and len(few.splits["dev"]) == len(dev)


@needs_shared_data
def test_windows_hold_the_answer_and_oracle_decoding_is_exact():
    task = build_task(TaskSpec(name="squad", path=str(SQUAD), options={"dev_articles": 0.5, "doc_stride": 32},
                               max_eval_samples=60))
    tok = load_backbone(ModelSpec(name="tiny-bert")).tokenizer
    dev = task.splits["dev"]
    enc = encode(dev, task, tok, 96)
    assert len(enc) > len(dev)  # long contexts give several windows
    assert enc.lengths.max() <= 96
    hits = 0
    for w, (a, b) in enumerate(enc.labels):
        if a == 0:
            continue
        hits += 1
        i = enc.extra["example"][w]
        chars = enc.extra["chars"][w]
        text = dev.text_pairs[i][chars[a, 0]:chars[b, 1]]
        assert text.lower().strip() == dev.targets[i]["answers"][0].lower().strip() or \
            dev.targets[i]["answers"][0] in text  # whole tokens around the answer
    assert hits >= len(dev)  # every answer lies whole in at least one window

    def oracle():  # scores that point at the labelled tokens, in two batches
        width = int(enc.lengths.max())
        for index in np.array_split(np.arange(len(enc)), 2):
            scores = np.zeros((len(index), 2, width), dtype=np.float32)
            for r, w in enumerate(index):
                a, b = enc.labels[w]
                if a > 0:
                    scores[r, 0, a] = scores[r, 1, b] = 10.0
            yield index, scores

    nbest = shapes.SpanShape.decode(oracle(), enc, task)
    assert set(nbest) == {t["id"] for t in dev.targets} and all(1 <= len(v) <= 20 for v in nbest.values())
    assert shapes.SpanShape.metrics(nbest, enc, task)["span_f1"] > 0.95


def tiny_qa_spec(path, **train):
    return {"name": "qa", "model": {"name": "tiny-bert", "max_length": 128}, "head": {"name": "span"},
            "task": {"name": "squad", "path": str(path), "options": {"dev_articles": 0.5},
                     "max_train_samples": 200, "max_eval_samples": 50},
            "optim": {"lr": 3e-3}, "schedule": {"name": "constant", "warmup_ratio": 0.0},
            "train": {"max_steps": 30, "batch_size": 16, "num_evals": 1, "log_every": 5, "save_model": False, **train}}


@needs_shared_data
def test_tiny_model_loss_falls_on_squad(tmp_path):
    store = Store(tmp_path / "s.db")
    result = run(load_spec(tiny_qa_spec(SQUAD)), store, progress=False)
    assert result.status == "finished" and set(result.dev) == {"exact_match", "span_f1"}
    losses = [loss for _, loss, _, _ in store.curve(result.uid)]
    assert losses[-1] < 0.8 * losses[0]
    assert 0 < result.summary["baseline"]["span_f1"] < 0.2  # the first sentence


@needs_shared_data
@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_minilm_beats_the_first_sentence_on_held_out_articles(tmp_path):
    spec = tiny_qa_spec(SQUAD, max_steps=150, batch_size=16)
    spec["model"] = {"name": "minilm", "max_length": 128}
    spec["optim"] = {"lr": 1e-4}
    spec["schedule"] = {"name": "linear", "warmup_ratio": 0.1}
    spec["task"]["options"]["doc_stride"] = 48
    spec["task"].update(max_train_samples=2400, max_eval_samples=200)
    result = run(load_spec(spec), Store(tmp_path / "s.db"), progress=False)
    base = result.summary["baseline"]
    assert result.dev["span_f1"] > base["span_f1"] + 0.1, (result.dev, base)
    assert result.dev["exact_match"] > base["exact_match"]


def test_hub_squad_style_dataset():
    datasets = pytest.importorskip("datasets")
    from transferlab.data.squad import from_hub_dataset

    qas = DATASET[0]["paragraphs"][0]["qas"]
    context = DATASET[0]["paragraphs"][0]["context"]
    rows = {"id": [q["id"] for q in qas], "title": ["T"] * len(qas), "context": [context] * len(qas),
            "question": [q["question"] for q in qas],
            "answers": [{"text": [a["text"] for a in q["answers"]], "answer_start": [a["answer_start"] for a in q["answers"]]}
                        for q in qas]}
    ds = datasets.DatasetDict({s: datasets.Dataset.from_dict(rows) for s in ("train", "validation")})
    task = from_hub_dataset(ds, "squad")
    dev = task.splits["dev"]
    assert task.kind == "span" and dev.targets[0] == {"id": "q1", "answers": ["The Broncos", "Broncos"], "starts": [0, 4]}
    assert dev.labels[2].tolist() == [39, 52] and context[39:52] == "Super Bowl 50"
    rows["answers"][1] = {"text": ["24-11"], "answer_start": [30]}
    bad = datasets.DatasetDict({s: datasets.Dataset.from_dict(rows) for s in ("train", "validation")})
    with pytest.raises(DataError, match="question q2: answer '24-11' does not match"):
        from_hub_dataset(bad, "squad")


def test_context_windows_equal_the_tokenizers_own_overflow_windows():
    """shapes.context_windows builds the windows by hand (tokenizers 0.23.2, the GPU image's, returns at
    most two there): the same token ids, segments, character offsets and context positions as the
    tokenizer's ``only_second`` overflow, where that overflow is whole."""
    tok = load_backbone(ModelSpec(name="tiny-bert")).tokenizer
    whole = overflow_windows_whole(tok)
    data = json.loads((SQUAD / "dev-v1.1.json").read_text())["data"]
    pairs = [(qa["question"], p["context"]) for a in data[:3] for p in a["paragraphs"][:4] for qa in p["qas"][:2]]
    for max_length, stride in ((96, 32), (64, 20)):
        windows, example = shapes.context_windows(tok, *map(list, zip(*pairs)), max_length, stride)
        assert max(len(w.ids) for w in windows) <= max_length and len(windows) > len(pairs)
        for i, (question, context) in enumerate(pairs):
            mine = [w for w, e in zip(windows, example) if e == i]
            covered = [o for w in mine for o, s in zip(w.offsets, w.sequence_ids) if s == 1]
            assert covered[-1][1] == len(context.rstrip())  # the last window reaches the context's end
            if not whole:
                continue  # this tokenizers release loses overflow windows: nothing to compare with
            hf = tok(question, context, truncation="only_second", max_length=max_length, stride=stride,
                     return_overflowing_tokens=True, return_offsets_mapping=True, return_token_type_ids=True)
            assert len(mine) == len(hf["input_ids"])
            for k, w in enumerate(mine):
                assert w.ids == hf["input_ids"][k] and w.type_ids == hf["token_type_ids"][k]
                assert w.offsets == [tuple(o) for o in hf["offset_mapping"][k]]
                assert [s == 1 for s in w.sequence_ids] == [s == 1 for s in hf.sequence_ids(k)]
    if not whole:
        pytest.skip("this tokenizers release's overflow windows are incomplete; the windows reach the end")
