"""Image tasks as sequences of patch vectors (or pixels), and ``patchify`` for every image task.

* ``digits``: scikit-learn's 8x8 handwritten digits (1797 images, 10 classes, offline), patch
  ``patch_size`` (default 2: 16 tokens of dim 4; ``pixels: true``: 64 tokens of dim 1). Split
  seeded and stratified (``dev_fraction`` 0.15, ``test_fraction`` 0.15, ``split_seed`` 0).
* ``mnist``: the official idx files (``.gz`` or not) in ``task.path`` (also torchvision's
  ``MNIST/raw``). With the training files, dev is carved from train (``dev_fraction`` 0.1) and
  t10k is test; with t10k only, t10k is split three ways as for digits. Default patch 4 (FPT).
* ``cifar10``: ``task.path`` is a folder of ``train/<class>/*.jpg|png`` and ``test/<class>/...``
  (also inside ``.tar``/``.tar.gz`` archives in that folder, as the CIFAR-10-images release), or
  torchvision's ``cifar-10-batches-py`` (read by a restricted unpickler that admits numpy arrays
  only). Dev is carved from train (``dev_fraction`` 0.1). Default patch 4: 64 tokens of 48 values.
  ``max_per_class`` reads only the first N images of each class per split (archive order, else
  sorted names).
* ``cifar10_gray``: CIFAR-10 in gray (ITU-R 601 luma, as PIL and torchvision), pixel by pixel
  (Long Range Arena's Image task): ``pixels: tokens`` gives 1024 tokens with ids 0..255
  (modality ``tokens``), ``pixels: values`` 1024 tokens of dim 1; ``patch_size`` > 1 gives gray patches.

Pixel values are scaled to [0, 1]. An image size that the patch size does not divide is a
SpecError. The splits never depend on the run seed.
"""

from __future__ import annotations

import codecs
import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from transferlab.data.common import check_options, stratified_indices, stratified_split
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


# ---------------------------------------------------------------- shared: image arrays -> a Task


def image_task(name: str, images: dict[str, np.ndarray], labels: dict[str, np.ndarray], patch: int,
               label_names: list[str], tokens: bool = False) -> Task:
    """uint8 images {split: (N, H, W[, C])} -> a Task of patch vectors in [0, 1] (or pixel ids)."""
    splits, dim = {}, None
    for split, imgs in images.items():
        if tokens:
            inputs = imgs.reshape(len(imgs), -1).astype(np.int64)  # pixel intensities as token ids
        else:
            try:
                inputs = patchify(imgs.astype(np.float32) / 255.0, patch)
            except DataError as e:
                raise SpecError(f"task.options.patch_size: {e}") from None
            dim = inputs.shape[-1]
        splits[split] = Split(labels[split], inputs=inputs)
    first = next(iter(images.values()))
    return Task(
        name=name, splits=splits, problem="classification", num_labels=len(label_names), metrics=("accuracy",),
        main_metric="accuracy", label_names=label_names, modality="tokens" if tokens else "vectors",
        vocab_size=256 if tokens else None, input_dim=dim,
        extra={"patch_size": patch, "image_size": tuple(first.shape[1:3]),
               "num_tokens": next(iter(splits.values())).inputs.shape[1]},
    )


def _patch_option(options: dict, default: int) -> int:
    patch = options.get("patch_size", default)
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1:
        raise SpecError(f"task.options.patch_size: expected a positive integer, got {patch!r}")
    return patch


def _three_way(images: np.ndarray, labels: np.ndarray, options: dict) -> tuple[dict, dict]:
    index = stratified_split(labels, float(options.get("dev_fraction", 0.15)),
                             float(options.get("test_fraction", 0.15)), int(options.get("split_seed", 0)))
    return {k: images[i] for k, i in index.items()}, {k: labels[i] for k, i in index.items()}


def _dev_from_train(images: dict, labels: dict, options: dict) -> None:
    """Carve a seeded, stratified dev split (``dev_fraction``, default 0.1) out of train, in place."""
    fraction = float(options.get("dev_fraction", 0.1))
    if not 0 < fraction < 1:
        raise SpecError(f"task.options.dev_fraction: must lie in (0, 1), got {fraction!r}")
    n = len(labels["train"])
    dev = stratified_indices(labels["train"], max(1, round(fraction * n)), int(options.get("split_seed", 0)))
    train = np.setdiff1d(np.arange(n), dev)
    for part in (images, labels):
        part["dev"] = part["train"][dev]
        part["train"] = part["train"][train]


