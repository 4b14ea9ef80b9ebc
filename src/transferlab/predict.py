"""Predictions of a stored run or an exported folder on new data, as a pandas DataFrame.

    df = predict("3f2a", "new.csv", store=Store("runs/transferlab.db"))   # a run (uid, run id, prefix)
    df = predict("my-export/", "new.jsonl")                                 # an export folder
    df = predict("3f2a", split="test", store=store)                         # the run's task's test split

Rows keep the input order. Classification: ``label`` (the class name), ``score`` (its
probability) and ``prob_<name>`` for every class; regression: ``prediction``. A ``line``
column gives each row's line in the input file. Text comes from ``text_column`` (default:
the run's ``task.text_column``, or ``text`` for a folder) and, for pairs, ``text_pair_column``.
A missing column, an empty text or a blank row before the last one is a DataError naming
the file and line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from transferlab.data.files import read_table
from transferlab.data.task import Split, Task
from transferlab.errors import DataError, UserError
from transferlab.models.artifacts import task_from_meta
from transferlab.models.export import HEAD_JSON, load_exported
from transferlab.models.model import TransferModel
from transferlab.store import Store
from transferlab.train.batches import collate, encode, eval_batches

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


def load_source(source: str | Path, store: Store | None) -> tuple[TransferModel, Task, dict]:
    """(model in eval mode, a data-less task of its shape, the run's task spec or {}) for a folder or run."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        if not (folder / HEAD_JSON).is_file():
            raise UserError(f"{folder} is not a transferlab export ({HEAD_JSON} is missing) nor a run id")
        meta = json.loads((folder / HEAD_JSON).read_text(encoding="utf-8"))
        model = load_exported(folder)
        task = task_from_meta({
            "name": folder.name, "problem": meta["problem"], "num_labels": meta["num_outputs"], "metrics": [],
            "main_metric": "", "label_names": meta["label_names"] if meta["problem"] != "regression" else None,
            "modality": "text" if not meta.get("input_adapter") else meta["input_adapter"]["kind"],
            "vocab_size": None, "input_dim": None})
        return model, task, {}
    if store is None:
        raise UserError(f"{source!r} is not a folder; to predict with a stored run, give the store (--store)")
    from transferlab.models.artifacts import load_run_model

    model, task = load_run_model(store, str(source))
    return model, task, dict(store.get(str(source)).spec.get("task") or {})


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


@torch.no_grad()
def predict_split(model: TransferModel, task: Task, split: Split, *, batch_size: int = 64,
                  device: str = "auto", progress: bool = False) -> np.ndarray:
    """(N, C) class probabilities, or (N,) regression values, in row order; batched, shortest first."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available here; use cpu or auto")
    try:
        dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                           "cpu" if device == "auto" else device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a torch device; use cpu, cuda or auto") from None
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
    model, task, task_spec = load_source(source, store)
    if task.modality != "text":
        raise UserError(f"predict reads text files; this model takes {task.modality} inputs")
    if split is not None:
        if not task_spec:
            raise UserError("predict: a split needs a stored run (an export folder does not know its data)")
        from transferlab.data.build import build_task
        from transferlab.spec import TaskSpec, spec_from_dict

        built = build_task(spec_from_dict({**task_spec, "max_eval_samples": None}, TaskSpec))  # the whole split
        if split not in built.splits:
            raise UserError(f"predict: task {built.name} has no split {split!r}; splits: {', '.join(built.splits)}")
        lines, rows = None, built.splits[split]
    else:
        text_column = text_column or task_spec.get("text_column") or "text"
        text_pair_column = text_pair_column or task_spec.get("text_pair_column")
        check_pair_input(Path(input), text_pair_column)
        lines, rows = read_inputs(Path(input), text_column, text_pair_column)
    values = predict_split(model, task, rows, batch_size=batch_size, device=device, progress=progress)
    return to_frame(values, task, lines)


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
            frame.to_csv(path, index=False, sep="," if fmt == "csv" else "\t")
    except OSError as e:
        raise UserError(f"--output {path}: cannot write: {e.strerror or e}") from None
    return path
