"""What a run keeps besides its rows in the store: final weights, task metadata, resumable
checkpoints, and rebuilding a stored run's model (no training data needed).

    save_weights(model, store.artifact_dir(uid), task_meta(task))   # model.safetensors + task.json
    model, task = load_run_model(store, "a1b2c3-s0")                 # a stored run's model, for eval
    save_checkpoint(path, model=..., optimizer=..., ..., loop={...}) # resumable, atomic
    st = load_checkpoint(path, model=..., ...)                       # torch.load(weights_only=True)
    save_predictions(folder, "test", preds)                           # predictions_test.npy, for churn

Weights are safetensors; checkpoints are written with ``torch.save`` and read with
``torch.load(weights_only=True)``. A checkpoint holds everything the next step depends on:
model, optimizer, scheduler, loss scaler, the freeze policy's state, the RNG states (torch,
CUDA, numpy, random) and the loop's counters (step, epoch and batches consumed in it:
``epoch_batches(seed, epoch)`` rebuilds the order). A new attempt of a run whose previous
attempt failed or died resumes from that attempt's checkpoint and ends with the weights an
uninterrupted run would have (same device, same seed).
"""

from __future__ import annotations

import errno
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from transferlab.data.task import Split, Task
from transferlab.errors import FaultError, ModelError
from transferlab.models.model import TransferModel, build_model
from transferlab.spec import spec_from_dict
from transferlab.store import Store

MODEL_EXTRA = ("output_tokens", "outputs_per_token", "num_tokens", "pad_id")  # task.extra keys the model reads


def task_meta(task: Task) -> dict:
    """The parts of a task the model depends on (not its data)."""
    return {
        "name": task.name, "problem": task.problem, "num_labels": task.num_labels, "metrics": list(task.metrics),
        "main_metric": task.main_metric, "label_names": task.label_names, "modality": task.modality,
        "vocab_size": task.vocab_size, "input_dim": task.input_dim, "kind": task.kind,
        "extra": {k: task.extra[k] for k in MODEL_EXTRA if k in task.extra},
    }


def task_from_meta(meta: dict) -> Task:
    """A data-less task with the shape of the one a model was trained on."""
    empty = Split(labels=np.zeros(0))
    return Task(name=meta["name"], splits={"train": empty}, problem=meta["problem"], num_labels=meta["num_labels"],
                metrics=tuple(meta["metrics"]), main_metric=meta["main_metric"], label_names=meta["label_names"],
                modality=meta["modality"], vocab_size=meta["vocab_size"], input_dim=meta["input_dim"],
                kind=meta.get("kind", "sequence"), extra=dict(meta.get("extra") or {}))


