"""Bit tasks of Lu et al. (2021, FPT), generated offline and seeded: ``bit_memory`` and ``bit_xor``.

``bit_memory``: ``num_strings`` random strings of ``length`` bits, then a copy of one of them with
each bit masked with probability ``mask_prob``; the model recovers the whole queried string.
``bit_xor``: ``num_strings`` random strings (FPT: 2 of 5 bits); the model outputs their XOR.

Bits are fed as +1/-1 (a masked bit is 0), cut into tokens of ``patch_size`` bits (modality
``vectors``, input_dim ``patch_size``): ``(num_strings [+1]) * length / patch_size`` tokens. The
model predicts every bit from the last ``length / patch_size`` tokens (the query string, as FPT's
``return_last_only``), so labels are (N, length) 0/1 and the metric is bit accuracy. The task
tells the model so through ``extra["output_tokens"]`` and ``extra["outputs_per_token"]``.

Options (defaults): ``num_strings`` (5 / 2), ``length`` (64 / 5), ``mask_prob`` (0.5, memory
only), ``patch_size`` (16 / ``length``), ``num_train`` (10000 / 4000), ``num_dev`` and
``num_test`` (1000), ``data_seed`` (0: the data never depend on the run seed).
"""

from __future__ import annotations

import numpy as np

from transferlab.data.common import check_options
from transferlab.data.task import TASKS, Split, Task
from transferlab.errors import SpecError

COMMON = ("num_strings", "length", "patch_size", "num_train", "num_dev", "num_test", "data_seed")


def _int(options: dict, key: str, default: int, low: int = 1) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SpecError(f"task.options.{key}: expected an integer >= {low}, got {value!r}")
    return value


def _no_files(spec) -> None:
    if spec.path is not None or spec.train_file is not None:
        raise SpecError(f"task.path: {spec.name} is generated; leave task.path and task.train_file unset")


def bit_memory_batch(rng: np.random.Generator, n: int, strings: int, length: int, mask_prob: float):
    """(inputs (n, strings + 1, length) in {-1, 0, +1}, labels (n, length) in {0, 1}, query index (n,))."""
    bits = rng.integers(0, 2, size=(n, strings, length))
    query = rng.integers(0, strings, size=n)
    target = bits[np.arange(n), query]
    keep = rng.random((n, length)) >= mask_prob
    signed = 2 * bits - 1
    masked = (2 * target - 1) * keep
    inputs = np.concatenate([signed, masked[:, None]], axis=1).astype(np.float32)
    return inputs, target.astype(np.int64), query


def xor_of(bits: np.ndarray) -> np.ndarray:
    """(n, strings, length) 0/1 -> (n, length): bit i is 1 when an odd number of strings have bit i set."""
    return np.bitwise_xor.reduce(bits, axis=1).astype(np.int64)


def bit_xor_batch(rng: np.random.Generator, n: int, strings: int, length: int):
    """(inputs (n, strings, length) in {-1, +1}, labels (n, length): the XOR of the strings)."""
    bits = rng.integers(0, 2, size=(n, strings, length))
    return (2 * bits - 1).astype(np.float32), xor_of(bits)


def _task(name: str, make, options: dict, length: int, patch: int) -> Task:
    if length % patch:
        raise SpecError(f"task.options.patch_size: {patch} does not divide the string length {length}")
    seed = _int(options, "data_seed", 0, low=0)
    splits = {}
    defaults = {"train": 10000 if name == "bit_memory" else 4000, "dev": 1000, "test": 1000}
    for i, split in enumerate(("train", "dev", "test")):
        n = _int(options, f"num_{split}", defaults[split])
        inputs, labels = make(np.random.default_rng([seed, i]), n)
        tokens = inputs.reshape(n, -1, patch)  # strings one after the other, cut into patches
        splits[split] = Split(labels, inputs=tokens)
    return Task(
        name=name, splits=splits, problem="classification", num_labels=2, metrics=("accuracy",),
        main_metric="accuracy", label_names=["0", "1"], modality="vectors", input_dim=patch,
        extra={"output_tokens": length // patch, "outputs_per_token": patch, "num_tokens": tokens.shape[1]},
    )


@TASKS.register("bit_memory")
def bit_memory(spec) -> Task:
    """Recover one of ``num_strings`` memorised strings from a masked copy (see the module doc)."""
    options = check_options(spec, (*COMMON, "mask_prob"))
    _no_files(spec)
    strings = _int(options, "num_strings", 5)
    length = _int(options, "length", 64)
    mask_prob = options.get("mask_prob", 0.5)
    if isinstance(mask_prob, bool) or not isinstance(mask_prob, (int, float)) or not 0 <= mask_prob < 1:
        raise SpecError(f"task.options.mask_prob: expected a probability in [0, 1), got {mask_prob!r}")
    patch = _int(options, "patch_size", min(16, length))
    return _task("bit_memory", lambda rng, n: bit_memory_batch(rng, n, strings, length, float(mask_prob))[:2],
                 options, length, patch)


@TASKS.register("bit_xor")
def bit_xor(spec) -> Task:
    """The XOR of ``num_strings`` random strings of ``length`` bits (see the module doc)."""
    options = check_options(spec, COMMON)
    _no_files(spec)
    strings = _int(options, "num_strings", 2, low=2)
    length = _int(options, "length", 5)
    patch = _int(options, "patch_size", length)
    return _task("bit_xor", lambda rng, n: bit_xor_batch(rng, n, strings, length), options, length, patch)
