"""Generic text tasks from the user's own files: ``csv``, ``tsv`` and ``jsonl``.

    task: {name: csv, path: data/reviews, text_column: review, label_column: stars}

``task.path`` is a folder with ``train.<ext>``, ``dev.<ext>`` and an optional
``test.<ext>``; ``task.train_file`` / ``dev_file`` / ``test_file`` name other files
(relative to ``task.path`` when it is set). CSV files are read with standard
quoting, TSV files with none (``options.quoting: minimal`` turns it on), both as
``utf-8-sig``. JSONL files hold one object per line.

Columns: ``text_column``, ``label_column`` and, for sentence pairs,
``text_pair_column`` (pairs are used iff it is set). A test file without the label
column is unlabelled (labels -1 / NaN).

Labels: ``problem: auto`` picks regression when every train label is a number and
some are not integers, else classification. The label set and its order are
``task.labels`` when given, else the sorted unique train labels (numerically when
all are integers). For two classes, ``f1`` counts the second label as positive.

Contracts (each a DataError or SpecError naming the file and line): CSV quoting is strict (an
unterminated quote is an error, not rows merged into one field); header columns and JSON keys are
unique; ``text_column``, ``text_pair_column`` and ``label_column`` are distinct; texts are non-blank
strings (a JSON object or number is not text); a label written as a missing value (NaN, NA, null) is
an error in train and dev; cells may be as large as the data needs (the csv module's 128 KiB field limit
is lifted). Hub data sets get the same text and label checks (data/hub.py).

Options: ``dev_fraction`` (carve a seeded, stratified dev split out of train when
there is no dev file), ``split_seed`` (0), ``quoting`` (``none`` | ``minimal``),
``metrics`` and ``main_metric`` (override the defaults).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

from transferlab.checks import check_utf8
from transferlab.data.common import carve, check_options
from transferlab.data.metrics import METRICS, check_metrics
from transferlab.data.task import TASKS, Split, Task
from transferlab.errors import DataError, SpecError

OPTIONS = ("dev_fraction", "split_seed", "quoting", "metrics", "main_metric")
Row = tuple[int, dict]  # (line number in the file, {column: value})
MISSING = ("nan", "na", "n/a", "null", "none")  # a label written as a missing value is an error, not a class
# the csv module refuses fields over 128 KiB by default; a long document is a valid cell (the data decides)
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def read_table(path: Path, fmt: str, quoting: str | None = None,
               blank_lines: bool = True) -> tuple[list[str], list[Row]]:
    """(columns, rows) of a csv/tsv/jsonl file; every malformed row is a DataError naming the line.
    ``blank_lines=False``: a blank line before the last row is an error too (rows must keep their places)."""
    if not path.is_file():
        raise DataError(f"file {path} does not exist")
    header, rows, blanks = _read_jsonl(path) if fmt == "jsonl" else _read_delimited(path, fmt, quoting)
    inner = [n for n in blanks if rows and n < rows[-1][0]]
    if not blank_lines and inner:
        raise DataError(f"{path}, line {inner[0]}: empty row")
    return header, rows


def _read_delimited(path: Path, fmt: str, quoting: str | None) -> tuple[list[str], list[Row], list[int]]:
    quoting = quoting or ("minimal" if fmt == "csv" else "none")
    if quoting not in ("none", "minimal"):
        raise SpecError(f"task.options.quoting: {quoting!r} is not allowed; allowed: 'none', 'minimal'")
    check_utf8(path, "data file")  # a bad byte is one line naming the file and line, not a traceback
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(
            f,
            delimiter="," if fmt == "csv" else "\t",
            quoting=csv.QUOTE_NONE if quoting == "none" else csv.QUOTE_MINIMAL,
            strict=True,  # an unterminated quote is an error, not rows merged into one field
        )
        rows, blanks = [], []
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: the file is empty (expected a header row)")
            _unique_columns(path, header)
            _delimited_rows(path, reader, header, rows, blanks)
        except csv.Error as e:
            start = max([rows[-1][0] if rows else 1, *blanks]) + 1  # the line after the last complete row
            what = "a quoted field opened here is never closed" if "end of data" in str(e) else str(e)
            raise DataError(f"{path}, line {start}: malformed {fmt.upper()} row ({what})") from None
    return header, rows, blanks


def _unique_columns(path: Path, header: list[str]) -> None:
    seen = set()
    for name in header:
        if name in seen:
            raise DataError(f"{path}, line 1: column {name!r} appears twice in the header; columns must be unique")
        seen.add(name)


def _delimited_rows(path: Path, reader, header: list[str], rows: list[Row], blanks: list[int]) -> None:
    for row in reader:
        if not row:
            blanks.append(reader.line_num)
            continue
        if len(row) != len(header):
            raise DataError(f"{path}, line {reader.line_num}: {len(row)} fields, the header has {len(header)}")
        rows.append((reader.line_num, dict(zip(header, row))))


def _read_jsonl(path: Path) -> tuple[list[str], list[Row], list[int]]:
    rows, blanks = [], []
    check_utf8(path, "data file")
    with open(path, encoding="utf-8-sig") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                blanks.append(line)
                continue
            try:
                obj = json.loads(text, object_pairs_hook=_no_duplicate_keys)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {line}: not valid JSON ({e.msg})") from None
            except ValueError as e:
                raise DataError(f"{path}, line {line}: {e}") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}, line {line}: expected a JSON object, got {type(obj).__name__}")
            rows.append((line, obj))
    return (list(rows[0][1]) if rows else []), rows, blanks


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise ValueError(f"key {key!r} appears twice in one object; keys must be unique")
    return dict(pairs)


def check_columns(spec) -> None:
    """The text, pair and label columns of a task are distinct columns."""
    if spec.text_column == spec.label_column:
        raise SpecError(f"task.text_column: {spec.text_column!r} is also task.label_column; the text and the "
                        "label must be different columns")
    if spec.text_pair_column is not None and spec.text_pair_column in (spec.text_column, spec.label_column):
        raise SpecError(f"task.text_pair_column: {spec.text_pair_column!r} is also task.text_column or "
                        "task.label_column; a pair needs a column of its own")


def text_values(values: list[tuple[str, object]], column: str) -> list[str]:
    """(where, raw value) pairs -> texts; a missing, non-string or blank text is a DataError naming ``where``."""
    out = []
    for where, value in values:
        if value is None:
            raise DataError(f"{where}: no value in column {column!r}")
        if not isinstance(value, str):
            raise DataError(f"{where}: column {column!r} holds a {type(value).__name__}, expected text")
        if not value.strip():
            raise DataError(f"{where}: the text in column {column!r} is empty")
        out.append(value)
    return out


def _column(path: Path, columns: list[str], rows: list[Row], name: str, field: str) -> None:
    if name not in columns and not (rows and all(name in r for _, r in rows)):
        raise DataError(f"{path}: no column {name!r} (task.{field}); columns present: {', '.join(columns)}")


def _key(value) -> str:
    """A label as the string it is compared by (1, 1.0 and "1" are the same label)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return "" if value is None else str(value).strip()


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def _texts(path: Path, rows: list[Row], column: str) -> list[str]:
    return text_values([(f"{path}, line {line}", row.get(column)) for line, row in rows], column)


