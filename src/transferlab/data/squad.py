"""Extractive question answering (``kind="span"``): SQuAD v1.1 JSON files and the hub's ``squad``.

    task: {name: squad, path: ../shared/data/squad, options: {dev_articles: 0.5}}
    task: {name: squad}                                   # rajpurkar/squad from the hub

Files: ``train-v1.1.json`` and ``dev-v1.1.json`` in ``task.path`` (or ``train_file``/``dev_file``). When
there is no train file (the shared data holds the dev file only), ``options.dev_articles: F`` splits
the dev file *by article*: a seeded (``split_seed``, 0) fraction F of the articles is the dev split,
the rest the train split, so no paragraph is in both. Every answer must equal the context at its
``answer_start``, else a DataError naming the question id.

A split holds questions (``texts``), contexts (``text_pairs``), ``labels`` (N, 2): the character start
and end of the first reference answer, and ``targets``: {"id", "answers", "starts"} per question.
Encoding into windows and decoding are train/shapes.py; scoring is here: the official SQuAD v1.1
``evaluate-v1.1.py`` exact match and F1 (normalisation: lower case, no punctuation, no articles,
single spaces; the maximum over the reference answers), as fractions. Options ``doc_stride`` (tokens
shared by consecutive windows; default max_length // 3), ``max_answer_length`` (30 tokens) and
``n_best`` (20) are read by the decoder.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from pathlib import Path

import numpy as np

from transferlab.data.common import HUB_OPTIONS, check_options, load_hub
from transferlab.data.task import TASKS, Split, Task
from transferlab.errors import DataError, SpecError

QA_METRICS = ("exact_match", "span_f1")
OPTIONS = ("dev_articles", "split_seed", "doc_stride", "max_answer_length", "n_best", "hub", *HUB_OPTIONS)


# ---------------------------------------------------------------- the official v1.1 scoring (evaluate-v1.1.py)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (the official script's order)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def answer_f1(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def qa_metrics(predictions: dict[str, str], targets: list[dict]) -> dict[str, float]:
    """Exact match and F1 (fractions) of ``predictions`` {id: text}; a missing prediction scores 0."""
    if not targets:
        raise DataError("cannot score an empty split")
    em = f1 = 0.0
    for t in targets:
        pred = predictions.get(t["id"])
        if pred is None:
            continue
        em += max(exact_match(pred, a) for a in t["answers"])
        f1 += max(answer_f1(pred, a) for a in t["answers"])
    return {"exact_match": em / len(targets), "span_f1": f1 / len(targets)}


def first_sentence(context: str) -> str:
    return re.split(r"(?<=[.!?])\s+", context.strip(), maxsplit=1)[0]


def first_sentence_baseline(split: Split) -> dict[str, float]:
    """The scores of answering every question with the first sentence of its context."""
    return qa_metrics({t["id"]: first_sentence(c) for t, c in zip(split.targets, split.text_pairs)}, split.targets)


# ---------------------------------------------------------------- answer decoding (no library does this on numpy)


def best_spans(start: np.ndarray, end: np.ndarray, context: np.ndarray, n_best: int, max_len: int):
    """[(score, i, j)] of the ``n_best`` best token spans i..j of one window: i and j context tokens
    (``context`` a bool mask), i <= j < i + max_len, score start[i] + end[j]; best first."""
    idx = np.flatnonzero(context)
    if len(idx) == 0:
        return []
    starts = idx[np.argsort(-start[idx], kind="stable")[:n_best]]
    ends = idx[np.argsort(-end[idx], kind="stable")[:n_best]]
    spans = [(float(start[i] + end[j]), int(i), int(j)) for i in starts for j in ends if i <= j < i + max_len]
    return sorted(spans, key=lambda s: -s[0])[:n_best]


# ---------------------------------------------------------------- reading


def read_squad(path: Path) -> list[tuple[str, list]]:
    """[(title, rows)] per article, each row (id, question, context, [(answer text, start)]);
    an answer that does not match its context is a DataError naming the question id."""
    if not path.is_file():
        raise DataError(f"file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a SQuAD JSON file ({e})") from None
    articles = []
    qid = None
    try:
        for article in data:
            rows = []
            for para in article["paragraphs"]:
                context = para["context"]
                for qa in para["qas"]:
                    qid = qa["id"]
                    answers = [(a["text"], int(a["answer_start"])) for a in qa["answers"]]
                    check_answers(qid, context, answers, path)
                    rows.append((qid, qa["question"], context, answers))
            articles.append((article.get("title", ""), rows))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        where = f"question {qid}: " if qid is not None else ""
        raise DataError(f"{path}: {where}not in the SQuAD v1.1 layout ({type(e).__name__}: {e})") from None
    return articles


def check_answers(qid: str, context: str, answers: list[tuple[str, int]], where) -> None:
    if not answers:
        raise DataError(f"{where}: question {qid} has no answer (SQuAD v1.1 questions all have one)")
    for text, start in answers:
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: question {qid}: an answer is empty; every answer is a span of its context")
        if not 0 <= start <= len(context) - len(text):
            raise DataError(f"{where}: question {qid}: answer {text!r} at offset {start} lies outside its context "
                            f"({len(context)} characters)")
        found = context[start : start + len(text)]
        if found != text:
            raise DataError(f"{where}: question {qid}: answer {text!r} does not match the context at offset "
                            f"{start} (the context there reads {found!r})")


def to_split(rows) -> Split:
    labels = np.array([[a[0][1], a[0][1] + len(a[0][0])] for _, _, _, a in rows], dtype=np.int64).reshape(-1, 2)
    targets = [{"id": i, "answers": [t for t, _ in a], "starts": [s for _, s in a]} for i, _, _, a in rows]
    return Split(labels, texts=[q for _, q, _, _ in rows], text_pairs=[c for _, _, c, _ in rows], targets=targets)


def qa_task(name: str, splits: dict[str, Split], source: str, options: dict, extra: dict | None = None) -> Task:
    decode = {"doc_stride": options.get("doc_stride"), "max_answer_length": options.get("max_answer_length", 30),
              "n_best": options.get("n_best", 20)}
    for key, value in decode.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SpecError(f"task.options.{key}: expected an integer >= 1, got {value!r}")
    return Task(name=name, splits=splits, problem="classification", num_labels=2, metrics=QA_METRICS,
                main_metric="span_f1", kind="span", extra={"source": source, **decode, **(extra or {})})


def _file(root: Path | None, explicit: str | None, default: str) -> Path | None:
    if explicit:
        p = Path(explicit).expanduser()
        return root / p if root is not None and not p.is_absolute() else p
    return None if root is None else root / default


def from_files(spec, options: dict) -> Task:
    root = None if spec.path is None else Path(spec.path).expanduser()
    if root is not None and not root.is_dir():
        raise DataError(f"task.path: {root} is not a folder (expected train-v1.1.json and dev-v1.1.json)")
    train_path = _file(root, spec.train_file, "train-v1.1.json")
    dev_path = _file(root, spec.dev_file, "dev-v1.1.json")
    fraction = options.get("dev_articles")
    if dev_path is None or not dev_path.is_file():
        raise DataError(f"task {spec.name}: dev file {dev_path} does not exist")
    dev_articles = read_squad(dev_path)
    if train_path is not None and train_path.is_file():
        if fraction is not None:
            raise SpecError(f"task.options.dev_articles: there is a train file ({train_path}); drop the option")
        rows = [r for _, rs in read_squad(train_path) for r in rs]
        return qa_task(spec.name, {"train": to_split(rows), "dev": to_split([r for _, rs in dev_articles for r in rs])},
                       str(dev_path.parent), options)
    if fraction is None or not 0 < float(fraction) < 1:
        raise SpecError(f"task.options.dev_articles: no train file ({train_path}); set dev_articles to the "
                        f"fraction of the dev file's articles held out for dev (e.g. 0.5), got {fraction!r}")
    order = np.random.default_rng(int(options.get("split_seed", 0))).permutation(len(dev_articles))
    n_dev = max(1, round(float(fraction) * len(dev_articles)))
    if n_dev >= len(dev_articles):
        raise DataError(f"task {spec.name}: {len(dev_articles)} articles cannot be split by dev_articles={fraction}")
    held = set(order[:n_dev].tolist())
    train = [r for i, (_, rs) in enumerate(dev_articles) if i not in held for r in rs]
    dev = [r for i, (_, rs) in enumerate(dev_articles) if i in held for r in rs]
    titles = [dev_articles[i][0] for i in sorted(held)]
    return qa_task(spec.name, {"train": to_split(train), "dev": to_split(dev)}, str(dev_path.parent), options,
                   {"split_by_article": {"dev_articles": titles, "train_articles": len(dev_articles) - n_dev}})


def from_hub_dataset(dataset, name: str, options: dict | None = None) -> Task:
    """A span task from a ``datasets.DatasetDict`` with the hub ``squad`` columns."""
    splits = {}
    for split, hub_split in (("train", "train"), ("dev", "validation")):
        rows = []
        for ex in dataset[hub_split]:
            answers = list(zip(ex["answers"]["text"], ex["answers"]["answer_start"]))
            check_answers(ex["id"], ex["context"], answers, f"task {name}, hub split {hub_split}")
            rows.append((ex["id"], ex["question"], ex["context"], answers))
        splits[split] = to_split(rows)
    return qa_task(name, splits, "hub", options or {})


@TASKS.register("squad")
def squad(spec) -> Task:
    """SQuAD v1.1 (Rajpurkar et al. 2016): a folder of the official JSON files, or the hub."""
    options = check_options(spec, OPTIONS)
    if spec.path is None and spec.train_file is None and spec.dev_file is None:
        return from_hub_dataset(load_hub(options.get("hub", "rajpurkar/squad"), None, spec), spec.name, options)
    return from_files(spec, options)
