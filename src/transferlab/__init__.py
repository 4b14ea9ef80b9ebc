"""transferlab: run, compare and trust transfer-learning recipes for pretrained transformers."""

import transferlab.recipes  # noqa: F401  (the recipes register the checks of their spec sections)
from transferlab._version import __version__
from transferlab.spec import RunSpec, load_spec


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
