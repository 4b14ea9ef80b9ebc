"""transferlab: run, compare and trust transfer-learning recipes for pretrained transformers."""

import transferlab.recipes  # noqa: F401  (the recipes register the checks of their spec sections)
from transferlab._version import __version__
from transferlab.spec import RunSpec, load_spec


def run(spec, store=None, **kwargs):
    """Train, evaluate and store one run (see :func:`transferlab.train.loop.run`)."""
    from transferlab.train.loop import run as _run

    return _run(spec, store, **kwargs)


__all__ = ["RunSpec", "__version__", "load_spec", "run"]
