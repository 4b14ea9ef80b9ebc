"""ListOps (Nangia & Bowman 2018): evaluate nested list operations on digits, a 10-class task.

    [MAX 2 9 [MIN 4 7 ] 0 ]   -> 9

Operators: ``[MIN``, ``[MAX``, ``[MED`` (median, rounded down) and ``[SM`` (sum modulo 10); ``]``
closes a list. Tokens are ids of a fixed vocabulary (modality ``tokens``, padding id 0); the
parentheses of the original release (binary-tree brackets) are dropped unless ``keep_parens``.

Two sources:

* the generator (``task.path`` unset): random trees, root always an operator; options ``max_depth``
  (4), ``max_args`` (5), ``min_tokens`` (1) / ``max_tokens`` (100) by rejection, ``operators``
  (all four), ``value_prob`` (0.25: a non-root node is a digit with this probability; always at
  ``max_depth``), ``balance`` (true: every class equally often), ``num_train`` (10000),
  ``num_dev`` / ``num_test`` (1000), ``data_seed`` (0);
* TSV files with columns ``Target`` and ``Source`` (the original release and Long Range Arena):
  ``task.path`` a folder with ``train.tsv``/``dev.tsv``[/``test.tsv``] (``train_file``... name others),
  or one file, split seeded and stratified (``dev_fraction``, ``test_fraction`` 0.15, ``split_seed``).
  ``max_tokens`` drops longer examples (truncating would change their answer). Every target is
  checked against the evaluator: a mismatch is a DataError naming the line.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from transferlab.data.common import check_options, stratified_split
from transferlab.data.task import TASKS, Split, Task
from transferlab.errors import DataError, SpecError

OPERATORS = {"MIN": min, "MAX": max, "MED": lambda xs: int(np.median(xs)), "SM": lambda xs: sum(xs) % 10}
VOCAB = ["<pad>", *map(str, range(10)), *(f"[{op}" for op in OPERATORS), "]", "(", ")"]
TOKEN_ID = {t: i for i, t in enumerate(VOCAB)}
GEN_OPTIONS = ("max_depth", "max_args", "min_tokens", "max_tokens", "operators", "value_prob", "balance",
               "num_train", "num_dev", "num_test", "data_seed", "keep_parens")
TSV_OPTIONS = ("max_tokens", "keep_parens", "dev_fraction", "test_fraction", "split_seed")


def evaluate(tokens: list[str]) -> int:
    """The value of a ListOps expression given as tokens (parentheses ignored)."""
    stack: list[tuple[str, list[int]]] = []
    value = None
    for i, tok in enumerate(tokens):
        if tok in ("(", ")"):
            continue
        if tok.startswith("[") and tok[1:] in OPERATORS:
            stack.append((tok[1:], []))
        elif tok == "]":
            if not stack or not stack[-1][1]:
                raise ValueError(f"token {i}: ']' closes {'an empty list' if stack else 'nothing'}")
            op, args = stack.pop()
            value = OPERATORS[op](args)
            if stack:
                stack[-1][1].append(value)
        elif tok.isdigit() and len(tok) == 1:
            if not stack:
                if len(tokens) == 1:
                    return int(tok)
                raise ValueError(f"token {i}: digit {tok} outside any list")
            stack[-1][1].append(int(tok))
        else:
            raise ValueError(f"token {i}: unknown symbol {tok!r}; known: {', '.join(VOCAB[1:])}")
    if stack or value is None:
        raise ValueError("unbalanced expression: a list is not closed")
    return value


def generate(rng: np.random.Generator, max_depth: int, max_args: int, operators: list[str],
             value_prob: float) -> list[str]:
    """One random expression as tokens (no parentheses)."""

    def node(depth: int) -> list[str]:
        if depth > 1 and (depth >= max_depth or rng.random() < value_prob):
            return [str(rng.integers(10))]
        op = operators[rng.integers(len(operators))]
        out = [f"[{op}"]
        for _ in range(rng.integers(2, max_args + 1)):
            out += node(depth + 1)
        return out + ["]"]

    return node(1)


def encode(sequences: list[list[str]], keep_parens: bool) -> np.ndarray:
    """Token lists -> (N, T) int64 ids, right-padded with 0."""
    ids = [[TOKEN_ID[t] for t in seq if keep_parens or t not in ("(", ")")] for seq in sequences]
    out = np.zeros((len(ids), max(map(len, ids))), dtype=np.int64)
    for i, row in enumerate(ids):
        out[i, : len(row)] = row
    return out


def _opt(options: dict, key: str, default, kind=int, low=None):
    value = options.get(key, default)
    ok = isinstance(value, kind) and not isinstance(value, bool) if kind is not bool else isinstance(value, bool)
    if not ok or (low is not None and value < low):
        bound = f" >= {low}" if low is not None else ""
        name = "number" if isinstance(kind, tuple) else kind.__name__
        raise SpecError(f"task.options.{key}: expected {name}{bound}, got {value!r}")
    return value


def _generated(spec, options: dict) -> dict[str, tuple[list[list[str]], np.ndarray]]:
    depth, args = _opt(options, "max_depth", 4, low=1), _opt(options, "max_args", 5, low=2)
    low, high = _opt(options, "min_tokens", 1, low=1), _opt(options, "max_tokens", 100, low=4)
    if low > high:
        raise SpecError(f"task.options: min_tokens {low} is above max_tokens {high}")
    ops = options.get("operators", list(OPERATORS))
    if not isinstance(ops, list) or not ops or any(op not in OPERATORS for op in ops):
        raise SpecError(f"task.options.operators: expected a non-empty list of {', '.join(OPERATORS)}, got {ops!r}")
    value_prob = _opt(options, "value_prob", 0.25, kind=(int, float), low=0)
    balance = _opt(options, "balance", True, kind=bool)
    seed = _opt(options, "data_seed", 0, low=0)
    out = {}
    for i, split in enumerate(("train", "dev", "test")):
        n = _opt(options, f"num_{split}", 10000 if split == "train" else 1000, low=1)
        rng = np.random.default_rng([seed, i])
        quota = np.full(10, n // 10) + (np.arange(10) < n % 10) if balance else None
        seqs, labels = [], []
        for _ in range(200 * n + 10000):
            seq = generate(rng, depth, args, ops, float(value_prob))
            if not low <= len(seq) <= high:
                continue
            label = evaluate(seq)
            if quota is not None:
                if quota[label] == 0:
                    continue
                quota[label] -= 1
            seqs.append(seq)
            labels.append(label)
            if len(seqs) == n:
                break
        else:
            raise SpecError(f"task.options: could not generate {n} {split} examples of {low}..{high} tokens "
                            f"with max_depth {depth}, max_args {args} and operators {ops}"
                            f"{' balanced over the 10 classes' if balance else ''}; widen the limits")
        out[split] = (seqs, np.asarray(labels, dtype=np.int64))
    return out


def read_tsv(path: Path) -> tuple[list[list[str]], np.ndarray]:
    """(token lists, targets) of a ``Target<TAB>Source`` file; each target checked by evaluation."""
    if not path.is_file():
        raise DataError(f"ListOps file {path} does not exist")
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or "Target" not in header or "Source" not in header:
            raise DataError(f"{path}: expected a header with columns Target and Source, got {header}")
        t, s = header.index("Target"), header.index("Source")
        seqs, labels = [], []
        for row in reader:
            if not row:
                continue
            line = reader.line_num
            if len(row) != len(header):
                raise DataError(f"{path}, line {line}: {len(row)} fields, the header has {len(header)}")
            tokens = row[s].split()
            try:
                value = evaluate(tokens)
            except ValueError as e:
                raise DataError(f"{path}, line {line}: {e}") from None
            if row[t].strip() != str(value):
                raise DataError(f"{path}, line {line}: target {row[t]!r} but the expression evaluates to {value}")
            seqs.append(tokens)
            labels.append(value)
    if not seqs:
        raise DataError(f"{path}: no examples")
    return seqs, np.asarray(labels, dtype=np.int64)


def split_paths(spec, ext: str) -> Path | dict[str, Path]:
    """One file (``task.path`` names a file) or {split: file} from a folder and/or ``task.*_file``.

    A folder holds ``train.<ext>``, ``dev.<ext>`` and optionally ``test.<ext>``; named files are
    relative to ``task.path`` when it is a folder.
    """
    root = Path(spec.path).expanduser() if spec.path else None
    if root is not None and root.is_file():
        return root
    if root is not None and not root.is_dir():
        raise DataError(f"task.path: {root} is neither a file nor a folder")
    out = {}
    for split, named in (("train", spec.train_file), ("dev", spec.dev_file), ("test", spec.test_file)):
        path = Path(named).expanduser() if named else (root / f"{split}.{ext}" if root else None)
        if named and root is not None and not path.is_absolute():
            path = root / path
        if path is None or not path.is_file():
            if split == "test" and not named:
                continue
            raise DataError(f"task {spec.name}: {split} file {path} does not exist "
                            "(task.path may also name one file, split into train/dev/test)")
        out[split] = path
    return out


def _from_files(spec, options: dict) -> dict[str, tuple[list[list[str]], np.ndarray]]:
    paths = split_paths(spec, "tsv")
    if isinstance(paths, Path):
        seqs, labels = read_tsv(paths)
        index = stratified_split(labels, float(options.get("dev_fraction", 0.15)),
                                 float(options.get("test_fraction", 0.15)), int(options.get("split_seed", 0)))
        return {name: ([seqs[i] for i in idx], labels[idx]) for name, idx in index.items()}
    return {split: read_tsv(path) for split, path in paths.items()}


@TASKS.register("listops")
def listops(spec) -> Task:
    """ListOps from the generator or TSV files (see the module doc)."""
    from_files = spec.path is not None or spec.train_file is not None
    options = check_options(spec, TSV_OPTIONS if from_files else GEN_OPTIONS)
    raw = _from_files(spec, options) if from_files else _generated(spec, options)
    keep = _opt(options, "keep_parens", False, kind=bool)
    dropped = {}
    if from_files and options.get("max_tokens") is not None:
        limit = _opt(options, "max_tokens", None, low=1)
        for split, (seqs, labels) in raw.items():
            fits = np.array([sum(keep or t not in "()" for t in s) <= limit for s in seqs])
            dropped[split] = int((~fits).sum())
            raw[split] = ([s for s, f in zip(seqs, fits) if f], labels[fits])
            if not fits.any():
                raise DataError(f"task listops: no {split} example has at most {limit} tokens (task.options.max_tokens)")
    splits = {name: Split(labels, inputs=encode(seqs, keep)) for name, (seqs, labels) in raw.items()}
    return Task(
        name="listops", splits=splits, problem="classification", num_labels=10, metrics=("accuracy",),
        main_metric="accuracy", label_names=[str(i) for i in range(10)], modality="tokens",
        vocab_size=len(VOCAB), extra={"pad_id": 0, "num_tokens": max(s.inputs.shape[1] for s in splits.values()),
                                      "dropped_too_long": dropped},
    )
