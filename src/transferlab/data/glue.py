"""The GLUE tasks, from a GLUE-layout folder (``task.path``) or the hub (``nyu-mll/glue``).

Folder layout (the official GLUE download): ``train.tsv``, ``dev.tsv`` and an
optional unlabelled ``test.tsv`` (MNLI: ``dev_matched.tsv``, ``dev_mismatched.tsv``,
``test_matched.tsv``, ``test_mismatched.tsv``). ``task.path`` may also be the GLUE
root holding the task folder (``RTE``, ``STS-B``, ...). Files are read with
``csv.QUOTE_NONE`` (bare quotes occur) and ``utf-8-sig`` (byte-order marks occur);
CoLA's train/dev files have no header (source, label, original label, sentence).

Label ids follow the hub's ClassLabel order:

    rte, qnli     entailment=0, not_entailment=1   (files hold the names)
    mnli          entailment=0, neutral=1, contradiction=2   (files hold the names)
    wnli          not_entailment=0, entailment=1   (files hold 0/1)
    mrpc          not_equivalent=0, equivalent=1   (files hold 0/1)
    qqp           not_duplicate=0, duplicate=1     (files hold 0/1)
    cola          unacceptable=0, acceptable=1     (files hold 0/1)
    sst-2         negative=0, positive=1           (files hold 0/1)
    sts-b         a float score 0-5 (regression)

Splits: ``train``, ``dev`` and, when present, ``test`` (labels -1 / NaN). MNLI has
``dev`` (matched) and ``dev_mm`` (mismatched), and ``test``/``test_mm``; the task
``mnli-mm`` uses the mismatched sets as ``dev``/``test``. An ``mnli`` run selects on
``dev`` (matched accuracy, its main metric) and evaluates ``dev_mm`` with the final weights too
(``task.extra["eval_splits"]``; both are stored with the run). Each task reads its own
columns: ``task.text_column``/``label_column`` are not used, and ``text_pair_column``
is refused for the single-sentence tasks (cola, sst-2). Rows with fewer fields
than needed are skipped, as the hub's loader does; their count is warned about
and kept in ``task.extra["skipped_rows"]``.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferlab.data.common import HUB_OPTIONS, check_options, load_hub
from transferlab.data.task import TASKS, Split, Task
from transferlab.errors import DataError, SpecError


@dataclass(frozen=True)
class Glue:
    """How one GLUE task is read: its columns in the files and on the hub, labels and metrics."""

    folder: str  # folder name in the GLUE download
    hub: str  # config name of nyu-mll/glue
    columns: tuple[str, ...]  # text (and pair) columns in the TSV files
    hub_columns: tuple[str, ...]  # the same on the hub
    label_column: str  # in the TSV files (CoLA: index 1 of a headerless file)
    label_names: tuple[str, ...] | None  # None: regression
    file_labels: tuple[str, ...] | None  # label strings in the files, in id order
    metrics: tuple[str, ...]
    main: str
    files: tuple[tuple[str, str, str], ...] = (
        ("train", "train.tsv", "train"),
        ("dev", "dev.tsv", "validation"),
        ("test", "test.tsv", "test"),
    )  # (split, file, hub split); train and dev are required

    @property
    def pair(self) -> bool:
        return len(self.columns) == 2


BINARY = ("0", "1")
NLI2 = ("entailment", "not_entailment")
NLI3 = ("entailment", "neutral", "contradiction")
MNLI_M = (("train", "train.tsv", "train"), ("dev", "dev_matched.tsv", "validation_matched"),
          ("dev_mm", "dev_mismatched.tsv", "validation_mismatched"),
          ("test", "test_matched.tsv", "test_matched"), ("test_mm", "test_mismatched.tsv", "test_mismatched"))
MNLI_MM = (("train", "train.tsv", "train"), ("dev", "dev_mismatched.tsv", "validation_mismatched"),
           ("test", "test_mismatched.tsv", "test_mismatched"))
S12 = ("sentence1", "sentence2")

GLUE: dict[str, Glue] = {
    "cola": Glue("CoLA", "cola", ("sentence",), ("sentence",), "label", ("unacceptable", "acceptable"),
                 BINARY, ("matthews",), "matthews"),
    "sst-2": Glue("SST-2", "sst2", ("sentence",), ("sentence",), "label", ("negative", "positive"),
                  BINARY, ("accuracy",), "accuracy"),
    "mrpc": Glue("MRPC", "mrpc", ("#1 String", "#2 String"), S12, "Quality", ("not_equivalent", "equivalent"),
                 BINARY, ("accuracy", "f1"), "f1"),
    "qqp": Glue("QQP", "qqp", ("question1", "question2"), ("question1", "question2"), "is_duplicate",
                ("not_duplicate", "duplicate"), BINARY, ("accuracy", "f1"), "f1"),
    "sts-b": Glue("STS-B", "stsb", S12, S12, "score", None, None, ("pearson", "spearman"), "spearman"),
    "mnli": Glue("MNLI", "mnli", S12, ("premise", "hypothesis"), "gold_label", NLI3, NLI3,
                 ("accuracy",), "accuracy", MNLI_M),
    "mnli-mm": Glue("MNLI", "mnli", S12, ("premise", "hypothesis"), "gold_label", NLI3, NLI3,
                    ("accuracy",), "accuracy", MNLI_MM),
    "qnli": Glue("QNLI", "qnli", ("question", "sentence"), ("question", "sentence"), "label", NLI2, NLI2,
                 ("accuracy",), "accuracy"),
    "rte": Glue("RTE", "rte", S12, S12, "label", NLI2, NLI2, ("accuracy",), "accuracy"),
    "wnli": Glue("WNLI", "wnli", S12, S12, "label", ("not_entailment", "entailment"), BINARY,
                 ("accuracy",), "accuracy"),
}
ALIASES = {"sts-b": ("stsb",), "sst-2": ("sst2",)}


def read_tsv(path: Path) -> list[tuple[int, list[str]]]:
    """[(line number, fields)] of every row of a GLUE TSV file, header included."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        rows = [(reader.line_num, row) for row in reader]
    if not rows:
        raise DataError(f"{path}: the file is empty")
    return rows


