"""benchmarks/gpu_check.sh in its CPU mode (a tiny model): every step runs and writes its figures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about a minute and a half on two busy cores
def test_gpu_check_cpu_mode_writes_every_figure(tmp_path):
    rte = SHARED_DATA / "glue" / "RTE"
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT / "src")}
    argv = ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu"] + (["--rte", str(rte)] if rte.is_dir() else [])
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    text = (tmp_path / "gpu_check.md").read_text()
    for section in ("1. environment", "2. tests", "3. bench rows", "4. profile", "5. real-data study",
                    "6. peak memory per seed"):
        assert f"## {section}" in text, section
    assert "flash-attn varlen: absent" in text or "flash-attn varlen: present" in text
    tests = text.split("## 2. tests")[1].split("## 3.")[0]
    assert "F" not in tests.split("[")[0] and "error" not in tests.lower()  # the test dots: no failure
    for row in ("| trainer |", "| single |", "| parallel S=2 |", "| fast S=2 |"):
        assert row in text, row
    assert "aten::" in text  # the profiler table
    assert "all activations kept: 20 seeds at fast S=2's per-seed peak" in text
    assert "train.checkpoint_layers: 20 seeds at fast S=2's per-seed peak" in text
    assert text.count("| fast S=2 |") >= 2  # the eager row and the checkpointed one
    if rte.is_dir():
        assert "study + report: exit 0" in text
