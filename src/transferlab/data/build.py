"""Build a task from its spec: look it up, load it, cut it down, check it.

    task = build_task(spec.task, seed=spec.seed)

Also the small helpers the task modules share: option checks, seeded
stratified sampling, and loading from the Hugging Face hub with a clear error.

Seeds: ``max_train_samples`` draws its subset with ``task.options.sample_seed``
when set, else with the run seed (so seeds vary the subset, as in few-sample
studies); ``max_eval_samples`` draws with ``sample_seed`` or 0, so every run of a
study is scored on the same examples. Dev/test splits carved out of a data set
(``split_seed``) never depend on the run seed.
"""

from __future__ import annotations

import os

import numpy as np

from transferlab.data.task import IGNORE, TASKS, Split, Task
from transferlab.errors import DataError, SpecError

COMMON_OPTIONS = ("sample_seed",)  # understood by build_task for every task
HUB_OPTIONS = ("revision", "cache_dir")  # understood by every task that can load from the hub


def check_options(spec, allowed: tuple[str, ...] | list[str]) -> dict:
    """``spec.options``, after checking that every key is one the task understands."""
    known = sorted({*allowed, *COMMON_OPTIONS})
    for key in spec.options:
        if key not in known:
            raise SpecError(
                f"task.options: unknown key {key!r} for task {spec.name}; known: {', '.join(known)}"
            )
    return spec.options


def stratified_indices(labels: np.ndarray, n: int, seed: int, stratify: bool = True) -> np.ndarray:
    """``n`` sorted indices drawn without replacement; with ``stratify`` each class keeps its share.

    Written by hand (not sklearn's train_test_split) so that it never fails on rare
    classes: class sizes are the largest-remainder rounding of ``n * share``.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    if n >= len(labels):
        return np.arange(len(labels))
    if not stratify:
        return np.sort(rng.choice(len(labels), size=n, replace=False))
    _, inverse = np.unique(labels, return_inverse=True)
    sizes = np.bincount(inverse)
    quota = n * sizes / len(labels)
    take = np.floor(quota).astype(int)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[: n - take.sum()]] += 1
    chosen = [rng.permutation(np.flatnonzero(inverse == c))[:k] for c, k in enumerate(take)]
    return np.sort(np.concatenate(chosen))


def carve(split: Split, fraction: float, seed: int, stratify: bool = True) -> tuple[Split, Split]:
    """Split ``split`` into (rest, part) where ``part`` is a seeded, stratified ``fraction`` of it."""
    if not 0 < fraction < 1:
        raise SpecError(f"task.options: a split fraction must lie in (0, 1), got {fraction!r}")
    n = max(1, round(fraction * len(split)))
    part = stratified_indices(split.labels, n, seed, stratify)
    rest = np.setdiff1d(np.arange(len(split)), part)
    return split.subset(rest), split.subset(part)


def load_hub(repo: str, config: str | None, spec):
    """``datasets.load_dataset(repo, config)``; a DataError when the hub (or its cache) cannot serve it.

    ``HF_HUB_OFFLINE=1`` is honoured by ``datasets`` itself (cache only).
    """
    import datasets

    options = spec.options
    try:
        return datasets.load_dataset(
            repo, config, revision=options.get("revision"), cache_dir=options.get("cache_dir")
        )
    except OSError as e:  # ConnectionError, DatasetNotFoundError and missing cache files are all OSErrors
        offline = " (HF_HUB_OFFLINE is set: only the local cache is used)" if _offline() else ""
        name = f"{repo}/{config}" if config else repo
        raise DataError(
            f"task {spec.name}: cannot load {name} from the Hugging Face hub{offline}: {e}. "
            f"Set task.path to a local folder with the data instead (see the task's docs for the layout)."
        ) from None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _register_tasks() -> None:
    """Import every task module so that its tasks are registered in TASKS."""
    from transferlab.data import bits, conll, files, glue, images, imdb, listops, protein, squad  # noqa: F401


def validate(task: Task) -> Task:
    """Check that every split is non-empty, consistent, and labelled where it must be."""
    for name in ("train", "dev"):
        if name not in task.splits:
            raise DataError(f"task {task.name}: no {name!r} split")
    for name, split in task.splits.items():
        where = f"task {task.name}, split {name!r}"
        n = len(split)
        if n == 0:
            raise DataError(f"{where}: the split is empty")
        for attr in ("texts", "text_pairs", "inputs", "words", "targets"):
            value = getattr(split, attr)
            if value is not None and len(value) != n:
                raise DataError(f"{where}: {len(value)} {attr} for {n} labels")
        labels = split.labels
        if task.problem == "regression":
            missing = np.isnan(labels)
            if missing.all() and name not in ("train", "dev"):
                continue  # an unlabelled test split
            if not np.isfinite(labels).all():
                i = int(np.flatnonzero(~np.isfinite(labels))[0])
                raise DataError(f"{where}: regression target {labels[i]} at example {i} is not finite")
        elif task.kind == "span":
            continue  # character offsets into the context, checked by the task's reader (data/squad.py)
        else:
            if (labels == -1).all() and name not in ("train", "dev"):
                continue
            bad = ((labels < 0) & (labels != IGNORE)) | (labels >= task.num_labels)  # IGNORE: word padding
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DataError(
                    f"{where}: label id {labels[i]} at example {i} is outside 0..{task.num_labels - 1}"
                )
    return task


def build_task(spec, seed: int = 0) -> Task:
    """Build the task named by ``spec.name`` (a TaskSpec), cut to the sample limits, validated."""
    _register_tasks()
    builder = TASKS.get(spec.name, field="task.name")
    task = builder(spec)
    if getattr(spec, "split_dev", False) or getattr(spec, "few_sample", None) is not None:
        from transferlab.study.fewshot import apply_protocol  # the few-sample protocol

        task = apply_protocol(task, spec, seed)
    sample_seed = spec.options.get("sample_seed")
    stratify = task.problem == "classification" and task.kind == "sequence" and task.splits["train"].labels.ndim == 1
    for field in ("max_train_samples", "max_eval_samples"):
        value = getattr(spec, field)
        if value is not None and value < 1:
            raise SpecError(f"task.{field}: must be at least 1, got {value}")
    if spec.max_train_samples is not None:
        train = task.splits["train"]
        s = seed if sample_seed is None else sample_seed
        index = stratified_indices(train.labels, spec.max_train_samples, s, stratify)
        task.splits["train"] = train.subset(index)
    if spec.max_eval_samples is not None:
        s = 0 if sample_seed is None else sample_seed
        for name, split in list(task.splits.items()):
            if name != "train":
                idx = stratified_indices(split.labels, spec.max_eval_samples, s, stratify and split.labelled)
                task.splits[name] = split.subset(idx)
    return validate(task)
