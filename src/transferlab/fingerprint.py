"""Fingerprints of what a run reads besides its spec: its data files and its model's weights.

    fingerprint(spec)  # {"data": "9f2c...", "model": "tiny-bert"}; part of the run id (spec.run_id)

Data: every file under ``task.path`` (a folder or one file) and any ``train/dev/test_file`` given
outside it, by content: SHA-256 of the whole file up to ``FULL_HASH_MAX`` bytes (256 MiB); a larger
file by the cheaper fingerprint ``size + SHA-256 of its first and last MiB`` (a change in the middle
of a huge file that keeps its size goes unseen: pass ``--rerun`` then). A task from the Hugging
Face hub (``path: null``) is identified by its name and options, which are in the spec.
Model: an alias (``tiny-bert``, ``minilm``... built-in or random) is a constant, its name; a local
folder is fingerprinted like data (its weight and config files); a hub id by the revision resolved
in the local Hugging Face cache (``refs/<revision>``), or the requested revision when not cached.
Other local weight folders the run reads (``input_adapter.from``, a KD teacher folder, transplant
sources) are fingerprinted like data (a teacher or source named by run id is identified by its id).
File hashes are cached per process by (path, size, mtime), so repeated run ids cost a ``stat`` per file.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

FULL_HASH_MAX = 256 * 2**20
EDGE = 2**20
TREE_TTL_S = 2.0
_CACHE: dict[tuple[str, int, int], str] = {}
_TREES: dict[str, tuple[float, list[Path]]] = {}


def file_fingerprint(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            if st.st_size <= FULL_HASH_MAX:
                for block in iter(lambda: f.read(2**20), b""):
                    h.update(block)
            else:  # documented cheaper fingerprint for large files
                h.update(str(st.st_size).encode())
                h.update(f.read(EDGE))
                f.seek(st.st_size - EDGE)
                h.update(f.read(EDGE))
        _CACHE[key] = h.hexdigest()
    return _CACHE[key]


def tree_fingerprint(paths: list[Path]) -> str | None:
    """One hash over every file under ``paths`` (names relative to each root, then contents)."""
    h, seen = hashlib.sha256(), False
    for root in paths:
        files = _listing(root)
        if files is None:
            h.update(f"missing:{root}".encode())
            continue
        for f in files:
            seen = True
            h.update(f"{f.relative_to(root) if f != root else f.name}:{file_fingerprint(f)}\n".encode())
    return h.hexdigest() if seen else None


def _listing(root: Path) -> list[Path] | None:
    """The files under ``root``; a folder's listing is reused for ``TREE_TTL_S`` seconds (expanding a
    study asks once per run); every file is still stat-ed, so a changed file is always seen."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        return None
    hit = _TREES.get(str(root))
    if hit is None or time.monotonic() - hit[0] > TREE_TTL_S:
        hit = _TREES[str(root)] = (time.monotonic(), sorted(
            p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")))
    return [p for p in hit[1] if p.exists()]


def data_fingerprint(task) -> str | None:
    roots = [Path(task.path).expanduser()] if task.path else []
    for name in (task.train_file, task.dev_file, task.test_file):
        if name and (Path(name).is_absolute() or not task.path):
            roots.append(Path(name).expanduser())
    return tree_fingerprint(roots) if roots else None


def model_fingerprint(model) -> str:
    folder = Path(model.name).expanduser()
    if folder.is_dir():
        return tree_fingerprint([folder]) or model.name
    if "/" not in model.name:
        return model.name  # an alias: built in, or a constant name
    return f"{model.name}@{_cached_revision(model.name, model.revision or 'main')}"


def _cached_revision(repo: str, revision: str) -> str:
    """The commit a hub revision resolves to in the local cache (offline), else the revision asked for."""
    home = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub")
    ref = home.expanduser() / f"models--{repo.replace('/', '--')}" / "refs" / revision
    try:
        return ref.read_text().strip()
    except OSError:
        return revision


def other_folders(spec) -> list[Path]:
    """Local folders besides the model that a run reads weights from: a masked-input layer
    (``input_adapter.from``), a KD teacher folder, transplant sources."""
    names = [spec.input_adapter.from_, spec.distill.teacher, *(t.source for t in spec.transplant)]
    return [Path(n).expanduser() for n in names if n and Path(n).expanduser().is_dir()]


def fingerprint(spec) -> dict[str, Any]:
    out = {"data": data_fingerprint(spec.task), "model": model_fingerprint(spec.model)}
    if folders := other_folders(spec):  # only when there are any: other run ids stay as they were
        out["weights"] = tree_fingerprint(folders)
    return out
