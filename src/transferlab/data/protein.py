"""Protein sequence classification (e.g. TAPE remote homology, FPT's protein task) from FASTA or TSV.

    task: {name: protein, path: data/homology}          # train.fasta, dev.fasta[, test.fasta]
    task: {name: protein, path: folds.tsv, label_column: fold_label}   # one file, split seeded

Residues are token ids (modality ``tokens``, padding id 0) over the 20 standard amino acids and
the IUPAC/TAPE extras X (unknown), B, Z, U, O; lower case is read as upper case. Any other symbol
(a gap ``-``, a stop ``*``, a digit) is a DataError naming the file, line and symbol.

* FASTA: the label is ``label=<value>`` in the header when present, else the header's last word
  (``>d1a0aa_ b.1.18.2``); a sequence may span several lines.
* TSV (``.tsv``; ``.csv`` with commas): the sequence column is ``task.text_column`` (when absent:
  ``sequence`` or ``primary``), the label column ``task.label_column``.

Splits: ``task.path`` a folder with ``train``/``dev``[/``test``] files of one format (``format``:
fasta | tsv | csv, default fasta), or ``train_file``..., or one file cut into seeded, stratified dev
and test parts (``dev_fraction``, ``test_fraction`` 0.1, ``split_seed`` 0). ``max_tokens`` crops
longer sequences to their first residues (as protein models do); without it the longest
sequence must fit the backbone's positions. Labels: ``task.labels`` or the sorted train labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transferlab.data.common import carve, check_options
from transferlab.data.files import read_table
from transferlab.data.listops import split_paths
from transferlab.data.task import TASKS, Split, Task
from transferlab.errors import DataError, SpecError

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY" + "XBZUO"
TOKEN_ID = {a: i + 1 for i, a in enumerate(AMINO_ACIDS)}  # 0 is padding
OPTIONS = ("format", "max_tokens", "dev_fraction", "test_fraction", "split_seed")
Record = tuple[int, str, str]  # (line of the record's start, sequence, label)


def read_fasta(path: Path) -> list[Record]:
    records: list[Record] = []
    header, start, parts = None, 0, []

    def flush():
        if header is None:
            return
        if not parts:
            raise DataError(f"{path}, line {start}: the record has no sequence")
        fields = header.split()
        tagged = [f[6:] for f in fields if f.startswith("label=")]
        if not tagged and len(fields) < 2:
            raise DataError(f"{path}, line {start}: no label in the header (expected 'label=...' or '>id label')")
        records.append((start, "".join(parts), tagged[0] if tagged else fields[-1]))

    with open(path, encoding="utf-8-sig") as f:
        for line, text in enumerate(f, start=1):
            text = text.strip()
            if not text or text.startswith(";"):
                continue
            if text.startswith(">"):
                flush()
                header, start, parts = text[1:], line, []
            elif header is None:
                raise DataError(f"{path}, line {line}: sequence data before the first '>' header")
            else:
                parts.append(text)
    flush()
    return records


def read_sequences(path: Path, fmt: str, spec) -> list[Record]:
    if not path.is_file():
        raise DataError(f"protein file {path} does not exist")
    if fmt == "fasta":
        records = read_fasta(path)
    else:
        columns, rows = read_table(path, fmt)
        seq_col = spec.text_column if spec.text_column in columns else next(
            (c for c in ("sequence", "primary") if c in columns), None)
        if seq_col is None or spec.label_column not in columns:
            raise DataError(f"{path}: needs a sequence column (task.text_column {spec.text_column!r}, 'sequence' or "
                            f"'primary') and the label column {spec.label_column!r}; columns: {', '.join(columns)}")
        records = [(line, row[seq_col], row[spec.label_column].strip()) for line, row in rows]
    if not records:
        raise DataError(f"{path}: no sequences")
    return records


def encode(records: list[Record], path: Path, max_tokens: int | None) -> np.ndarray:
    """Residues -> (N, T) ids, right-padded with 0; an unknown symbol is a DataError."""
    rows = []
    for line, seq, _ in records:
        seq = seq.strip().upper()
        if not seq:
            raise DataError(f"{path}, line {line}: empty sequence")
        try:
            ids = [TOKEN_ID[a] for a in seq]
        except KeyError as e:
            raise DataError(f"{path}, line {line}: unknown amino-acid symbol {e.args[0]!r} at position "
                            f"{seq.index(e.args[0]) + 1}; allowed: {AMINO_ACIDS}") from None
        rows.append(ids[:max_tokens] if max_tokens else ids)
    out = np.zeros((len(rows), max(map(len, rows))), dtype=np.int64)
    for i, ids in enumerate(rows):
        out[i, : len(ids)] = ids
    return out


def _label_names(spec, train: list[Record]) -> list[str]:
    if spec.labels is not None:
        return [str(x) for x in spec.labels]
    keys = {r[2] for r in train}
    return sorted(keys, key=int) if all(k.lstrip("-").isdigit() for k in keys) else sorted(keys)


@TASKS.register("protein", "protein_classification")
def protein(spec) -> Task:
    """Protein sequences -> classes (see the module doc)."""
    options = check_options(spec, OPTIONS)
    fmt = options.get("format", "fasta")
    if fmt not in ("fasta", "tsv", "csv"):
        raise SpecError(f"task.options.format: {fmt!r} is not allowed; allowed: 'fasta', 'tsv', 'csv'")
    if spec.problem == "regression":
        raise SpecError("task.problem: protein is a classification task")
    max_tokens = options.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise SpecError(f"task.options.max_tokens: expected an integer >= 1, got {max_tokens!r}")
    if spec.path is None and spec.train_file is None:
        raise SpecError("task.path: the protein task needs a FASTA/TSV file or a folder of train/dev[/test] files")
    paths = split_paths(spec, fmt)
    if isinstance(paths, Path):
        fmt = {".tsv": "tsv", ".csv": "csv"}.get(paths.suffix.lower(), fmt)
        paths = {"all": paths}
    records = {split: read_sequences(path, fmt, spec) for split, path in paths.items()}
    names = _label_names(spec, records.get("train", records.get("all")))
    splits = {}
    for split, recs in records.items():
        unknown = [r for r in recs if r[2] not in names]
        if unknown:
            raise DataError(f"{paths[split]}, line {unknown[0][0]}: label {unknown[0][2]!r} is not one of the "
                            f"{len(names)} labels of the train data")
        labels = np.array([names.index(r[2]) for r in recs], dtype=np.int64)
        splits[split] = Split(labels, inputs=encode(recs, paths[split], max_tokens))
    if "all" in splits:
        seed = int(options.get("split_seed", 0))
        dev, test = float(options.get("dev_fraction", 0.1)), float(options.get("test_fraction", 0.1))
        if dev + test >= 1:
            raise SpecError(f"task.options: dev_fraction + test_fraction must be below 1, got {dev + test}")
        rest, splits["test"] = carve(splits.pop("all"), test, seed)
        splits["train"], splits["dev"] = carve(rest, dev / (1 - test), seed + 1)  # fractions of all
    return Task(
        name="protein", splits=splits, problem="classification", num_labels=len(names), metrics=("accuracy",),
        main_metric="accuracy", label_names=names, modality="tokens", vocab_size=len(AMINO_ACIDS) + 1,
        extra={"pad_id": 0, "num_tokens": max(s.inputs.shape[1] for s in splits.values())},
    )
