"""Tasks (named splits of examples), their loaders, and metrics.

    from transferlab.data import build_task, compute
    task = build_task(spec.task, seed=spec.seed)

Importing this package registers every task in ``TASKS``.
"""

from transferlab.data import bits, files, glue, images, imdb, listops, protein  # noqa: F401  (registers the tasks)
from transferlab.data.build import build_task
from transferlab.data.metrics import METRICS, baseline, compute, higher_is_better
from transferlab.data.task import TASKS, Split, Task

__all__ = ["METRICS", "TASKS", "Split", "Task", "baseline", "build_task", "compute", "higher_is_better"]
