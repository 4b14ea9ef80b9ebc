"""The README's "Your own CSV" section runs as written."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def own_csv_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Your own CSV", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, re.S)[0]


@pytest.mark.slow  # trains the real MiniLM through two CLI processes: ~25 s on the 2-core CPU
def test_readme_own_csv_section_runs_verbatim(tmp_path):
    block = own_csv_block()
    assert "reviews/train.csv" in block and "transferlab run reviews.yaml" in block
    bin_dir = str(Path(sys.executable).parent)  # where the `transferlab` script is installed
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "finished" in proc.stdout and "my-reviews" in proc.stdout
    assert (tmp_path / "my-runs.db").is_file()
    from transferlab.store import Store

    runs = Store(tmp_path / "my-runs.db").runs()
    assert len(runs) == 1 and runs[0].status == "finished"
    assert runs[0].summary["dev"]["accuracy"] >= 0.0 and runs[0].summary["steps"] == 4  # 6 train rows, batch 4, 2 epochs


def test_readme_own_csv_block_is_self_contained():
    """The block writes every file it reads (so it runs in an empty folder) and uses the defaults it documents."""
    block = own_csv_block()
    assert "cat > reviews/train.csv" in block and "cat > reviews.yaml" in block
    assert block.split("cat > reviews/train.csv <<'CSV'\n", 1)[1].startswith("text,label\n")
    assert "dev_fraction" in block