def save_weights(model: torch.nn.Module, folder: Path, meta: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # tied weights (e.g. GPT-2 wte/lm head) share storage; safetensors wants them once each
    seen: dict[int, str] = {}
    unique = {}
    for k, v in state.items():
        ptr = v.data_ptr()
        if ptr in seen and v.numel() > 0:
            continue
        seen[ptr] = k
        unique[k] = v
    atomic_write(folder / "model.safetensors", lambda tmp: save_file(unique, str(tmp)), "weights")
    atomic_write(folder / "task.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=1)), "task metadata")
    return folder


def atomic_write(path: Path, write, what: str) -> None:
    """``write(tmp)`` to a temporary name beside ``path``, then a rename: a kill or a full disk mid-write
    leaves the previous file (or none), never a truncated one. A failing write is a FaultError naming
    the file and the cause (one line, no traceback), and the temporary file is removed."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except (OSError, SafetensorError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not isinstance(e, SafetensorError) and "writ" not in str(e):
            raise  # not a failed write (torch.save reports one as "... failed writing file ...")
        tmp.unlink(missing_ok=True)
        text = " ".join(str(e).split())
        full = getattr(e, "errno", None) == errno.ENOSPC or "No space left" in text or "StorageFull" in text
        cause = "the disk is full" if full else f"the write failed ({text[:200]})"
        raise FaultError(f"cannot write the run's {what} to {path}: {cause}; free space or fix the disk, then run "
                         "the same command again") from None


def load_weights(model: torch.nn.Module, folder: Path) -> None:
    path = folder / "model.safetensors"
    if not path.is_file():
        raise ModelError(f"no weights at {path}: the run did not save its model (train.save_model: false?)")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"cannot read checkpoint {path}: {e}") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in _tied(model)]
    if missing or unexpected:
        raise ModelError(f"checkpoint {path} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def _tied(model: torch.nn.Module) -> set[str]:
    """Names of state-dict entries that share storage with an earlier entry."""
    seen, tied = set(), set()
    for k, v in model.state_dict().items():
        if v.data_ptr() in seen and v.numel() > 0:
            tied.add(k)
        seen.add(v.data_ptr())
    return tied


def read_task_meta(folder: Path) -> dict:
    path = folder / "task.json"
    if not path.is_file():
        raise ModelError(f"no task.json in {folder}")
    meta = json.loads(path.read_text())
    if "multitask" in meta:  # train/multitask.py: one head per task
        names = ", ".join(m["name"] for m in meta["multitask"])
        raise ModelError(f"{folder} holds a multi-task model (heads for {names}); rebuilding one task's model "
                         "from it (export, teacher, transplant source) is not supported")
    return meta


def load_run_model(store: Store, ref: str) -> tuple[TransferModel, Task]:
    row = store.get(ref)
    folder = store.artifact_dir(row.uid)
    task = task_from_meta(read_task_meta(folder))
    spec = spec_from_dict(row.spec)
    model = build_model(spec, task)
    load_weights(model, folder)
    model.eval()
    return model, task


CHECKPOINT = "checkpoint.pt"


def checkpoint_path(store: Store, uid: str) -> Path:
    return store.artifact_dir(uid) / CHECKPOINT


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])


def save_checkpoint(path: Path, *, model, optimizer, scheduler, scaler, freezer, loop: dict[str, Any]) -> None:
    """Write atomically (a temporary file, then a rename): a kill mid-write keeps the previous one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None else None, "freeze": freezer.state_dict(),
             "rng": rng_state(), "loop": loop}
    streams = getattr(model, "dropout_streams", None)  # train.dropout_rng: run (models/dropout_streams.py)
    if streams is not None:
        state["rng"]["streams"] = [g.get_state() for g in streams.generators]
    atomic_write(path, lambda tmp: torch.save(state, tmp), "checkpoint")


def load_checkpoint(path: Path, *, model, optimizer, scheduler, scaler, freezer) -> dict[str, Any]:
    """Restore everything saved and return the loop's counters."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise ModelError(f"cannot read checkpoint {path}: {e}") from None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    freezer.load_state_dict(state["freeze"])
    set_rng_state(state["rng"])
    streams = getattr(model, "dropout_streams", None)
    if streams is not None:
        if len(state["rng"].get("streams", ())) != len(streams.generators):
            raise ModelError(f"checkpoint {path}: no dropout stream state (train.dropout_rng: run) to resume from")
        for g, saved in zip(streams.generators, state["rng"]["streams"]):
            g.set_state(saved)
    return state["loop"]


def find_resume(store: Store, run_id: str, uid: str) -> tuple[str, Path] | None:
    """The checkpoint of the attempt before ``uid``, when that attempt failed or died."""
    earlier = [r for r in store.runs(run_id=run_id) if r.uid != uid]
    if not earlier or earlier[-1].status not in ("failed", "unfinished"):
        return None
    path = checkpoint_path(store, earlier[-1].uid)
    return (earlier[-1].uid, path) if path.is_file() else None


def carry_history(store: Store, old_uid: str, new_uid: str, step: int, history: dict | None = None) -> None:
    """Copy the old attempt's evaluations and curve up to ``step`` to the resumed attempt: from the
    checkpoint (``history``, which a worker that never wrote the store saved there), else from the store."""
    evals = history["evals"] if history else store.evals(old_uid)
    curve = history["curve"] if history else store.curve(old_uid)
    by_split: dict[tuple[int, str], dict[str, float]] = {}
    for s, split, metric, value in evals:
        if s <= step:
            by_split.setdefault((s, split), {})[metric] = value
    for (s, split), metrics in by_split.items():
        store.log_evals(new_uid, s, split, metrics)
    store.log_curve(new_uid, [tuple(row) for row in curve if row[0] <= step])


def remove_checkpoints(*paths: Path | None) -> None:
    """A finished run needs no checkpoint (its weights are stored); free the space."""
    for path in paths:
        if path is not None:
            path.unlink(missing_ok=True)


# a finished run's test predictions (class ids, or floats for regression, in row order), for churn
def predictions_path(folder: Path, split: str) -> Path:
    return Path(folder) / f"predictions_{split}.npy"


def save_predictions(folder: Path, split: str, preds: np.ndarray) -> Path:
    path = predictions_path(folder, split)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: np.save would add ".npy" to the temporary name
            np.save(f, np.asarray(preds), allow_pickle=False)

    atomic_write(path, write, "predictions")
    return path


def load_predictions(folder: Path, split: str) -> np.ndarray | None:
    path = predictions_path(folder, split)
    return np.load(path, allow_pickle=False) if path.is_file() else None
