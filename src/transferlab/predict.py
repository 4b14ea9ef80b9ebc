"""Predictions of a stored run or an exported folder on new data, as a pandas DataFrame.

    df = predict("3f2a", "new.csv", store=Store("runs/transferlab.db"))   # a run (uid, run id, prefix)
    df = predict("my-export/", "new.jsonl")                                 # an export folder
    df = predict("3f2a", split="test", store=store)                         # the run's task's test split

Rows keep the input order. Classification: ``label`` (the class name), ``score`` (its
probability) and ``prob_<name>`` for every class; regression: ``prediction``. A ``line``
column gives each row's line in the input file. Text comes from ``text_column`` and, for pairs,
``text_pair_column``; by default the task's own columns (data/build.py ``input_columns``: a GLUE
task's, e.g. ``sentence1``/``sentence2``, or ``task.text_column``/``text_pair_column``; ``text`` for
an old export folder). A model trained on pairs refuses a file without the pair column (it would
score single sentences). A missing column, an empty text or a blank row before the last one is a
DataError naming the file and line.

Token classification (``token`` head): the input is a ``tokens`` column (a JSON list of words, JSONL)
or a ``text`` column split at whitespace. Output per row: ``tags`` (the predicted tag of every word,
read at its first subword, as the run's evaluation does; words cut off by ``max_length`` get none)
and ``entities``: the words' tags merged into spans as Hugging Face's token-classification pipeline
does with ``aggregation_strategy="first"`` (a ``B-X`` starts an entity, ``I-X`` after X continues
it; ``O`` words are dropped): ``{"entity_group", "score" (the mean of its words' tag probabilities),
"word" (the text of the span), "start", "end" (character offsets in the row's text; for ``tokens``,
in the words joined by single spaces)}``.

Extractive QA (``span`` head): columns ``question`` and ``context``. Output per row: ``answer`` (the
text the run's evaluation scores), ``score`` (p(start) * p(end), softmax over the window's context
tokens), ``start`` and ``end`` (the answer's character span in ``context``).

In CSV/TSV output the list columns are JSON text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from transferlab.data.build import input_columns
from transferlab.data.files import read_table
from transferlab.data.task import IGNORE, Split, Task
from transferlab.errors import DataError, UserError
from transferlab.models.artifacts import task_from_meta
from transferlab.models.export import HEAD_JSON, load_exported
from transferlab.models.model import TransferModel
from transferlab.store import Store
from transferlab.train.batches import collate, encode, eval_batches
from transferlab.train.shapes import SpanShape, TokenShape, outputs

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


def load_source(source: str | Path, store: Store | None) -> tuple[TransferModel, Task, dict, list]:
    """(model in eval mode, a data-less task of its shape, the run's task spec or {}, the default input
    columns [[text, pair], ...]) for a folder or run."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        if not (folder / HEAD_JSON).is_file():
            raise UserError(f"{folder} is not a transferlab export ({HEAD_JSON} is missing) nor a run id")
        meta = json.loads((folder / HEAD_JSON).read_text(encoding="utf-8"))
        model = load_exported(folder)
        kind = meta.get("kind", "sequence")
        task = task_from_meta({
            "name": folder.name, "problem": meta["problem"], "num_labels": meta["num_outputs"], "metrics": [],
            "main_metric": "", "label_names": meta["label_names"] if meta["problem"] != "regression" else None,
            "modality": "text" if not meta.get("input_adapter") else meta["input_adapter"]["kind"],
            "vocab_size": None, "input_dim": None, "kind": kind, "extra": dict(meta.get("decode") or {})})
        default = {"token": [["tokens", None], ["text", None]], "span": [["question", "context"]]}
        return model, task, {}, meta.get("columns") or default.get(kind, [["text", None]])
    if store is None:
        raise UserError(f"{source!r} is not a folder; to predict with a stored run, give the store (--store)")
    from transferlab.models.artifacts import load_run_model

    model, task = load_run_model(store, str(source))
    task_spec = dict(store.get(str(source)).spec.get("task") or {})
    if task.kind == "span":
        options = task_spec.get("options") or {}
        task.extra.update(doc_stride=options.get("doc_stride"), max_answer_length=options.get("max_answer_length", 30),
                          n_best=options.get("n_best", 20))
    return model, task, task_spec, input_columns(task_spec)


