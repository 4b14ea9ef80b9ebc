"""Helpers the task modules share: option checks, seeded stratified sampling and splitting, and
loading from the Hugging Face hub with a clear error.

    options = check_options(spec, ("dev_fraction",))       # unknown keys: one line listing the known
    index = stratified_indices(labels, 100, seed)           # n indices, each class keeps its share
    rest, dev = carve(split, 0.1, seed)                     # a seeded, stratified part of a split
"""

from __future__ import annotations

import os

import numpy as np

from transferlab.checks import optional_module
from transferlab.data.task import Split
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


def hub_datasets(needed_by: str):
    """The ``datasets`` package (the ``hub`` extra; the GPU image lacks it), or one line naming ``needed_by``."""
    return optional_module("datasets", needed_by, "transferlab[hub]")


def load_hub(repo: str, config: str | None, spec):
    """``datasets.load_dataset(repo, config)``; a DataError when the hub (or its cache) cannot serve it.

    ``HF_HUB_OFFLINE=1`` is honoured by ``datasets`` itself (cache only).
    """
    datasets = hub_datasets(f"task {spec.name} (its data from the Hugging Face hub; or set task.path)")

    options = spec.options
    try:
        return datasets.load_dataset(
            repo, config, revision=options.get("revision"), cache_dir=options.get("cache_dir")
        )
    except (OSError, ValueError) as e:  # ConnectionError, DatasetNotFoundError, missing cache: OSErrors; bad config: ValueError
        offline = " (HF_HUB_OFFLINE is set: only the local cache is used)" if _offline() else ""
        name = f"{repo}/{config}" if config else repo
        raise DataError(
            f"task {spec.name}: cannot load {name} from the Hugging Face hub{offline}: {e}. "
            f"Set task.path to a local folder with the data instead (see the task's docs for the layout)."
        ) from None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def stratified_split(labels: np.ndarray, dev: float, test: float, seed: int) -> dict[str, np.ndarray]:
    """Seeded, stratified indices {train, dev, test} with ``dev`` and ``test`` as fractions of all."""
    from sklearn.model_selection import train_test_split

    for name, value in (("dev_fraction", dev), ("test_fraction", test)):
        if not 0 < value < 1:
            raise SpecError(f"task.options.{name}: must lie in (0, 1), got {value!r}")
    if dev + test >= 1:
        raise SpecError(f"task.options: dev_fraction + test_fraction must be below 1, got {dev + test}")
    index = np.arange(len(labels))
    rest, test_idx = train_test_split(index, test_size=test, stratify=labels, random_state=seed)
    train_idx, dev_idx = train_test_split(
        rest, test_size=dev / (1 - test), stratify=labels[rest], random_state=seed
    )
    return {"train": np.sort(train_idx), "dev": np.sort(dev_idx), "test": np.sort(test_idx)}
