"""Errors that mean "the user asked for something we cannot do".

The CLI turns every :class:`UserError` into one line on stderr and exit code 2, and every
:class:`FaultError` (disk full, I/O error, store held by another process) into one line and exit 1;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input: spec, data file, model id, checkpoint."""


class SpecError(UserError):
    """A spec field is unknown, missing or has a value outside its allowed set."""


class DataError(UserError):
    """A data file or column is missing, empty, or holds a value we cannot use."""


class ModelError(UserError):
    """A model id, folder or checkpoint cannot be loaded as asked."""


class FaultError(Exception):
    """The machine failed a command that was right: the disk is full, a write failed, the store is held
    by another process beyond the timeout. The CLI prints one line (no traceback) and exits 1 once a
    run has started (``started``), 2 before anything was written."""

    def __init__(self, message: str, *, started: bool = True):
        super().__init__(message)
        self.started = started


class StoreError(FaultError):
    """A write to the store failed (locked, full, I/O); the transaction was rolled back: the store holds
    what it held before it."""
