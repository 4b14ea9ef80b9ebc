"""The README's first steps from a fresh clone, as a new user types them: install, the demo, `runs` on the
demo's store, the recipe example on a local copy of STS-B, export and predict.

Slow (minutes: it trains MiniLM). Offline: the fresh venv reuses the packages this test runs with (a .pth
file), so the README's install lines install only the clone itself, and the torch line takes the local CPU
build (`pip install torch==2.13.0`) instead of PyTorch's index. The demo and the recipe run at the reduced
sizes the README offers for slower machines.
"""

import csv
import os
import re
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
from conftest import SHARED_DATA, needs_shared_data

ROOT = Path(__file__).resolve().parents[1]
STSB = SHARED_DATA / "glue" / "STS-B"
TORCH_CPU = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"

pytestmark = [pytest.mark.slow, needs_shared_data]


def blocks(text: str, heading: str, lang: str = "bash") -> list[str]:
    """The ``lang`` code blocks of the README section under ``heading``."""
    section = text.split(heading + "\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", section, re.S)


def commands(block: str) -> list[str]:
    """The block's command lines, comments dropped."""
    return [c for c in (line.split("  #", 1)[0].split("# ", 1)[0].strip() for line in block.splitlines()) if c]


def sh(cmd: str, cwd: Path, env: dict, timeout: float = 1800) -> str:
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def install(clone: Path, readme: str) -> dict:
    """Step 1 of "Three commands" in the clone: the venv, the torch line (local CPU build), the core."""
    lines = commands(blocks(readme, "## Three commands")[0])
    assert lines[:3] == ["python3 -m venv .venv && . .venv/bin/activate", TORCH_CPU, "pip install -e . -c constraints.txt"]
    sh(lines[0], clone, dict(os.environ))
    venv = clone / ".venv"
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "reuse-test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # offline: reuse, download nothing
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", VIRTUAL_ENV=str(venv), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1", PIP_NO_INPUT="1")
    sh("pip install torch==2.13.0", clone, env)  # the local CPU build, where the README's line asks PyTorch's index
    sh(lines[2], clone, env)
    where = sh("python -c 'import transferlab, torch; print(transferlab.__file__); print(torch.__version__)'", clone, env)
    assert where.splitlines()[0].startswith(str(clone / "src")), where  # the clone's code, not the test's
    assert sh("command -v transferlab", clone, env).strip() == str(venv / "bin" / "transferlab")
    return env


def demo_steps(clone: Path, readme: str, env: dict) -> None:
    """The demo (the README's smaller size), then the next commands as the README and the demo print them."""
    section = readme.split("**What the demo shows.**", 1)[1].split("\n## ", 1)[0]
    smaller = re.search(r"`(transferlab demo --[^`]*)`", section)
    assert smaller, "the README offers a smaller demo for slower machines"
    out = sh(smaller.group(1), clone, env)
    assert re.search(r"Does pretraining help\? demo: pretrained vs random-init on digits \(accuracy, test, \d paired "
                     r"seeds\): (pretrained is (better|worse) than random-init|no difference detected)", out), out
    assert "store:  demo_out/demo.db" in out and "report: demo_out/report/report.html" in out
    next_cmds = commands(re.findall(r"```bash\n(.*?)```", section, re.S)[0])
    assert next_cmds[0] == "transferlab runs --store demo_out/demo.db"
    printed = [cmd for cmd in next_cmds if f"  {cmd}" in out]
    assert printed == next_cmds  # the demo prints the commands the README gives
    listed = sh(next_cmds[0], clone, env)
    assert len(re.findall(r"\bdigits\b.*\bfinished\b", listed)) >= 4, listed
    (clone / "demo_out" / "report" / "report.html").unlink()
    for cmd in next_cmds[1:]:
        sh(cmd, clone, env)
    assert (clone / "demo_out" / "report" / "report.html").is_file()  # written again by the report line


def recipe_steps(clone: Path, readme: str, env: dict) -> None:
    """The recipe example: sts-b.yaml as written, run on a local copy with the README's first-try sizes,
    then runs, export, predict, the tables and the report, each line as the README writes it."""
    (yaml_block,) = blocks(readme, "## Running a recipe", "yaml")
    assert yaml_block.startswith("# sts-b.yaml\n") and "path: null" in yaml_block
    (clone / "sts-b.yaml").write_text(yaml_block)
    lines = commands(blocks(readme, "## Running a recipe")[0])
    local = next(c for c in lines if "--set task.path=" in c)
    first_try = re.search(r"for a first try, add\s+`([^`]*)`", readme.replace("\n", " ")).group(1)
    run_cmd = re.sub(r"task\.path=\S+", f"task.path={STSB}", local) + " " + first_try
    out = sh(run_cmd, clone, env)
    uid = re.search(r"^(\S+/\d+)\s+finished\b", out, re.M).group(1)
    runs = sh(next(c for c in lines if c.startswith("transferlab runs")), clone, env)
    assert uid in runs and "pearson" in runs
    export, predict = (next(c for c in lines if c.startswith(p)) for p in ("transferlab export RUN", "transferlab predict"))
    sh(export.replace("RUN", uid), clone, env)
    assert (clone / "my-model" / "config.json").is_file() and (clone / "my-model" / "README.md").is_file()
    pairs = [("A man is playing a guitar.", "A man plays the guitar."), ("A dog runs.", "The stock market fell."),
             ("Two kids swim.", "Children are swimming.")]
    with open(clone / "pairs.csv", "w", newline="") as f:
        csv.writer(f).writerows([("sentence1", "sentence2"), *pairs])
    sh(predict.replace("RUN", uid), clone, env)
    with open(clone / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    for line in (c for c in lines if c.startswith(("transferlab export --csv", "transferlab report"))):
        sh(line, clone, env)
    assert (clone / "tables" / "runs.csv").is_file() and (clone / "report" / "report.html").is_file()


@pytest.mark.timeout(3600)
def test_readme_walkthrough_from_a_fresh_clone(tmp_path):
    start = time.time()
    clone = tmp_path / "transferlab"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=300)
    readme = (clone / "README.md").read_text(encoding="utf-8")
    env = install(clone, readme)
    demo_steps(clone, readme, env)
    recipe_steps(clone, readme, env)
    print(f"README walk-through: {time.time() - start:.0f} s", file=sys.stderr)
