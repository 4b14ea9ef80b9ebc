"""A finished run's test predictions, kept as an artifact for prediction churn between seeds.

    save_predictions(store.artifact_dir(uid), "test", preds)   # the loop, after the final test evaluation
    load_predictions(store.artifact_dir(uid), "test")           # the report; None when absent

One ``.npy`` file per split in the run's artifact folder (``predictions_<split>.npy``): class ids,
or floats for regression, in the split's row order. Read with ``allow_pickle=False``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def predictions_path(folder: Path, split: str) -> Path:
    return Path(folder) / f"predictions_{split}.npy"


def save_predictions(folder: Path, split: str, preds: np.ndarray) -> Path:
    path = predictions_path(folder, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(preds), allow_pickle=False)
    return path


def load_predictions(folder: Path, split: str) -> np.ndarray | None:
    path = predictions_path(folder, split)
    return np.load(path, allow_pickle=False) if path.is_file() else None
