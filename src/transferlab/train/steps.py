"""The small pieces every training loop here shares (fine-tuning, pretraining, the stacked engine).

    seed_everything(0); device = resolve_device("auto"); amp = autocast_dtype("auto", device)
    per_epoch, total = step_plan(len(train), spec.train); evals = eval_schedule(total, 10)
    loss = loss_fn(logits, labels, regression)

The optimizer step itself lives in train/engine.py (``optimizer_step``), the one place that drives it.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
import torch.nn.functional as F

from transferlab.errors import UserError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device: {name!r} asked for but CUDA is not available here; use 'cpu' or 'auto'")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    return torch.bfloat16  # auto and bf16


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    if regression:
        return F.mse_loss(logits.squeeze(-1).float(), labels)
    if logits.dim() == 3:  # per-token outputs (bit tasks): (B, L, C) against (B, L) labels
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
    return F.cross_entropy(logits.float(), labels)


def step_plan(n_train: int, tspec) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps) for ``n_train`` examples under ``train:``."""
    per_epoch = max(1, math.ceil(math.ceil(n_train / tspec.batch_size) / tspec.grad_accum))
    return per_epoch, tspec.max_steps or max(1, math.ceil(tspec.epochs * per_epoch))


def eval_schedule(total: int, num_evals: int) -> list[int]:
    """The steps with a dev evaluation: ``num_evals`` evenly spread, and always the last step."""
    return sorted({max(1, round(total * (i + 1) / num_evals)) for i in range(num_evals)} | {total})


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
