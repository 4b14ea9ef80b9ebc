"""Image tasks as sequences of patch vectors, and ``patchify`` for every image task.

``digits``: scikit-learn's 8x8 handwritten digits (1797 images, 10 classes, offline).
Pixels are scaled to [0, 1] and cut into ``patch_size`` x ``patch_size`` patches
(default 2: 16 tokens of dim 4; ``pixels: true``: 64 tokens of dim 1), giving
``inputs`` float32 (N, T, D) with ``modality="vectors"``. The train/dev/test split
is seeded and stratified (``dev_fraction`` 0.15, ``test_fraction`` 0.15, seed
``split_seed`` 0); it never depends on the run seed.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from transferlab.data.build import check_options
from transferlab.data.task import TASKS, Split, Task
from transferlab.errors import DataError, SpecError


def patchify(images: np.ndarray, patch: int) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) images -> (N, (H/p)*(W/p), p*p*C) patches.

    Patches run row by row (left to right, top to bottom); each is flattened in
    (row, column, channel) order, as ViT's patch embedding reads them.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise DataError(f"patchify: expected images of shape (N, H, W) or (N, H, W, C), got {images.shape}")
    if not isinstance(patch, (int, np.integer)) or isinstance(patch, bool) or patch < 1:
        raise DataError(f"patchify: patch size must be a positive integer, got {patch!r}")
    n, h, w, c = images.shape
    if h % patch or w % patch:
        raise DataError(f"patchify: image size {h}x{w} is not divisible by patch size {patch}")
    x = images.reshape(n, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, (h // patch) * (w // patch), patch * patch * c)


def stratified_split(labels: np.ndarray, dev: float, test: float, seed: int) -> dict[str, np.ndarray]:
    """Seeded, stratified indices {train, dev, test} with ``dev`` and ``test`` as fractions of all."""
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


@TASKS.register("digits")
def digits(spec) -> Task:
    """scikit-learn's 8x8 digits as patch sequences (see the module doc)."""
    options = check_options(spec, ("patch_size", "pixels", "dev_fraction", "test_fraction", "split_seed"))
    if spec.path is not None:
        raise SpecError("task.path: digits ships with scikit-learn; leave task.path unset")
    if spec.problem == "regression" or spec.labels is not None or spec.text_pair_column is not None:
        raise SpecError(
            "task: digits is a fixed 10-class image task; leave problem, labels and text_pair_column unset"
        )
    patch = 1 if options.get("pixels", False) else options.get("patch_size", 2)
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)  # pixel values are 0..16
    try:
        inputs = patchify(images, patch)
    except DataError as e:
        raise SpecError(f"task.options.patch_size: {e}") from None
    labels = data.target.astype(np.int64)
    index = stratified_split(
        labels,
        float(options.get("dev_fraction", 0.15)),
        float(options.get("test_fraction", 0.15)),
        int(options.get("split_seed", 0)),
    )
    splits = {name: Split(labels[idx], inputs=inputs[idx]) for name, idx in index.items()}
    return Task(
        name="digits",
        splits=splits,
        problem="classification",
        num_labels=10,
        metrics=("accuracy",),
        main_metric="accuracy",
        label_names=[str(i) for i in range(10)],
        modality="vectors",
        input_dim=inputs.shape[-1],
        extra={"patch_size": patch, "image_size": (8, 8), "num_tokens": inputs.shape[1]},
    )