def _sorted_labels(keys: set[str]) -> list[str]:
    if all(k.lstrip("-").isdigit() for k in keys):
        return sorted(keys, key=int)
    return sorted(keys)


def _labels(path, rows, spec, problem, names, labelled_required) -> np.ndarray:
    """Label ids (or float targets) of ``rows``; empty values are allowed only where labels are optional."""
    return label_ids([(f"{path}, line {line}", row.get(spec.label_column)) for line, row in rows], problem, names,
                     optional=not labelled_required)


def label_ids(values: list[tuple[str, object]], problem: str, names: list[str], optional: bool) -> np.ndarray:
    """(where, raw value) pairs -> label ids, or float targets for regression; an empty value is an
    unlabelled row (-1 / nan) where labels are ``optional``, else a DataError naming ``where``."""
    out = []
    for where, value in values:
        if isinstance(value, (dict, list)):
            raise DataError(f"{where}: the label is a {type(value).__name__}, expected a class name or a number")
        missing = (isinstance(value, float) and math.isnan(value)
                   or isinstance(value, str) and value.strip().lower() in MISSING)
        if missing and problem != "regression":  # (a regression target 'nan' is refused below as not finite)
            if not optional:
                raise DataError(f"{where}: the label {value!r} is a missing value; give a label or drop the row")
            value = None
        key = _key(value)
        if key == "" and optional:
            out.append(np.nan if problem == "regression" else -1)
        elif problem == "regression":
            number = _number(key)
            if number is None:
                raise DataError(f"{where}: regression target {key!r} is not a finite number")
            out.append(number)
        elif key not in names:
            raise DataError(f"{where}: label {key!r} is not one of the labels {', '.join(names)}")
        else:
            out.append(names.index(key))
    return np.asarray(out, dtype=np.float32 if problem == "regression" else np.int64)


def _resolve(spec, ext: str) -> dict[str, tuple[Path | None, bool]]:
    """{split: (path, explicitly named)} for train/dev/test."""
    root = None if spec.path is None else Path(spec.path).expanduser()
    if root is not None and not root.is_dir():
        raise DataError(
            f"task.path: {root} is not a folder (give a folder with train.{ext}/dev.{ext} "
            f"or set task.train_file)"
        )
    if root is None and spec.train_file is None:
        raise SpecError(
            f"task.path: the {spec.name} task needs a folder with train.{ext} and dev.{ext}, "
            f"or task.train_file and task.dev_file"
        )
    out = {}
    for split, explicit in (("train", spec.train_file), ("dev", spec.dev_file), ("test", spec.test_file)):
        if explicit:
            p = Path(explicit).expanduser()
            out[split] = ((root / p) if root is not None and not p.is_absolute() else p, True)
        else:
            out[split] = (None if root is None else root / f"{split}.{ext}", False)
    return out


