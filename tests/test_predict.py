"""predict: a run or an export folder on new rows, in input order, equal to the model's own evaluation."""

import csv
import random

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SHARED_DATA, needs_shared_data, tiny_spec_dict, write_sentiment_csv

from transferlab.cli import main
from transferlab.models.artifacts import load_run_model
from transferlab.predict import predict
from transferlab.spec import spec_from_dict
from transferlab.store import Store
from transferlab.train.batches import encode
from transferlab.train.evaluate import predict as loop_predict
from transferlab.train.loop import run

pytestmark = pytest.mark.usefixtures("one_thread")


def write_regression_csv(folder, n_train=96, n_dev=200, seed=0):
    """Targets 0.25 + (number of 'good' words) * 1.5: fractional, so problem: auto picks regression."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        lines = ["text,label"]
        for _ in range(n):
            k = rng.randint(0, 3)
            words = ["good"] * k + rng.sample(["the", "movie", "plot", "was", "a", "film", "and"], 4)
            rng.shuffle(words)
            lines.append(f"{' '.join(words)},{0.25 + 1.5 * k}")
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return folder


def trained(tmp_path, data_dir, head="mean"):
    store = Store(tmp_path / "s.db")
    spec = tiny_spec_dict(data_dir, epochs=1, num_evals=1)
    spec["head"] = {"name": head}
    spec["task"]["max_train_samples"] = 64
    result = run(spec_from_dict(spec), store, progress=False)
    assert result.status == "finished"
    return store, result.uid


def unlabelled_copy(src, dst):
    rows = list(csv.DictReader(open(src)))
    with open(dst, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows([i, r["text"]] for i, r in enumerate(rows))
    return dst


def own_evaluation(store, uid, data_dir):
    """The run's model on its labelled dev split, through the training loop's predict."""
    model, task = load_run_model(store, uid)
    spec = spec_from_dict(store.get(uid).spec)
    from transferlab.data.build import build_task

    dev = build_task(spec.task).splits["dev"]
    enc = encode(dev, task, model.backbone.tokenizer, spec.model.max_length)
    return loop_predict(model, enc, task, 16, torch.device("cpu")), task


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_predict_200_rows_in_order_equals_evaluation(tmp_path, kind):
    data = (write_sentiment_csv(tmp_path / "d", n_train=96, n_dev=200) if kind == "classification"
            else write_regression_csv(tmp_path / "d"))
    store, uid = trained(tmp_path, data, head="mean" if kind == "classification" else "cls")
    new = unlabelled_copy(data / "dev.csv", tmp_path / "new.csv")
    frame = predict(uid, new, store=store, batch_size=7)
    assert len(frame) == 200 and list(frame["line"]) == list(range(2, 202))
    reference, task = own_evaluation(store, uid, data)
    if kind == "classification":
        assert list(frame["label"]) == [task.label_names[i] for i in reference]
        probs = frame[["prob_0", "prob_1"]].to_numpy()
        assert np.allclose(probs.sum(1), 1.0) and np.allclose(frame["score"], probs.max(1))
        model, _ = load_run_model(store, uid)
        texts = pd.read_csv(new)["text"]
        for i in (0, 57, 199):  # row i is the model on line i + 2, one text at a time
            with torch.no_grad():
                alone = model(**model.backbone.tokenizer([texts[i]], return_tensors="pt")).softmax(-1)[0]
            assert np.allclose(probs[i], alone.numpy(), atol=1e-5)
        assert probs[:, 1].std() > 0
    else:
        assert task.problem == "regression" and "label" not in frame
        assert np.allclose(frame["prediction"], reference, atol=1e-5) and frame["prediction"].std() > 0
    # the CLI writes the same rows; an export folder predicts the same too
    out = tmp_path / "pred.csv"
    assert main(["predict", uid, "--input", str(new), "--output", str(out), "--store", str(store.path),
                 "--quiet"]) == 0
    again = pd.read_csv(out, dtype={"label": str})
    assert len(again) == 200 and list(again.columns) == list(frame.columns)
    if kind == "classification":
        assert again["label"].tolist() == frame["label"].tolist()
    else:
        assert np.allclose(again["prediction"], frame["prediction"], atol=1e-6)
    folder = tmp_path / "export"
    assert main(["export", uid, "-o", str(folder), "--store", str(store.path)]) == 0
    from_folder = predict(folder, new)
    assert np.allclose(from_folder.drop(columns=["label"], errors="ignore").to_numpy(dtype=float),
                       frame.drop(columns=["label"], errors="ignore").to_numpy(dtype=float), atol=1e-5)


def test_predict_bad_input_is_one_line(tmp_path, capsys):
    data = write_sentiment_csv(tmp_path / "d", n_train=64, n_dev=32)
    store, uid = trained(tmp_path, data)
    cases = {
        "text,label\nfine film,1\n": None,  # not a mistake
        "review\nfine film\n": "no column 'text'",
        "text\nfine film\n\nbad film\n": "line 3: empty row",
        "text\nfine film\n\"  \"\n": "line 3: empty 'text'",
    }
    for i, (content, message) in enumerate(cases.items()):
        path = tmp_path / f"in{i}.csv"
        path.write_text(content)
        capsys.readouterr()
        code = main(["predict", uid, "--input", str(path), "--store", str(store.path), "--quiet"])
        out, err = capsys.readouterr()
        if message is None:
            assert code == 0 and out.splitlines()[0].startswith("line,label,score")
        else:
            assert code == 2 and len(err.strip().splitlines()) == 1 and message in err and str(path) in err


def test_predict_on_the_tasks_unlabelled_test_split(tmp_path):
    data = write_sentiment_csv(tmp_path / "d", n_train=64, n_dev=32)
    (data / "test.csv").write_text("text\n" + "\n".join(["great film", "awful plot", "nice story"]) + "\n")
    store, uid = trained(tmp_path, data)
    frame = predict(uid, split="test", store=store)
    assert len(frame) == 3 and set(frame["label"]) <= {"0", "1"}
    direct = predict(uid, data / "test.csv", store=store)
    assert frame["label"].tolist() == direct["label"].tolist()


def test_predict_and_export_seed_stacked_runs(tmp_path):
    """Runs trained together by the seed-parallel engine predict and export like single runs."""
    from transferlab.train.loop import run_seeds

    data = write_sentiment_csv(tmp_path / "d", n_train=64, n_dev=40)
    store = Store(tmp_path / "s.db")
    base = tiny_spec_dict(data, epochs=1, num_evals=1)
    base["head"] = {"name": "attention"}
    results = run_seeds([spec_from_dict({**base, "seed": s}) for s in (0, 1)], store, progress=False)
    new = unlabelled_copy(data / "dev.csv", tmp_path / "new.csv")
    frames = []
    for r in results:
        assert r.status == "finished"
        frame = predict(r.uid, new, store=store)
        reference, task = own_evaluation(store, r.uid, data)
        assert list(frame["label"]) == [task.label_names[i] for i in reference]
        folder = tmp_path / f"export-{r.uid.replace('/', '_')}"
        assert main(["export", r.uid, "-o", str(folder), "--store", str(store.path)]) == 0
        assert np.allclose(predict(folder, new)["prob_1"], frame["prob_1"], atol=1e-5)
        frames.append(frame)
    assert not np.allclose(frames[0]["prob_1"], frames[1]["prob_1"])  # two seeds, two models


def test_predict_from_a_damaged_folder_or_file_is_one_line(tmp_path, capsys):
    data = write_sentiment_csv(tmp_path / "d", n_train=64, n_dev=32)
    store, uid = trained(tmp_path, data)
    folder = tmp_path / "export"
    assert main(["export", uid, "-o", str(folder), "--store", str(store.path)]) == 0
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("text\ncaf\xe9 au lait\n".encode("latin-1"))
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    for args, message in (([uid, "--input", str(latin), "--store", str(store.path)], "not UTF-8"),
                          ([str(folder), "--input", str(data / "dev.csv")], "model.safetensors"),
                          ([uid, "--input", str(tmp_path / "absent.csv"), "--store", str(store.path)], "does not exist"),
                          (["nothing", "--input", str(latin), "--store", str(tmp_path / "none.db")], "not a folder")):
        capsys.readouterr()
        assert main(["predict", *args, "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "none.db").exists()


# ---------------------------------------------------------------- token classification and extractive QA


def conll_rows(n=200):
    from transferlab.data import build_task
    from transferlab.spec import TaskSpec

    return build_task(TaskSpec(name="conll2003", path=str(SHARED_DATA / "conll2003"))).splits["dev"].subset(
        np.arange(n))


def trained_kind(tmp_path, kind):
    """A tiny BERT trained a few steps on CoNLL-2003 (token head) or SQuAD (span head)."""
    store = Store(tmp_path / "s.db")
    if kind == "token":
        task = {"name": "conll2003", "path": str(SHARED_DATA / "conll2003"), "max_train_samples": 400,
                "max_eval_samples": 50}
        model, optim, steps = {"name": "tiny-bert", "max_length": 64}, {"lr": 5e-3}, 60
    else:
        task = {"name": "squad", "path": str(SHARED_DATA / "squad"), "options": {"dev_articles": 0.5},
                "max_train_samples": 200, "max_eval_samples": 20}
        model, optim, steps = {"name": "tiny-bert", "max_length": 128}, {"lr": 3e-3}, 10
    spec = {"name": kind, "model": model, "head": {"name": kind}, "task": task, "optim": optim,
            "schedule": {"name": "constant", "warmup_ratio": 0.0},
            "train": {"max_steps": steps, "batch_size": 16, "num_evals": 1, "log_every": 5}}
    result = run(spec_from_dict(spec), store, progress=False)
    assert result.status == "finished"
    return store, result.uid


@needs_shared_data
def test_token_predict_200_rows_equals_evaluation(tmp_path, capsys):
    import json

    from transferlab.data.tagging import tag_metrics
    from transferlab.train.shapes import TokenShape, outputs

    store, uid = trained_kind(tmp_path, "token")
    rows = conll_rows()
    new = tmp_path / "new.jsonl"
    new.write_text("".join(json.dumps({"tokens": w}) + "\n" for w in rows.words))
    frame = predict(uid, new, store=store, batch_size=7)
    assert len(frame) == 200 and list(frame["line"]) == list(range(1, 201))
    model, task = load_run_model(store, uid)
    enc = TokenShape.encode(rows, task, model.backbone.tokenizer, 64)
    reference = TokenShape.decode(outputs(model, enc, 16, torch.device("cpu")), enc, task)
    assert frame["tags"].tolist() == reference
    gold = TokenShape.metrics(reference, enc, task)
    assert tag_metrics(enc.extra["gold"], frame["tags"].tolist()) == gold
    n_entities = sum(len(e) for e in frame["entities"])
    assert n_entities > 20 and gold["entity_f1"] > 0  # it learned something: the entities are not empty
    for tags, entities, words in zip(frame["tags"], frame["entities"], rows.words):
        text = " ".join(words)
        starts = {sum(len(w) + 1 for w in words[:k]): t for k, t in enumerate(tags)}
        for e in entities:  # every entity starts at a word tagged with its type and covers its text
            assert starts[e["start"]][2:] == e["entity_group"] and text[e["start"]:e["end"]] == e["word"]
            assert 0 < e["score"] <= 1
        assert len(entities) == sum(t.startswith("B-") or (t.startswith("I-") and (k == 0 or tags[k - 1][2:] != t[2:]))
                                    for k, t in enumerate(tags))
    # a text column, split at whitespace, gives the same tags; the CLI writes JSON lists into CSV
    text = tmp_path / "new.csv"
    pd.DataFrame({"text": [" ".join(w) for w in rows.words[:20]]}).to_csv(text, index=False)
    assert predict(uid, text, store=store)["tags"].tolist() == reference[:20]
    out = tmp_path / "pred.csv"
    assert main(["predict", uid, "--input", str(text), "--output", str(out), "--store", str(store.path),
                 "--quiet"]) == 0
    assert [json.loads(t) for t in pd.read_csv(out)["tags"]] == reference[:20]


@needs_shared_data
def test_span_predict_200_rows_equals_evaluation(tmp_path):
    from transferlab.data import build_task
    from transferlab.data.squad import qa_metrics
    from transferlab.spec import TaskSpec
    from transferlab.train.shapes import SpanShape, outputs

    store, uid = trained_kind(tmp_path, "span")
    rows = build_task(TaskSpec(name="squad", path=str(SHARED_DATA / "squad"),
                               options={"dev_articles": 0.5})).splits["dev"].subset(np.arange(200))
    new = tmp_path / "new.csv"
    pd.DataFrame({"question": rows.texts, "context": rows.text_pairs}).to_csv(new, index=False)
    frame = predict(uid, new, store=store, batch_size=5)
    assert len(frame) == 200 and list(frame.columns) == ["line", "answer", "score", "start", "end"]
    model, task = load_run_model(store, uid)
    task.extra.update(n_best=20, max_answer_length=30, doc_stride=None)
    enc = SpanShape.encode(rows, task, model.backbone.tokenizer, 128)
    nbest = SpanShape.decode(outputs(model, enc, 16, torch.device("cpu")), enc, task)
    reference = [nbest[t["id"]][0][1] for t in rows.targets]
    assert frame["answer"].tolist() == reference
    assert qa_metrics(dict(zip([t["id"] for t in rows.targets], frame["answer"])), rows.targets) == \
        SpanShape.metrics(nbest, enc, task)
    for answer, start, end, context, score in zip(frame["answer"], frame["start"], frame["end"], rows.text_pairs,
                                                  frame["score"]):
        assert context[start:end] == answer and 0 < score <= 1 and end - start >= 1
    assert frame["answer"].nunique() > 20  # not one fixed answer


def test_pair_model_reads_its_task_columns_and_refuses_one_column(tmp_path, capsys):
    """A pair task's model reads the task's own columns by default (not ``text``), from a run and from its
    export; a file or an option giving one column is one line, exit 2."""
    from transferlab.data.build import input_columns

    assert input_columns({"name": "rte"}) == [["sentence1", "sentence2"]]
    assert input_columns({"name": "mrpc"}) == [["#1 String", "#2 String"], ["sentence1", "sentence2"]]
    assert input_columns({"name": "sst-2"}) == [["sentence", None]]
    data = tmp_path / "d"
    data.mkdir()
    rng = random.Random(0)
    for split, n in (("train", 64), ("dev", 40)):
        rows = [(" ".join(rng.sample(["good", "bad", "film", "plot", "the"], 3)), rng.choice(["good", "bad"]))
                for _ in range(n)]
        pd.DataFrame({"premise": [p for p, _ in rows], "hypothesis": [h for _, h in rows],
                      "label": [int(h in p) for p, h in rows]}).to_csv(data / f"{split}.csv", index=False)
    spec = tiny_spec_dict(data, epochs=1, num_evals=1)
    spec["task"].update(text_column="premise", text_pair_column="hypothesis")
    store = Store(tmp_path / "s.db")
    uid = run(spec_from_dict(spec), store, progress=False).uid
    new = tmp_path / "new.csv"
    pd.read_csv(data / "dev.csv")[["hypothesis", "premise"]].to_csv(new, index=False)
    frame = predict(uid, new, store=store)
    reference, task = own_evaluation(store, uid, data)
    assert frame["label"].tolist() == [task.label_names[i] for i in reference]
    folder = tmp_path / "export"
    assert main(["export", uid, "-o", str(folder), "--store", str(store.path)]) == 0
    assert np.allclose(predict(folder, new)["prob_1"], frame["prob_1"], atol=1e-5)
    single = tmp_path / "single.csv"
    pd.read_csv(data / "dev.csv")[["premise"]].to_csv(single, index=False)
    for source, args in ((uid, ["--input", str(single)]), (str(folder), ["--input", str(single)]),
                         (uid, ["--input", str(new), "--text-column", "premise"])):
        capsys.readouterr()
        code = main(["predict", source, *args, "--store", str(store.path), "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        if args[-1] == "premise":  # one column named, the pair column is still the task's: it reads the pair
            assert code == 0
            continue
        assert code == 2 and len(err) == 1 and "sentence pairs" in err[0] and "hypothesis" in err[0], err
