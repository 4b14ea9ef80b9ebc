"""Training: the Engine, the one loop of every mode, and its protocols (engine.py); single and stacked
runs prepared for it (loop.py), multi-task runs (multitask.py); how the model computes (compute.py),
per-run bookkeeping, evaluation and the task shapes (shapes.py registers the token and span encoders
with batches.py)."""

from transferlab.train import shapes  # noqa: F401  (registers the token and span encoders)