def choose_columns(path: Path, candidates: list, text_column: str | None,
                   text_pair_column: str | None) -> tuple[str, str | None]:
    """The (text, pair) columns to read: the ones given, else the first candidate the file holds (else the
    first candidate, which read_inputs then names as missing). A pair model keeps its pair column."""
    pair_model = candidates[0][1] is not None
    if text_column:
        return text_column, text_pair_column or (candidates[0][1] if pair_model else None)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is not None and path.is_file():
        columns, rows = read_table(path, fmt, blank_lines=False)
        present = set(columns) | (set(rows[0][1]) if rows else set())
        for text, pair in candidates:
            if text in present and (pair is None or pair in present):
                return text, text_pair_column or pair
    return candidates[0][0], text_pair_column or candidates[0][1]


def read_inputs(path: Path, text_column: str, text_pair_column: str | None) -> tuple[list[int], Split]:
    """(line numbers, an unlabelled text Split) of a csv/tsv/jsonl file."""
    path = Path(path).expanduser()
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown input format {path.suffix!r}; use .csv, .tsv or .jsonl")
    try:
        columns, rows = read_table(path, fmt, blank_lines=False)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None
    if not rows:
        raise DataError(f"{path}: no rows to predict")
    texts: dict[str, list[str]] = {}
    for column in filter(None, (text_column, text_pair_column)):
        if column not in columns and not all(column in r for _, r in rows):
            raise DataError(f"{path}: no column {column!r} (--text-column); columns present: {', '.join(columns)}")
        values = []
        for line, row in rows:
            value = row.get(column)
            if value is None or not str(value).strip():
                raise DataError(f"{path}, line {line}: empty {column!r}")
            values.append(str(value))
        texts[column] = values
    labels = np.full(len(rows), -1, dtype=np.int64)
    split = Split(labels, texts[text_column], texts.get(text_pair_column) if text_pair_column else None)
    return [line for line, _ in rows], split


def check_pair_input(path: Path, text_pair_column: str | None) -> None:
    """A model trained on sentence pairs scores pairs: an input without the pair column is refused (it would
    score single sentences silently)."""
    fmt = FORMATS.get(path.suffix.lower())
    if text_pair_column is None or fmt is None or not path.is_file():
        return  # read_inputs names what is wrong
    columns, rows = read_table(path, fmt, blank_lines=False)
    if text_pair_column not in columns and not (rows and all(text_pair_column in r for _, r in rows)):
        raise DataError(f"{path}: the model was trained on sentence pairs and the file has no column "
                        f"{text_pair_column!r} (--text-pair-column); columns present: {', '.join(columns)}")


def torch_device(device: str) -> torch.device:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available here; use cpu or auto")
    try:
        return torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                            "cpu" if device == "auto" else device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a torch device; use cpu, cuda or auto") from None


@torch.no_grad()
def predict_split(model: TransferModel, task: Task, split: Split, *, batch_size: int = 64,
                  device: str = "auto", progress: bool = False) -> np.ndarray:
    """(N, C) class probabilities, or (N,) regression values, in row order; batched, shortest first."""
    dev = torch_device(device)
    model = model.to(dev).eval()
    enc = encode(split, task, model.backbone.tokenizer, model.backbone.max_length)
    regression = task.problem == "regression"
    out = np.zeros((len(split),) if regression else (len(split), task.num_outputs), dtype=np.float64)
    for index in tqdm(eval_batches(enc, batch_size), desc="predict", unit="batch", disable=not progress,
                      leave=False, dynamic_ncols=True):
        batch = {k: v.to(dev) for k, v in collate(enc, index, regression).items() if k != "labels"}
        logits = model(**batch).float()
        out[index] = (logits.squeeze(-1) if regression else logits.softmax(-1)).cpu().numpy()
    return out


# ---------------------------------------------------------------- token classification


