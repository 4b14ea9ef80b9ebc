"""transferlab: run, compare and trust transfer-learning recipes for pretrained transformers.

``import transferlab`` imports no torch, transformers or other heavy library (``transferlab --version``
starts at once): the spec reader is plain Python, the recipes that check spec sections are loaded on the
first check, and :func:`run` imports the training loop when it is called.
"""

from transferlab._version import __version__
from transferlab.spec import RunSpec, load_section_checks_from, load_spec


def _load_recipe_checks() -> None:
    import transferlab.recipes  # noqa: F401  (the recipes register the checks of their spec sections)


load_section_checks_from(_load_recipe_checks)


def run(spec, store=None, **kwargs):
    """Train, evaluate and store one run (see :func:`transferlab.train.loop.run`)."""
    from transferlab.errors import UserError
    from transferlab.store import Store
    from transferlab.train.loop import run as _run

    if not isinstance(spec, RunSpec):
        raise UserError(f"run: expected a RunSpec (transferlab.load_spec(path or dict)), got {type(spec).__name__}")
    if store is not None and not isinstance(store, Store):
        raise UserError(f"run: store must be a Store (transferlab.store.Store(path)) or None, got "
                        f"{type(store).__name__}")
    return _run(spec, store, **kwargs)


__all__ = ["RunSpec", "__version__", "load_spec", "run"]
