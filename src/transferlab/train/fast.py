"""The fast path's small parts: torch.compile with a fallback, pinned non-blocking transfers.

    forward = compiled(model, enabled=spec.train.compile)   # a callable like model
    logits = forward(**batch)

``torch.compile`` needs a working compiler tool chain (Triton on CUDA, a C++ compiler on CPU) and
compiles on first use; when that (or a later recompile) fails, the call runs eagerly, a warning
says why once, and every later call is eager. An error that eager execution raises too is a real
error and propagates. Dynamic shapes are on: batches are padded per batch, so lengths vary.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)


class Compiled:
    """``fn`` compiled by torch.compile, falling back to ``fn`` itself on any compile failure."""

    def __init__(self, fn: Callable, enabled: bool = True, **options: Any):
        self.fn = fn
        self.fast: Callable | None = None
        if enabled:
            try:
                self.fast = torch.compile(fn, dynamic=True, **options)
            except Exception as e:  # noqa: BLE001 - e.g. no compiler back end on this platform
                self.fall_back(e)

    def fall_back(self, err: BaseException) -> None:
        """Eager from now on (a caller that saw a compile failure outside ``__call__``, e.g. in backward)."""
        self.fast = None
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        warnings.warn(f"torch.compile failed, running eagerly: {type(err).__name__}: {first}", stacklevel=3)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.fast is not None:
            try:
                return self.fast(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - compile errors come in many types; eager re-raises real ones
                self.fall_back(e)
        return self.fn(*args, **kwargs)

    @property
    def active(self) -> bool:
        return self.fast is not None


def compiled(fn: Callable, enabled: bool = True, **options: Any) -> Callable:
    """``fn`` itself when not ``enabled``, else a :class:`Compiled` wrapper."""
    return Compiled(fn, True, **options) if enabled else fn


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Host tensors to ``device``: pinned and non-blocking on CUDA (the copy overlaps compute); other values
    (host-side sizes such as ``pack_seqlens``) as they are."""
    if device.type == "cuda":
        return {k: v.pin_memory().to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()}
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
