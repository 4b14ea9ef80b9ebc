"""Token-classification (tagging) tasks: CoNLL column files and hub ``conll2003``-style data sets.

    task: {name: conll2003, path: ../shared/data/conll2003}        # train.txt, valid.txt, test.txt
    task: {name: conll2003}                                         # the hub's eriktks/conll2003
    task: {name: conll, path: my/ner, options: {num_columns: 2}}    # any column files of your own

Column files (the CoNLL-2003 shared-task layout): one word per line, whitespace-separated columns,
the tag in the last column (``options.tag_column`` picks another), a blank line between sentences;
``-DOCSTART-`` lines are skipped. Every line must have ``num_columns`` columns (CoNLL-2003: 4,
``word POS chunk NER``) and a known tag, else a DataError naming the file and line. Files: ``train``,
``dev`` and optional ``test`` with extension ``.txt``; ``valid.txt`` / ``testa``/``testb`` names of
the original release are found too (see ``FILE_NAMES``).

Hub data sets hold a ``tokens`` column (lists of words) and a ``ner_tags`` column (lists of
ClassLabel ids, whose names are the tag set): ``options.hub``, ``tokens_column``, ``tags_column``.

Tags: ``conll2003`` uses the hub's tag order (``CONLL2003_TAGS``); ``conll`` uses ``task.labels``
when given, else ``O`` then the other train tags sorted. Labels are (N, W) tag ids padded with
IGNORE. ``options.subwords``: ``first`` (default: a word's label sits on its first subword, the
others are ignored, as Devlin et al. 2019) or ``all`` (every subword carries the word's label);
predictions are read from each word's first subword either way. Metrics: data/tagging.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transferlab.data.common import HUB_OPTIONS, check_options, load_hub
from transferlab.data.tagging import TAG_METRICS
from transferlab.data.task import IGNORE, TASKS, Split, Task
from transferlab.errors import DataError, SpecError

CONLL2003_TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
FILE_NAMES = {"train": ("train.txt", "eng.train"), "dev": ("dev.txt", "valid.txt", "eng.testa"),
              "test": ("test.txt", "eng.testb")}
HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}
OPTIONS = ("num_columns", "tag_column", "subwords", "hub", "tokens_column", "tags_column", "tag_scheme",
           *HUB_OPTIONS)
TAG_SCHEMES = ("iob", "none")  # iob: O, B-TYPE, I-TYPE (IOB1 and IOB2 alike); none: any tag


def tag_scheme(options: dict) -> str:
    scheme = options.get("tag_scheme", "iob")
    if scheme not in TAG_SCHEMES:
        raise SpecError(f"task.options.tag_scheme: {scheme!r} is not allowed; allowed: 'iob', 'none'")
    return scheme


def check_tag(tag: str, where: str, scheme: str) -> None:
    """An IOB tag: O, or B-/I- and a type (the check is off with ``options.tag_scheme: none``)."""
    if scheme == "iob" and tag != "O" and not (tag[:2] in ("B-", "I-") and tag[2:].strip()):
        raise DataError(f"{where}: tag {tag!r} is not an IOB tag (O, B-TYPE or I-TYPE); "
                        "set task.options.tag_scheme: none for other tag sets")


def read_columns(path: Path, num_columns: int | None, tag_column: int = -1):
    """[(line numbers, words, tags)] per sentence of a CoNLL column file; a wrong column count is a
    DataError naming the file and line."""
    if not path.is_file():
        raise DataError(f"file {path} does not exist")
    sentences, words, tags, lines = [], [], [], []
    with open(path, encoding="utf-8-sig") as f:
        for line, text in enumerate(f, start=1):
            fields = text.split()
            if not fields:
                if words:
                    sentences.append((lines, words, tags))
                words, tags, lines = [], [], []
                continue
            if fields[0] == "-DOCSTART-":
                continue
            if num_columns is not None and len(fields) != num_columns:
                raise DataError(f"{path}, line {line}: {len(fields)} columns, expected {num_columns} "
                                f"(task.options.num_columns)")
            if len(fields) < 2:
                raise DataError(f"{path}, line {line}: a word and a tag are needed, got {text.strip()!r}")
            lines.append(line)
            words.append(fields[0])
            tags.append(fields[tag_column])
    if words:
        sentences.append((lines, words, tags))
    if not sentences:
        raise DataError(f"{path}: no sentences")
    return sentences


def to_split(words: list[list[str]], tag_ids: list[list[int]]) -> Split:
    """A token split: (N, W) IGNORE-padded labels, the words kept in ``Split.words``."""
    width = max(1, max(len(w) for w in words))
    labels = np.full((len(words), width), IGNORE, dtype=np.int64)
    for i, ids in enumerate(tag_ids):
        labels[i, : len(ids)] = ids
    return Split(labels, texts=[" ".join(w) for w in words], words=words)


def tag_task(name: str, splits: dict[str, Split], names: list[str], subwords: str, source: str) -> Task:
    return Task(name=name, splits=splits, problem="classification", num_labels=len(names), metrics=TAG_METRICS,
                main_metric="entity_f1", label_names=list(names), kind="token",
                extra={"subwords": subwords, "source": source})


def _subwords(options: dict) -> str:
    value = options.get("subwords", "first")
    if value not in ("first", "all"):
        raise SpecError(f"task.options.subwords: {value!r} is not allowed; allowed: 'first', 'all'")
    return value


def _find(root: Path, split: str, explicit: str | None) -> Path | None:
    if explicit:
        p = Path(explicit).expanduser()
        return p if p.is_absolute() else root / p
    return next((root / n for n in FILE_NAMES[split] if (root / n).is_file()), None)


def from_files(spec, names: list[str] | None) -> Task:
    """A token task from column files under ``spec.path`` (or ``train_file``/``dev_file``/``test_file``)."""
    options = check_options(spec, OPTIONS)
    root = Path(spec.path or ".").expanduser()
    if spec.path is not None and not root.is_dir():
        raise DataError(f"task.path: {root} is not a folder (expected train.txt, valid.txt, test.txt)")
    ncol = options.get("num_columns", 4 if spec.name == "conll2003" else None)
    tag_column = int(options.get("tag_column", -1))
    scheme = tag_scheme(options)
    read = {}
    for split, explicit in (("train", spec.train_file), ("dev", spec.dev_file), ("test", spec.test_file)):
        path = _find(root, split, explicit)
        if path is None:
            if split == "test":
                continue
            raise DataError(f"task {spec.name}: no {split} file in {root} (looked for {', '.join(FILE_NAMES[split])})")
        read[split] = (path, read_columns(path, ncol, tag_column))
    if names is None:
        names = [str(v) for v in spec.labels] if spec.labels else _tag_set(read["train"][1])
    splits = {}
    for split, (path, sentences) in read.items():
        ids = []
        for lines, words, tags in sentences:
            for line, tag in zip(lines, tags):
                check_tag(tag, f"{path}, line {line}", scheme)
                if tag not in names:
                    raise DataError(f"{path}, line {line}: unknown tag {tag!r}; "
                                    f"known tags: {', '.join(names)}")
            ids.append([names.index(t) for t in tags])
        splits[split] = to_split([w for _, w, _ in sentences], ids)
    return tag_task(spec.name, splits, names, _subwords(options), str(read["train"][0].parent))


def _tag_set(sentences) -> list[str]:
    tags = {t for _, _, ts in sentences for t in ts}
    return ["O", *sorted(tags - {"O"})] if "O" in tags else sorted(tags)


def from_hub_dataset(dataset, name: str, tokens_column: str = "tokens", tags_column: str = "ner_tags",
                     subwords: str = "first", scheme: str = "iob") -> Task:
    """A token task from a ``datasets.DatasetDict`` with word lists and ClassLabel tag lists."""
    train = dataset["train"]
    for column in (tokens_column, tags_column):
        if column not in train.column_names:
            raise DataError(f"task {name}: the data set has no column {column!r}; columns: "
                            f"{', '.join(train.column_names)}")
    feature = train.features[tags_column]
    names = getattr(getattr(feature, "feature", None), "names", None)
    if names is None:
        raise DataError(f"task {name}: column {tags_column!r} holds no ClassLabel tag names")
    for tag in names:
        check_tag(tag, f"task {name}: column {tags_column!r}", scheme)
    splits = {}
    for split, hub_split in HUB_SPLITS.items():
        if hub_split not in dataset:
            continue
        rows = dataset[hub_split]
        splits[split] = to_split([list(w) for w in rows[tokens_column]], [list(t) for t in rows[tags_column]])
    return tag_task(name, splits, list(names), subwords, "hub")


@TASKS.register("conll2003")
def conll2003(spec) -> Task:
    """CoNLL-2003 English NER (Tjong Kim Sang & De Meulder 2003): a folder of column files or the hub."""
    options = check_options(spec, OPTIONS)
    if spec.path is None and spec.train_file is None:
        ds = load_hub(options.get("hub", "eriktks/conll2003"), None, spec)
        return from_hub_dataset(ds, spec.name, options.get("tokens_column", "tokens"),
                                options.get("tags_column", "ner_tags"), _subwords(options), tag_scheme(options))
    return from_files(spec, CONLL2003_TAGS)


@TASKS.register("conll")
def conll(spec) -> Task:
    """Any tagging task in CoNLL column files (or a hub data set named by ``options.hub``)."""
    options = check_options(spec, OPTIONS)
    if "hub" in options:
        ds = load_hub(options["hub"], None, spec)
        return from_hub_dataset(ds, spec.name, options.get("tokens_column", "tokens"),
                                options.get("tags_column", "ner_tags"), _subwords(options), tag_scheme(options))
    return from_files(spec, None)