def build_files(spec, fmt: str) -> Task:
    """A classification or regression text task from csv/tsv/jsonl files (see the module doc)."""
    options = check_options(spec, OPTIONS)
    check_columns(spec)
    paths = _resolve(spec, fmt)
    dev_fraction = options.get("dev_fraction")
    dev_path, dev_explicit = paths["dev"]
    if dev_fraction is not None and (dev_explicit or (dev_path is not None and dev_path.is_file())):
        raise SpecError(f"task.options.dev_fraction: there is a dev file ({dev_path}); use one or the other")
    tables = {}
    for split, (path, explicit) in paths.items():
        if path is None or not path.is_file():
            if split == "train" or explicit or (split == "dev" and dev_fraction is None):
                hint = " (or set task.options.dev_fraction to cut dev from train)" if split == "dev" else ""
                raise DataError(f"task {spec.name}: {split} file {path} does not exist{hint}")
            continue
        columns, rows = read_table(path, fmt, options.get("quoting"))
        if not rows:
            raise DataError(f"{path}: the {split} file holds no examples")
        for name, field in ((spec.text_column, "text_column"), (spec.text_pair_column, "text_pair_column")):
            if name is not None:
                _column(path, columns, rows, name, field)
        if split != "test":
            _column(path, columns, rows, spec.label_column, "label_column")
        tables[split] = (path, columns, rows)

    path, _, train_rows = tables["train"]
    problem, names = _problem(spec, [_key(r.get(spec.label_column)) for _, r in train_rows])
    splits = {}
    for split, (path, columns, rows) in tables.items():
        has_labels = spec.label_column in columns or any(spec.label_column in r for _, r in rows)
        if has_labels:
            labels = _labels(path, rows, spec, problem, names, labelled_required=split != "test")
        else:
            labels = np.full(len(rows), np.nan if problem == "regression" else -1)
            labels = labels.astype(np.float32 if problem == "regression" else np.int64)
        pairs = None if spec.text_pair_column is None else _texts(path, rows, spec.text_pair_column)
        splits[split] = Split(labels, _texts(path, rows, spec.text_column), pairs)
    if "dev" not in splits:
        seed = int(options.get("split_seed", 0))
        stratify = problem != "regression"
        splits["train"], splits["dev"] = carve(splits["train"], float(dev_fraction), seed, stratify)

    metrics, main = _metrics(options, problem, len(names))
    return Task(
        name=spec.name,
        splits=splits,
        problem=problem,
        num_labels=1 if problem == "regression" else len(names),
        metrics=metrics,
        main_metric=main,
        label_names=None if problem == "regression" else names,
        extra={"pair": spec.text_pair_column is not None, "source": str(tables["train"][0].parent)},
    )


def _problem(spec, train_keys: list[str]) -> tuple[str, list[str]]:
    """(problem, label names) from the spec and the train labels."""
    problem = spec.problem
    if problem == "auto":
        numbers = [_number(k) for k in train_keys]
        numeric = all(v is not None for v in numbers)
        fractional = numeric and any(v % 1 for v in numbers)
        problem = "regression" if spec.labels is None and fractional else "classification"
    if problem == "regression":
        if spec.labels is not None:
            raise SpecError("task.labels: a regression task has no label set; remove task.labels")
        return problem, []
    if spec.labels is not None:
        names = [_key(v) for v in spec.labels]
        if len(set(names)) != len(names) or len(names) < 2:
            raise SpecError(f"task.labels: expected at least two distinct labels, got {spec.labels!r}")
        return problem, names
    names = _sorted_labels({k for k in train_keys if k != ""})
    if len(names) < 2:
        raise SpecError(
            f"task.labels: the train labels hold fewer than two classes ({names}); check task.label_column"
        )
    return problem, names


def _metrics(options: dict, problem: str, num_labels: int) -> tuple[tuple[str, ...], str]:
    if problem == "regression":
        metrics = ("pearson", "spearman", "rmse")
    else:
        metrics = ("accuracy", "f1") if num_labels == 2 else ("accuracy",)
    metrics = tuple(options.get("metrics", metrics))
    main = options.get("main_metric", "spearman" if problem == "regression" else "accuracy")
    if main not in metrics and "main_metric" not in options:
        main = next((m for m in metrics if not METRICS.get(m, field="task.options.metrics").per_class), metrics[0])
    check_metrics(metrics, main, problem)
    return metrics, main


for _fmt in ("csv", "tsv", "jsonl"):
    TASKS.register(_fmt)(lambda spec, fmt=_fmt: build_files(spec, fmt))
