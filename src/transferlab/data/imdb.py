"""IMDB movie-review sentiment (Maas et al. 2011): neg=0, pos=1, accuracy.

From the hub (``stanfordnlp/imdb``, splits train/test) when ``task.path`` is null,
else from the original ``aclImdb`` folder: ``train|test/pos|neg/*.txt`` (``task.path``
may be ``aclImdb`` itself or the folder holding it). IMDB has no dev set: by default
``dev`` is a seeded, class-balanced ``dev_fraction`` (0.1) of train, taken out of
train (seed ``options.split_seed``, default 0, never the run seed). With
``options.dev_from: test`` the whole test set serves as ``dev`` (the common, but
optimistic, practice) and there is no separate ``test`` split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transferlab.data.common import HUB_OPTIONS, carve, check_options, load_hub
from transferlab.data.task import TASKS, Split, Task
from transferlab.errors import DataError, SpecError

LABELS = ["neg", "pos"]  # the hub's ClassLabel order


def _order(path: Path) -> tuple[int, str]:
    """Files are named ``<id>_<rating>.txt``: sort by id, then name."""
    head = path.stem.split("_")[0]
    return (int(head) if head.isdigit() else -1, path.name)


def read_acl_split(root: Path, split: str) -> Split:
    """``root/split/{neg,pos}/*.txt`` as a Split (neg first, each in id order)."""
    texts, labels = [], []
    for label, name in enumerate(LABELS):
        folder = root / split / name
        if not folder.is_dir():
            raise DataError(f"task imdb: folder {folder} does not exist (expected {split}/{name}/*.txt)")
        files = sorted(folder.glob("*.txt"), key=_order)
        if not files:
            raise DataError(f"task imdb: folder {folder} holds no .txt files")
        texts += [f.read_text(encoding="utf-8") for f in files]
        labels += [label] * len(files)
    return Split(np.asarray(labels, dtype=np.int64), texts)


@TASKS.register("imdb")
def imdb(spec) -> Task:
    """IMDB from the hub or an aclImdb folder, with a dev split carved from train (see the module doc)."""
    options = check_options(spec, (*HUB_OPTIONS, "dev_from", "dev_fraction", "split_seed"))
    if spec.text_pair_column is not None:
        raise SpecError("task.text_pair_column: imdb is a single-text task; remove text_pair_column")
    if spec.problem == "regression" or spec.labels is not None:
        raise SpecError("task.problem / task.labels: imdb is a fixed neg/pos classification task")
    dev_from = options.get("dev_from", "train")
    if dev_from not in ("train", "test"):
        raise SpecError(f"task.options.dev_from: {dev_from!r} is not allowed; allowed: 'train', 'test'")
    if spec.path is None:
        data = load_hub("stanfordnlp/imdb", None, spec)
        train, test = (Split(np.asarray(data[s]["label"], dtype=np.int64), list(data[s]["text"]))
                       for s in ("train", "test"))
        source = "hub:stanfordnlp/imdb"
    else:
        root = Path(spec.path).expanduser()
        if (root / "aclImdb").is_dir():
            root = root / "aclImdb"
        if not root.is_dir():
            raise DataError(f"task.path: folder {root} does not exist")
        train, test = read_acl_split(root, "train"), read_acl_split(root, "test")
        source = str(root)
    if dev_from == "test":
        splits = {"train": train, "dev": test}
    else:
        rest, dev = carve(train, float(options.get("dev_fraction", 0.1)), int(options.get("split_seed", 0)))
        splits = {"train": rest, "dev": dev, "test": test}
    return Task(
        name="imdb",
        splits=splits,
        problem="classification",
        num_labels=2,
        metrics=("accuracy",),
        main_metric="accuracy",
        label_names=list(LABELS),
        extra={"pair": False, "source": source, "dev_from": dev_from},
    )
