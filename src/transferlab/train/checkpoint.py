"""Weights kept with a run (safetensors) and what is needed to rebuild the model without data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from transferlab.data.task import Split, Task
from transferlab.errors import ModelError

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
    save_file(unique, str(folder / "model.safetensors"))
    (folder / "task.json").write_text(json.dumps(meta, indent=1))
    return folder


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
