"""Any text-classification or regression data set that ``datasets`` can read: the ``hub`` task.

    task: {name: hub, dataset: tweet_eval, config: emotion, text_column: text, label_column: label}
    task: {name: hub, path: data/my_dataset}          # a save_to_disk folder (Dataset or DatasetDict)
    task: {name: hub, path: data/train.parquet, dev_file: data/dev.parquet}   # parquet/csv/json files

``dataset`` (a hub id; ``config`` its configuration) or ``path``: a ``save_to_disk`` folder
(read with ``datasets.load_from_disk``), another folder ``load_dataset`` understands (e.g. of
parquet files), or a parquet/csv/json(l) file (``dev_file``/``test_file`` add the other splits).
``dataset`` and ``config`` are kept in ``task.options`` (the spec accepts them at the top).

Splits: ``train``; dev is the first of ``validation``, ``dev``, ``valid`` (``options.dev_split``
names another); test is ``test`` (``options.test_split``). Without a dev split, dev is a
seeded, stratified ``options.dev_fraction`` (default 0.1) of train (``split_seed``, default 0).

Labels: a ``ClassLabel`` column keeps its names and ids (-1: unlabelled); other columns follow
the csv task's rules (``problem: auto``, ``task.labels``, sorted names). Metrics as for csv.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transferlab.data.common import HUB_OPTIONS, carve, check_options, hub_datasets, load_hub
from transferlab.data.files import _key, _metrics, _problem, check_columns, label_ids, text_values
from transferlab.data.task import TASKS, Split, Task
from transferlab.errors import DataError, SpecError

OPTIONS = (*HUB_OPTIONS, "dataset", "config", "dev_split", "test_split", "dev_fraction", "split_seed", "metrics",
           "main_metric")
FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}
DEV_NAMES = ("validation", "dev", "valid")


def _file_splits(spec, path: Path) -> dict[str, str]:
    files = {"train": str(path)}
    for split, name in (("dev", spec.dev_file), ("test", spec.test_file)):
        if name:
            p = Path(name).expanduser()
            p = p if p.is_absolute() or p.exists() else path.parent / p
            if not p.is_file():
                raise DataError(f"task.{split}_file: {p} does not exist")
            files[split] = str(p)
    return files


def load(spec, options: dict):
    """A DatasetDict (or a Dataset, taken as train) from the hub, a folder or files."""
    datasets = hub_datasets("task hub")

    source = options.get("dataset") or spec.path
    if source is None:
        raise SpecError("task.dataset: the hub task needs a dataset (a hub id) or task.path (a folder or file)")
    path = Path(str(source)).expanduser()
    if options.get("dataset") is None and not path.exists():
        raise DataError(f"task.path: {path} does not exist")
    if path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json")):
        try:
            return datasets.load_from_disk(str(path))
        except (OSError, ValueError) as e:
            raise DataError(f"task.path: {path} is not a readable save_to_disk folder: {e}") from None
    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DataError(f"task.path: {path}: unknown file type {path.suffix!r}; use parquet, csv, json or jsonl")
        try:
            return datasets.load_dataset(builder, data_files=_file_splits(spec, path))
        except (OSError, ValueError) as e:
            raise DataError(f"task.path: cannot read {path} as {builder}: {e}") from None
    if path.is_dir():
        try:
            return datasets.load_dataset(str(path))
        except (OSError, ValueError) as e:
            raise DataError(f"task.path: cannot read folder {path} with datasets.load_dataset: {e}") from None
    return load_hub(str(source), options.get("config"), spec)


def _pick(data, options: dict, name: str) -> tuple[dict, str]:
    """{our split: the data set's split} and a name for messages."""
    datasets = hub_datasets("task hub")

    if isinstance(data, datasets.Dataset):
        data = datasets.DatasetDict({"train": data})
    available = list(data)
    chosen = {}
    if "train" not in data:
        raise DataError(f"task hub: {name} has no 'train' split; splits: {', '.join(available)}")
    chosen["train"] = "train"
    dev = options.get("dev_split") or next((s for s in DEV_NAMES if s in data), None)
    if dev is not None:
        if dev not in data:
            raise DataError(f"task.options.dev_split: {name} has no split {dev!r}; splits: {', '.join(available)}")
        chosen["dev"] = dev
    test = options.get("test_split") or ("test" if "test" in data else None)
    if test is not None:
        if test not in data:
            raise DataError(f"task.options.test_split: {name} has no split {test!r}; splits: {', '.join(available)}")
        chosen["test"] = test
    return {ours: data[theirs] for ours, theirs in chosen.items()}, ", ".join(available)


@TASKS.register("hub")
def hub(spec) -> Task:
    """A text task from ``datasets`` (see the module doc)."""
    datasets = hub_datasets("task hub")

    options = check_options(spec, OPTIONS)
    check_columns(spec)
    name = str(options.get("dataset") or spec.path)
    splits_in, _ = _pick(load(spec, options), options, name)
    if "dev" in splits_in and options.get("dev_fraction") is not None:
        raise SpecError(f"task.options.dev_fraction: {name} has a dev split; use one or the other")
    for split, ds in splits_in.items():
        for column, field in ((spec.text_column, "text_column"), (spec.text_pair_column, "text_pair_column"),
                              (spec.label_column, "label_column")):
            if column is None or (field == "label_column" and split == "test"):
                continue
            if column not in ds.column_names:
                raise DataError(f"task.{field}: {name} ({split} split) has no column {column!r}; "
                                f"columns: {', '.join(ds.column_names)}")
    feature = splits_in["train"].features[spec.label_column]
    if isinstance(feature, datasets.ClassLabel):
        if spec.problem == "regression":
            raise SpecError(f"task.problem: the label column {spec.label_column!r} of {name} holds classes")
        problem, names = "classification", list(feature.names)
    else:
        problem, names = _problem(spec, [_key(v) for v in splits_in["train"][spec.label_column]])
    splits = {}
    for split, ds in splits_in.items():
        labels = _labels(ds, spec.label_column, problem, names, isinstance(feature, datasets.ClassLabel), split)
        pairs = None if spec.text_pair_column is None else _hub_texts(ds, spec.text_pair_column, name, split)
        splits[split] = Split(labels, _hub_texts(ds, spec.text_column, name, split), pairs)
    if "dev" not in splits:
        fraction = float(options.get("dev_fraction", 0.1))
        splits["train"], splits["dev"] = carve(splits["train"], fraction, int(options.get("split_seed", 0)),
                                               problem != "regression")
    metrics, main = _metrics(options, problem, len(names))
    return Task(name=name, splits=splits, problem=problem, num_labels=1 if problem == "regression" else len(names),
                metrics=metrics, main_metric=main, label_names=None if problem == "regression" else names,
                extra={"pair": spec.text_pair_column is not None, "source": name})


def _hub_texts(ds, column: str, name: str, split: str) -> list[str]:
    """The column's texts, checked as a file's are (data/files.py: text_values)."""
    return text_values([(f"task hub {name}: {split} row {i}", v) for i, v in enumerate(ds[column])], column)


def _labels(ds, column: str, problem: str, names: list[str], class_label: bool, split: str) -> np.ndarray:
    dtype = np.float32 if problem == "regression" else np.int64
    if column not in ds.column_names:  # an unlabelled test split
        return np.full(len(ds), np.nan if problem == "regression" else -1, dtype=dtype)
    values = ds[column]
    if class_label:
        return np.asarray([-1 if v is None else v for v in values], dtype=np.int64)
    return label_ids([(f"task hub: {split} row {i}", v) for i, v in enumerate(values)], problem, names,
                     optional=split == "test")
