"""Mid-run checkpoints (``train.checkpoint_every``) and resuming an interrupted run.

A checkpoint holds everything the next step depends on: model, optimizer, scheduler, loss scaler,
the freeze policy's state, the RNG states (torch, CUDA, numpy, random) and the loop's counters
(step, epoch and batches consumed in it: ``epoch_batches(seed, epoch)`` rebuilds the order). A
new attempt of a run whose previous attempt failed or died resumes from that attempt's checkpoint
and ends with the weights an uninterrupted run would have (same device, same seed).

Files are written with ``torch.save`` and read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab.errors import ModelError
from transferlab.store import Store

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
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


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
    return state["loop"]


def find_resume(store: Store, run_id: str, uid: str) -> tuple[str, Path] | None:
    """The checkpoint of the attempt before ``uid``, when that attempt failed or died."""
    earlier = [r for r in store.runs(run_id=run_id) if r.uid != uid]
    if not earlier or earlier[-1].status not in ("failed", "unfinished"):
        return None
    path = checkpoint_path(store, earlier[-1].uid)
    return (earlier[-1].uid, path) if path.is_file() else None


def carry_history(store: Store, old_uid: str, new_uid: str, step: int) -> None:
    """Copy the old attempt's evaluations and curve up to ``step`` to the resumed attempt."""
    by_split: dict[tuple[int, str], dict[str, float]] = {}
    for s, split, metric, value in store.evals(old_uid):
        if s <= step:
            by_split.setdefault((s, split), {})[metric] = value
    for (s, split), metrics in by_split.items():
        store.log_evals(new_uid, s, split, metrics)
    store.log_curve(new_uid, [row for row in store.curve(old_uid) if row[0] <= step])


def remove_checkpoints(*paths: Path | None) -> None:
    """A finished run needs no checkpoint (its weights are stored); free the space."""
    for path in paths:
        if path is not None:
            path.unlink(missing_ok=True)