def _parse_label(g: Glue, text: str, path: Path, line: int) -> float | int:
    if g.label_names is None:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not np.isfinite(value):
            raise DataError(f"{path}, line {line}: score {text!r} is not a finite number")
        return value
    if text not in g.file_labels:
        raise DataError(f"{path}, line {line}: label {text!r} is not one of {', '.join(g.file_labels)}")
    return g.file_labels.index(text)


def load_glue_file(name: str, path: str | Path, split: str = "train") -> tuple[Split, int]:
    """One GLUE TSV file as a Split, and the number of short rows skipped.

    ``name`` is a GLUE task name (``rte``, ``sts-b``, ...). A file without the label
    column (a test file) gives labels -1 (classification) or NaN (regression).
    """
    g = GLUE[name]
    path = Path(path)
    if not path.is_file():
        raise DataError(f"task {name}: file {path} does not exist")
    rows = read_tsv(path)
    header = None if name == "cola" and rows[0][1] != ["index", "sentence"] else rows.pop(0)[1]
    if header is None:  # CoLA train/dev have no header: source, label, original label, sentence
        text_idx, label_idx = [3], 1
    else:
        missing = [c for c in g.columns if c not in header]
        if missing:
            raise DataError(f"{path}: no column {missing[0]!r}; columns present: {', '.join(header)}")
        text_idx = [header.index(c) for c in g.columns]
        label_idx = header.index(g.label_column) if g.label_column in header else None
    if not rows:
        raise DataError(f"{path}: the file holds no examples")
    if label_idx is None and split in ("train", "dev"):
        raise DataError(f"{path}: no label column {g.label_column!r}; columns present: {', '.join(header)}")
    needed = max([*text_idx, -1 if label_idx is None else label_idx])
    texts, pairs, labels, skipped = [], [], [], 0
    for line, row in rows:
        if len(row) <= needed:
            skipped += 1
            continue
        texts.append(row[text_idx[0]])
        if g.pair:
            pairs.append(row[text_idx[1]])
        if label_idx is not None:
            labels.append(_parse_label(g, row[label_idx], path, line))
    if label_idx is None:
        labels = [-1] * len(texts) if g.label_names else [float("nan")] * len(texts)
    dtype = np.int64 if g.label_names else np.float32
    return Split(np.asarray(labels, dtype=dtype), texts, pairs if g.pair else None), skipped


