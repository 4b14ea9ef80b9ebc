"""Optional logging of a study's runs to TensorBoard and MLflow: one logged run per stored run.

    logging: {tensorboard: runs/tb, mlflow: file:runs/mlruns, mlflow_experiment: my-study}

The store stays the record; after a run is stored, its curve (loss, LR, gradient norm),
its evaluations and its spec are copied from the store, so every executor logs alike.
TensorBoard writes ``<folder>/<study>/<uid>`` (needs ``tensorboard``: the ``tensorboard``
extra); MLflow logs to the tracking URI in an experiment named after the study (needs
``mlflow`` or ``mlflow-skinny``: the ``mlflow`` extra).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from transferlab.errors import UserError
from transferlab.store import Store
from transferlab.study.spec import LoggingSpec, flatten


def _points(store: Store, uid: str) -> list[tuple[str, float, int]]:
    """(tag, value, step) of the run's curve and evaluations."""
    points = []
    for step, loss, lr, gnorm in store.curve(uid):
        for tag, value in (("train/loss", loss), ("train/lr", lr), ("train/grad_norm", gnorm)):
            if value is not None:
                points.append((tag, float(value), int(step)))
    points += [(f"{split}/{metric}", float(v), int(step)) for step, split, metric, v in store.evals(uid)
               if v is not None]
    return points


class Tracker:
    def __init__(self, spec: LoggingSpec):
        self.spec = spec
        if spec.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("logging.tensorboard needs TensorBoard: pip install 'transferlab[tensorboard]'") from None
            self.writer_cls = SummaryWriter
        if spec.mlflow:
            try:
                import mlflow
            except ImportError:
                raise UserError("logging.mlflow needs MLflow: pip install 'transferlab[mlflow]'") from None
            if "://" not in spec.mlflow or spec.mlflow.startswith("file:"):  # a folder: MLflow 3 wants consent
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            self.client = mlflow.tracking.MlflowClient(tracking_uri=spec.mlflow)

    def log(self, store: Store, uid: str, study: str, planned: Any = None) -> None:
        row = store.get(uid)
        points = _points(store, uid)
        tags = {"transferlab.uid": uid, "transferlab.run_id": row.run_id, "transferlab.study": study,
                "transferlab.status": row.status}
        if planned is not None:
            tags.update({"transferlab.task": planned.task, "transferlab.cell": planned.cell,
                         "transferlab.phase": planned.phase})
        if self.spec.tensorboard:
            self._tensorboard(Path(self.spec.tensorboard) / study / uid.replace("/", "_"), row, points, tags)
        if self.spec.mlflow:
            self._mlflow(self.spec.mlflow_experiment or study, row, points, tags)

    def _tensorboard(self, folder: Path, row, points, tags) -> None:
        writer = self.writer_cls(log_dir=str(folder))
        try:
            for tag, value, step in points:
                writer.add_scalar(tag, value, step)
            writer.add_text("spec", "```\n" + json.dumps(row.spec, indent=1) + "\n```")
            writer.add_text("tags", json.dumps(tags))
        finally:
            writer.close()

    def _mlflow(self, experiment: str, row, points, tags) -> None:
        from mlflow.entities import Metric, Param

        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
        run = self.client.create_run(exp_id, run_name=row.uid, tags=tags)
        now = int(time.time() * 1000)
        params = [Param(k, str(v)[:500]) for k, v in flatten(row.spec).items()]
        metrics = [Metric(tag, value, now, step) for tag, value, step in points]
        for i in range(0, max(len(params), len(metrics)), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(run.info.run_id, metrics=metrics[i:i + 100], params=params[i:i + 100])
        self.client.set_terminated(run.info.run_id, "FINISHED" if row.status == "finished" else "FAILED")
