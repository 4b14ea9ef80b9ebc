"""Where runs keep their artifacts (final weights, checkpoints, test predictions): a local folder or
an fsspec URL.

    loc = ArtifactLocation("s3://bucket/transferlab", cache=Path("runs/transferlab_artifacts/.cache"))
    folder = loc.local(uid)   # a local folder: the folder itself, or a cache filled from the URL
    ...write files into folder...
    loc.push(uid)             # mirror the folder to the URL (a no-op for a local folder)

A plain path is used as it is. A URL (``file://``, ``s3://``, ``gs://``, ``memory://``...) goes
through fsspec (``s3://`` needs s3fs, ``gs://`` gcsfs): runs write into a local cache folder and
push it to the URL after every checkpoint and at the end; a reader (resume, export, a KD teacher,
churn) pulls a run's folder into the cache once per process. Nodes of a cluster that share no file
system share the artifacts through such a URL.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from transferlab.errors import UserError

_PULLED: set[tuple[str, str]] = set()  # (cache folder, uid) pulled by this process


def safe_name(uid: str) -> str:
    return uid.replace("/", "_")


class ArtifactLocation:
    def __init__(self, url: str, cache: Path | None = None):
        self.url = str(url)
        self.remote = "://" in self.url
        self.cache = Path(cache) if cache is not None else Path(".transferlab_cache")
        self.fs = _filesystem(self.url) if self.remote else None

    def root_path(self) -> Path:
        """The local root: the folder, or this URL's cache folder."""
        if not self.remote:
            return Path(self.url)
        return self.cache / hashlib.sha256(self.url.encode()).hexdigest()[:12]

    def remote_dir(self, uid: str) -> str:
        return self.url.rstrip("/") + "/" + safe_name(uid)

    def local(self, uid: str) -> Path:
        folder = self.root_path() / safe_name(uid)
        if self.remote and ((str(folder), uid) not in _PULLED or not folder.is_dir()):
            _PULLED.add((str(folder), uid))
            self.pull(uid, folder)
        return folder

    def pull(self, uid: str, folder: Path) -> None:
        src = self.remote_dir(uid)
        if not self.fs.exists(src):
            return
        folder.mkdir(parents=True, exist_ok=True)
        for path in self.fs.find(src):
            self.fs.get(path, str(folder / path[len(self.fs._strip_protocol(src)):].lstrip("/")))

    def push(self, uid: str) -> None:
        """Mirror the local folder of ``uid`` to the URL: new and changed files up, removed files gone."""
        if not self.remote:
            return
        folder, dst = self.root_path() / safe_name(uid), self.remote_dir(uid)
        here = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else set()
        there = {p[len(self.fs._strip_protocol(dst)):].lstrip("/") for p in self.fs.find(dst)} \
            if self.fs.exists(dst) else set()
        for name in there - here:
            self.fs.rm(dst + "/" + name)
        for name in sorted(here):
            target = dst + "/" + name
            self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            self.fs.put(str(folder / name), target)

    def write_files(self, uid: str, files: dict[str, bytes]) -> None:
        """Files a worker sent back with its record (no shared artifact location): into ``uid``'s folder."""
        folder = self.root_path() / safe_name(uid)
        for name in files:  # every name checked before anything is written: a name from a worker stays inside
            parts = Path(name).parts
            if not name or Path(name).is_absolute() or ".." in parts or "\x00" in name or \
                    not (folder / name).resolve().is_relative_to(folder.resolve()):
                raise UserError(f"worker file name {name!r} leaves the artifact folder {folder}; refused")
        for name, data in files.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        self.push(uid)


def _filesystem(url: str):
    protocol = url.split("://", 1)[0]
    try:
        import fsspec

        return fsspec.filesystem(protocol)
    except ImportError as e:
        raise UserError(f"artifact location {url}: the fsspec backend for {protocol}:// is not installed "
                        f"({str(e).splitlines()[0]})") from None
    except ValueError as e:
        raise UserError(f"artifact location {url}: {protocol}:// is not a known fsspec protocol ({e})") from None


def read_files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative names), to send back to the driver."""
    if not folder.is_dir():
        return {}
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