def _folder(g: Glue, root: Path, name: str = "") -> Path:
    if not root.is_dir():
        raise DataError(f"task.path: folder {root} does not exist")
    other = next((x.folder for x in GLUE.values() if x.folder.lower() == root.name.lower()), None)
    if other is not None and other != g.folder:  # never read another task's files as this task's
        raise SpecError(f"task.path: {root} is the GLUE {other} folder, but task.name is {name or g.hub}; point "
                        f"task.path at the {g.folder} folder (or the GLUE root holding it), or set task.name")
    first = g.files[0][1]
    if not (root / first).exists() and (root / g.folder).is_dir():
        return root / g.folder  # the GLUE root holding the task folder
    return root


def check_path(spec) -> None:
    """Before a run starts: a GLUE task's ``task.path`` must not be another GLUE task's folder."""
    name = TASKS.canonical(spec.name) if spec.name in TASKS else spec.name
    if name in GLUE and spec.path is not None and Path(spec.path).expanduser().is_dir():
        _folder(GLUE[name], Path(spec.path).expanduser(), name)


def _from_folder(name: str, g: Glue, spec) -> tuple[dict[str, Split], dict[str, int]]:
    root = _folder(g, Path(spec.path).expanduser(), name)
    explicit = {"train": spec.train_file, "dev": spec.dev_file, "test": spec.test_file}
    splits, skipped = {}, {}
    for split, file, _ in g.files:
        path = root / (explicit.get(split) or file)
        if not path.is_file():
            if split in ("train", "dev") or explicit.get(split):
                raise DataError(f"task {name}: file {path} does not exist (task.path is {spec.path})")
            continue
        splits[split], n = load_glue_file(name, path, split)
        if n:
            skipped[split] = n
            warnings.warn(f"task {name}: skipped {n} short rows in {path}", stacklevel=2)
    return splits, skipped


def _from_hub(name: str, g: Glue, spec) -> dict[str, Split]:
    data = load_hub("nyu-mll/glue", g.hub, spec)
    splits = {}
    for split, _, hub_split in g.files:
        if hub_split not in data:
            continue
        ds = data[hub_split]
        labels = np.asarray(ds["label"], dtype=np.int64 if g.label_names else np.float32)
        if g.label_names is None and split.startswith("test") and (labels == -1).all():
            labels = np.full(len(labels), np.nan, dtype=np.float32)  # the hub marks no score with -1
        pairs = list(ds[g.hub_columns[1]]) if g.pair else None
        splits[split] = Split(labels, list(ds[g.hub_columns[0]]), pairs)
    return splits


def _check_spec(name: str, g: Glue, spec) -> None:
    check_options(spec, HUB_OPTIONS)
    if spec.text_pair_column is not None and not g.pair:
        raise SpecError(
            f"task.text_pair_column: {name} is a single-sentence task; remove text_pair_column "
            f"(GLUE tasks read their own columns)"
        )
    problem = "classification" if g.label_names else "regression"
    if spec.problem not in ("auto", problem):
        raise SpecError(f"task.problem: {name} is a {problem} task, not {spec.problem}")
    if spec.labels is not None:
        raise SpecError(f"task.labels: {name} has a fixed label set; leave task.labels unset")


def build_glue(name: str, spec) -> Task:
    """The GLUE task ``name`` from ``spec.path`` (a GLUE-layout folder) or, when null, the hub."""
    g = GLUE[name]
    _check_spec(name, g, spec)
    skipped: dict[str, int] = {}
    source = f"hub:nyu-mll/glue/{g.hub}"
    if spec.path is None:
        splits = _from_hub(name, g, spec)
    else:
        splits, skipped = _from_folder(name, g, spec)
        source = str(_folder(g, Path(spec.path).expanduser(), name))  # the folder read (the task's, under a root)
    return Task(
        name=name,
        splits=splits,
        problem="classification" if g.label_names else "regression",
        num_labels=len(g.label_names) if g.label_names else 1,
        metrics=g.metrics,
        main_metric=g.main,
        label_names=list(g.label_names) if g.label_names else None,
        extra={"pair": g.pair, "source": source, "skipped_rows": skipped,
               # evaluated at the end besides dev (train/extra_evals.py): MNLI's mismatched dev set
               "eval_splits": [n for n in ("dev_mm",) if n in splits and splits[n].labelled]},
    )


def _register(name: str) -> None:
    TASKS.register(name, *ALIASES.get(name, ()))(lambda spec: build_glue(name, spec))


for _name in GLUE:
    _register(_name)