def _need_folder(spec) -> Path:
    if spec.path is None:
        raise SpecError(f"task.path: the {spec.name} task reads local files; set task.path to their folder")
    root = Path(spec.path).expanduser()
    if not root.exists():
        raise DataError(f"task.path: {root} does not exist")
    return root


# ---------------------------------------------------------------- MNIST (idx files)


def read_idx(path: Path) -> np.ndarray:
    """An idx file (LeCun's MNIST format; gzip when the name ends in .gz) as a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read the idx file: {e}") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise DataError(f"{path}: not an idx file of unsigned bytes (magic {data[:4].hex()}, expected 0000080N)")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DataError(f"{path}: holds {arr.size} values, the header says {dims} (a truncated file?)")
    return arr.reshape(dims)


def _find_idx(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "MNIST" / "raw", root / "raw"):
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


@TASKS.register("mnist")
def mnist(spec) -> Task:
    """MNIST from idx files as patch sequences (see the module doc)."""
    options = check_options(spec, ("patch_size", "pixels", "dev_fraction", "test_fraction", "split_seed"))
    root = _need_folder(spec)
    found = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        imgs, labs = _find_idx(root, f"{prefix}-images-idx3-ubyte"), _find_idx(root, f"{prefix}-labels-idx1-ubyte")
        if imgs and labs:
            found[split] = (read_idx(imgs), read_idx(labs).astype(np.int64))
            if len(found[split][0]) != len(found[split][1]):
                raise DataError(f"{imgs}: {len(found[split][0])} images but {len(found[split][1])} labels in {labs}")
    if not found:
        raise DataError(f"task.path: {root} holds no MNIST idx files (t10k-images-idx3-ubyte[.gz] and "
                        "t10k-labels-idx1-ubyte[.gz], optionally the train-* pair)")
    patch = 1 if options.get("pixels", False) else _patch_option(options, 4)
    if "train" in found:
        images = {k: v[0] for k, v in found.items()}
        labels = {k: v[1] for k, v in found.items()}
        _dev_from_train(images, labels, options)
    else:
        images, labels = _three_way(*found["test"], options)
    return image_task("mnist", images, labels, patch, [str(i) for i in range(10)])


# ---------------------------------------------------------------- CIFAR-10 (image folders, archives, torchvision)

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class _NumpyOnly(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays; any other global is refused (no code runs)."""

    ALLOWED = frozenset({("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),  # bytes in protocol 2
                         *((m, f) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
                           for f in ("_reconstruct", "scalar")),
                         *((m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric"))})

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        if module == "_codecs":
            return codecs.encode
        if module.startswith("numpy.") and name in ("_reconstruct", "scalar"):
            return getattr(np._core.multiarray, name)
        if name == "_frombuffer":
            return np._core.numeric._frombuffer
        return getattr(np, name)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnly(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({e})") from None
    obj = {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()} if isinstance(obj, dict) else {}
    if "data" not in obj or "labels" not in obj:
        raise DataError(f"{path}: a CIFAR-10 batch must hold 'data' and 'labels'")
    data = np.asarray(obj["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: 'data' has shape {data.shape}, expected (N, 3072)")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(obj["labels"], dtype=np.int64)


def _torchvision(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    train = [_read_batch(folder / f"data_batch_{i}") for i in range(1, 6) if (folder / f"data_batch_{i}").is_file()]
    out = {}
    if train:
        out["train"] = (np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]))
    if (folder / "test_batch").is_file():
        out["test"] = _read_batch(folder / "test_batch")
    return out


def _split_class(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """('.../train/cat/0001.jpg') -> ('train', 'cat'); None for paths outside that layout."""
    for i in range(len(parts) - 2):
        if parts[i] in ("train", "test") and parts[-1].lower().endswith(IMAGE_SUFFIXES):
            return parts[i], parts[i + 1]
    return None


def _decode(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise DataError(f"{where}: not a readable image ({e})") from None


def _image_folders(root: Path, limit: int | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Images under ``root`` (files and .tar/.tar.gz members) in the train/<class>/ test/<class>/ layout."""
    found: dict[str, dict[str, list[np.ndarray]]] = {"train": {}, "test": {}}

    def add(parts: tuple[str, ...], read, where: str) -> None:
        key = _split_class(parts)
        if key is None:
            return
        bucket = found[key[0]].setdefault(key[1], [])
        if limit is None or len(bucket) < limit:
            bucket.append(_decode(read(), where))

    archives = [root] if root.is_file() else sorted(
        p for p in root.iterdir() if p.name.endswith((".tar", ".tar.gz", ".tgz")))
    for archive in archives:
        try:
            with tarfile.open(archive, "r|*") as tar:  # streamed: one pass over a compressed archive
                for member in tar:
                    if member.isfile():
                        add(tuple(member.name.split("/")), lambda m=member: tar.extractfile(m).read(),
                            f"{archive}:{member.name}")
        except tarfile.TarError as e:
            raise DataError(f"{archive}: cannot read the archive: {e}") from None
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            if path.is_file():
                add(path.relative_to(root).parts, path.read_bytes, str(path))
    out = {}
    for split, classes in found.items():
        if not classes:
            continue
        unknown = sorted(set(classes) - set(CIFAR_CLASSES))
        if unknown:
            raise DataError(f"{root}: class folder {unknown[0]!r} in {split} is not a CIFAR-10 class "
                            f"({', '.join(CIFAR_CLASSES)})")
        imgs = [img for c in CIFAR_CLASSES for img in classes.get(c, [])]
        shapes = {img.shape for img in imgs}
        if len(shapes) > 1:
            raise DataError(f"{root}: {split} images differ in size: {sorted(shapes)[:3]}")
        labels = np.concatenate([np.full(len(classes.get(c, [])), i) for i, c in enumerate(CIFAR_CLASSES)])
        out[split] = (np.stack(imgs), labels.astype(np.int64))
    return out


def read_cifar10(spec, options: dict) -> tuple[dict, dict]:
    """{split: uint8 (N, 32, 32, 3)} and {split: labels} with train, dev and test."""
    root = _need_folder(spec)
    limit = options.get("max_per_class")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise SpecError(f"task.options.max_per_class: expected an integer >= 1, got {limit!r}")
    batches = next((d for d in (root, root / "cifar-10-batches-py") if (d / "test_batch").is_file()), None)
    found = _torchvision(batches) if batches is not None else _image_folders(root, limit)
    if batches is not None and limit is not None:
        for split, (imgs, labels) in found.items():
            keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:limit] for c in range(10)]))
            found[split] = (imgs[keep], labels[keep])
    if not found:
        raise DataError(f"task.path: {root} holds no CIFAR-10 images (train/<class>/*.jpg, test/<class>/..., "
                        "archives of them, or cifar-10-batches-py)")
    images = {k: v[0] for k, v in found.items()}
    labels = {k: v[1] for k, v in found.items()}
    if "train" in found:
        _dev_from_train(images, labels, options)
    else:
        images, labels = _three_way(images["test"], labels["test"], options)
    return images, labels


def gray(images: np.ndarray) -> np.ndarray:
    """RGB uint8 (..., 3) -> luma uint8 (...), ITU-R 601-2 in PIL's fixed-point rounding."""
    rgb = images.astype(np.uint32)
    return ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


CIFAR_OPTIONS = ("patch_size", "max_per_class", "dev_fraction", "test_fraction", "split_seed")


@TASKS.register("cifar10")
def cifar10(spec) -> Task:
    """CIFAR-10 as sequences of colour patches (see the module doc)."""
    options = check_options(spec, CIFAR_OPTIONS)
    patch = _patch_option(options, 4)
    images, labels = read_cifar10(spec, options)
    return image_task("cifar10", images, labels, patch, CIFAR_CLASSES)


@TASKS.register("cifar10_gray")
def cifar10_gray(spec) -> Task:
    """CIFAR-10 in gray, pixel by pixel (see the module doc)."""
    options = check_options(spec, (*CIFAR_OPTIONS, "pixels"))
    patch = _patch_option(options, 1)
    pixels = options.get("pixels", "tokens")
    if pixels not in ("tokens", "values"):
        raise SpecError(f"task.options.pixels: {pixels!r} is not allowed; allowed: 'tokens', 'values'")
    if pixels == "tokens" and patch != 1:
        raise SpecError("task.options.pixels: 'tokens' reads one pixel per token; use pixels: values with patch_size")
    images, labels = read_cifar10(spec, options)
    images = {k: gray(v) for k, v in images.items()}
    return image_task("cifar10_gray", images, labels, patch, CIFAR_CLASSES, tokens=pixels == "tokens")