def read_words(path: Path, column: str) -> tuple[list[int], list[list[str]], list[str], list[list[tuple]]]:
    """(line numbers, words, texts, word character spans) of a file: ``column`` a list of words (the
    text is them joined by single spaces) or a string (split at whitespace)."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown input format {path.suffix!r}; use .csv, .tsv or .jsonl")
    columns, rows = read_table(path, fmt, blank_lines=False)
    if not rows:
        raise DataError(f"{path}: no rows to predict")
    if column not in columns and not all(column in r for _, r in rows):
        raise DataError(f"{path}: no column {column!r} (--text-column; a list of words or a text); "
                        f"columns present: {', '.join(columns)}")
    lines, words, texts, spans = [], [], [], []
    for line, row in rows:
        value = row.get(column)
        text = " ".join(str(w) for w in value) if isinstance(value, list) else str(value or "")
        found = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        if isinstance(value, list) and (len(found) != len(value) or not all(str(w).strip() for w in value)):
            raise DataError(f"{path}, line {line}: {column!r} holds an empty word or a word with a space")
        if not found:
            raise DataError(f"{path}, line {line}: empty {column!r}")
        lines.append(line)
        words.append([text[a:b] for a, b in found])
        texts.append(text)
        spans.append(found)
    return lines, words, texts, spans


def group_entities(tags: list[str], scores: list[float], spans: list[tuple], text: str) -> list[dict]:
    """Word tags -> entities, as HF's token-classification pipeline groups words (``group_entities``):
    a word joins the open entity when its type is the same and its tag is not ``B-``; ``O`` is dropped."""
    entities, group, kind = [], [], None

    def close():
        if group and kind != "O":
            start, end = spans[group[0]][0], spans[group[-1]][1]
            entities.append({"entity_group": kind, "score": float(np.mean([scores[k] for k in group])),
                             "word": text[start:end], "start": start, "end": end})

    for k, tag in enumerate(tags):
        bi, typ = (tag[:1], tag[2:]) if tag[:2] in ("B-", "I-") else ("I", tag)
        if group and typ == kind and bi != "B":
            group.append(k)
            continue
        close()
        group, kind = [k], typ
    close()
    return entities


def predict_tokens(model: TransferModel, task: Task, words: list[list[str]], texts: list[str],
                   spans: list[list[tuple]], batch_size: int, dev: torch.device) -> pd.DataFrame:
    """Tags per word (argmax at the first subword, as TokenShape.decode) with their probabilities, and
    the entities they make."""
    width = max(len(w) for w in words)
    split = Split(np.full((len(words), width), IGNORE, dtype=np.int64), words=words)
    enc = TokenShape.encode(split, task, model.backbone.tokenizer, model.backbone.max_length)
    tags: list[list[str]] = [[] for _ in words]
    scores: list[list[float]] = [[] for _ in words]
    for index, logits in outputs(model, enc, batch_size, dev):
        for row, i in enumerate(index):
            first = logits[row, enc.extra["first"][i]].astype(np.float64)
            probs = np.exp(first - first.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            best = first.argmax(-1)
            tags[i] = [task.label_names[int(t)] for t in best]
            scores[i] = probs[np.arange(len(best)), best].tolist()
    entities = [group_entities(t, s, sp, x) for t, s, sp, x in zip(tags, scores, spans, texts)]
    return pd.DataFrame({"tags": tags, "entities": entities})


# ---------------------------------------------------------------- extractive QA


def predict_spans(model: TransferModel, task: Task, split: Split, batch_size: int,
                  dev: torch.device) -> pd.DataFrame:
    """The best answer of every question (the one the run's evaluation scores), its probability and span."""
    enc = SpanShape.encode(split, task, model.backbone.tokenizer, model.backbone.max_length)
    found = SpanShape.spans(outputs(model, enc, batch_size, dev), enc, task)
    rows = []
    for i, context in enumerate(split.text_pairs):
        best = (found.get(i) or [(0.0, 0.0, 0, 0)])[0]
        rows.append({"answer": context[best[2]:best[3]], "score": best[1], "start": best[2], "end": best[3]})
    return pd.DataFrame(rows, columns=["answer", "score", "start", "end"])


def qa_split(path: Path, columns: tuple[str, str]) -> tuple[list[int], Split]:
    lines, split = read_inputs(path, *columns)
    n = len(split)
    targets = [{"id": str(line), "answers": [], "starts": []} for line in lines]
    return lines, Split(np.zeros((n, 2), dtype=np.int64), split.texts, split.text_pairs, targets=targets)


def to_frame(values: np.ndarray, task: Task, lines: list[int] | None = None) -> pd.DataFrame:
    frame = pd.DataFrame({"line": lines} if lines is not None else {})
    if task.problem == "regression":
        frame["prediction"] = values
        return frame
    names = [str(n) for n in (task.label_names or range(task.num_outputs))]
    best = values.argmax(1)
    frame["label"] = [names[i] for i in best]
    frame["score"] = values[np.arange(len(values)), best]
    for i, name in enumerate(names):
        frame[f"prob_{name}"] = values[:, i]
    return frame


def predict(source: str | Path, input: str | Path | None = None, *, store: Store | None = None,
            split: str | None = None, text_column: str | None = None, text_pair_column: str | None = None,
            batch_size: int = 64, device: str = "auto", progress: bool = False) -> pd.DataFrame:
    """Predictions of ``source`` (a run or an export folder) on ``input`` (a file) or ``split`` (the
    run's task's split, e.g. its unlabelled ``test``), as a DataFrame in input order."""
    if (input is None) == (split is None):
        raise UserError("predict: give an input file or a split of the run's task, not both")
    if batch_size < 1:
        raise UserError(f"predict: batch size {batch_size} must be at least 1")
    model, task, task_spec, candidates = load_source(source, store)
    if task.modality != "text":
        raise UserError(f"predict reads text files; this model takes {task.modality} inputs")
    lines, rows = None, None
    if split is not None:
        rows = task_split(task_spec, split)
    elif task.kind == "sequence":
        text_column, text_pair_column = choose_columns(Path(input), candidates, text_column, text_pair_column)
        check_pair_input(Path(input), text_pair_column)
        lines, rows = read_inputs(Path(input), text_column, text_pair_column)
    if task.kind == "sequence":
        values = predict_split(model, task, rows, batch_size=batch_size, device=device, progress=progress)
        return to_frame(values, task, lines)
    dev = torch_device(device)
    model = model.to(dev).eval()
    if task.kind == "token":
        if rows is not None:
            words = rows.words
            texts = [" ".join(w) for w in words]
            spans = [[(m.start(), m.end()) for m in re.finditer(r"\S+", t)] for t in texts]
        else:
            column, _ = choose_columns(Path(input), candidates, text_column, None)
            lines, words, texts, spans = read_words(Path(input).expanduser(), column)
        frame = predict_tokens(model, task, words, texts, spans, batch_size, dev)
    else:
        if rows is None:
            lines, rows = qa_split(Path(input), choose_columns(Path(input), candidates, text_column, text_pair_column))
        frame = predict_spans(model, task, rows, batch_size, dev)
        if split is not None:
            frame.insert(0, "id", [t["id"] for t in rows.targets])
    if lines is not None:
        frame.insert(0, "line", lines)
    return frame


def task_split(task_spec: dict, split: str) -> Split:
    """The whole ``split`` of a stored run's task."""
    if not task_spec:
        raise UserError("predict: a split needs a stored run (an export folder does not know its data)")
    from transferlab.data.build import build_task
    from transferlab.spec import TaskSpec, spec_from_dict

    built = build_task(spec_from_dict({**task_spec, "max_eval_samples": None}, TaskSpec))  # the whole split
    if split not in built.splits:
        raise UserError(f"predict: task {built.name} has no split {split!r}; splits: {', '.join(built.splits)}")
    return built.splits[split]


def as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """List columns (tags, entities) as JSON text, for CSV/TSV."""
    out = frame.copy()
    for column in out.columns:
        if out[column].map(lambda v: isinstance(v, list | dict)).any():
            out[column] = out[column].map(json.dumps)
    return out


def write_predictions(frame: pd.DataFrame, path: Path) -> Path:
    """CSV, TSV or JSONL by the suffix of ``path``."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"--output {path}: unknown format {path.suffix!r}; use .csv, .tsv or .jsonl")
    try:
        if fmt == "jsonl":
            frame.to_json(path, orient="records", lines=True)
        else:
            as_text(frame).to_csv(path, index=False, sep="," if fmt == "csv" else "\t")
    except OSError as e:
        raise UserError(f"--output {path}: cannot write: {e.strerror or e}") from None
    return path
