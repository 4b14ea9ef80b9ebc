import os
import random
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")

POS = ["great", "good", "lovely", "superb", "fine", "nice"]
NEG = ["awful", "bad", "poor", "dull", "boring", "weak"]
FILL = ["the", "movie", "plot", "actor", "was", "really", "quite", "a", "story", "film", "scene", "and"]


def overflow_windows_whole(tokenizer) -> bool:
    """Whether the tokenizer's own ``only_second`` overflow returns every window of a long context
    (tokenizers 0.23.2, the GPU image's, returns at most two; train/shapes.py context_windows does not rely on it)."""
    long_context = " ".join(f"word{i}" for i in range(120))
    return len(tokenizer("q?", long_context, truncation="only_second", max_length=32, stride=8,
                         return_overflowing_tokens=True)["input_ids"]) > 2


def write_sentiment_csv(folder: Path, n_train: int = 256, n_dev: int = 64, seed: int = 0) -> Path:
    """A toy text-classification task: the label is whether a positive word occurs."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        lines = ["text,label"]
        for i in range(n):
            label = i % 2
            words = rng.sample(FILL, 5) + [rng.choice(POS if label else NEG)]
            rng.shuffle(words)
            lines.append(f"{' '.join(words)},{label}")
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def toy_task_dir(tmp_path):
    return write_sentiment_csv(tmp_path / "toy")


def tiny_spec_dict(data_dir: Path, **train) -> dict:
    return {
        "name": "tiny",
        "model": {"name": "tiny-bert", "max_length": 32},
        "task": {"name": "csv", "path": str(data_dir)},
        "head": {"name": "cls"},
        "optim": {"lr": 3e-3},
        "schedule": {"name": "linear", "warmup_ratio": 0.1},
        "train": {"epochs": 3, "batch_size": 16, "num_evals": 3, "log_every": 2, **train},
    }


def tiny_study_dict(data_dir: Path, name: str = "tiny-study", seeds=(0, 1, 2, 3, 4), **train) -> dict:
    """A study of two arms (debiased AdamW, BERTAdam) over tiny_spec_dict: fast runs on CPU."""
    base = tiny_spec_dict(data_dir, **{"epochs": 1, "num_evals": 2, "log_every": 1, "save_model": False, **train})
    base["model"]["max_length"] = 16
    return {"study": name, "base": base, "baseline": "adamw", "seeds": list(seeds),
            "arms": {"adamw": {"optim.name": "adamw"}, "bertadam": {"optim.name": "bertadam"}}}


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one torch thread (and far faster when other processes share the
    cores). Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def float64():
    """float64 as the default dtype for the test (equivalence checks at tolerances float32 cannot hold)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def wait_until(cond, timeout: float, what: str) -> None:
    """Poll ``cond()`` every 50 ms; fail the test with ``what`` if it does not hold within ``timeout`` s."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.05)
    pytest.fail(what)


def sigkill_when(args: list[str], ready, timeout: float, what: str) -> None:
    """Run ``python -m transferlab.cli *args`` and SIGKILL it as soon as ``ready()`` holds (polled);
    fail the test with ``what`` if that takes longer than ``timeout`` seconds."""
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "transferlab.cli", *args],
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL)
    try:
        wait_until(ready, timeout, what)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
