"""Errors that mean "the user asked for something we cannot do".

The CLI turns every :class:`UserError` into one line on stderr and exit code 2;
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
