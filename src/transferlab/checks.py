"""Checks of the user's files and folders that raise one clear line (a UserError), never a traceback.

    check_utf8(path, "task file")            the file is readable and UTF-8 (the line of a bad byte named)
    check_writable_dir(path, "-o")           the folder exists or can be made, is a folder, and is writable
    utf8_error(path, data, err)              a UnicodeDecodeError as a DataError naming the file and line
    optional_module("datasets", "task hub", "transferlab[hub]")   an optional dependency, or one line naming
                                             what needs it and how to install it (never a traceback)

Lowest layer (beside errors.py): used by the spec reader, the store, the data readers and the CLI.
"""

from __future__ import annotations

import codecs
import importlib
import os
from pathlib import Path

from transferlab.errors import DataError, UserError

_CHUNK = 1 << 20


def optional_module(name: str, needed_by: str, extra: str):
    """The module ``name`` (an optional dependency, imported where it is used), or a UserError naming what
    needs it and the package extra that installs it. A module that is there but fails on import of one
    of its own dependencies keeps its traceback: that is a broken install, not a missing option."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] != name.split(".")[0]:
            raise
        raise UserError(f"{needed_by} needs the {name.split('.')[0]} package, which is not installed: "
                        f"pip install '{extra}'") from None


def utf8_error(path: Path | str, line: int, err: UnicodeDecodeError, what: str = "file") -> DataError:
    return DataError(f"{what} {path}, line {line}: not UTF-8 text (byte 0x{err.object[err.start]:02x}); "
                     "save it as UTF-8")


def line_of(data: bytes, offset: int) -> int:
    """The 1-based line number of byte ``offset`` in ``data``."""
    return data.count(b"\n", 0, offset) + 1


def check_utf8(path: Path | str, what: str = "file") -> None:
    """Raise a DataError naming ``path`` and the line of the first byte that is not UTF-8.

    Reads in 1 MiB chunks through an incremental decoder, so large files cost one pass and little memory."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    if not os.access(path, os.R_OK):
        raise DataError(f"{what} {path} is not readable (permissions)")
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines = 0  # newlines in the chunks before the current one
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as e:
                    # e.object: the decoder's held-back bytes of a split character (never a newline) + chunk
                    raise utf8_error(path, lines + line_of(e.object, e.start), e, what) from None
                lines += chunk.count(b"\n")
            decoder.decode(b"", final=True)
    except UnicodeDecodeError as e:  # the file ends inside a character
        raise utf8_error(path, lines + 1, e, what) from None
    except OSError as e:
        raise DataError(f"{what} {path} cannot be read: {e.strerror}") from None


def check_writable_dir(path: Path | str, what: str, *, must_be_empty: bool = False) -> Path:
    """The folder ``path`` exists or can be created, is a folder, and is writable; returns it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what}: {path} is a file, not a folder")
    probe = path
    while not probe.exists():  # the nearest existing ancestor must let us create the rest
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{what}: {probe} is a file, so the folder {path} cannot be made")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{what}: the folder {probe} is not writable")
    if must_be_empty and path.is_dir() and any(path.iterdir()):
        raise UserError(f"{what}: the folder {path} is not empty")
    return path
