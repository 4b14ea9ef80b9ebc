"""Live tracking: one hook sends a run's points to TensorBoard, MLflow and Weights & Biases while it trains.

    tracking = TrackingSpec(tensorboard="runs/tb", mlflow="file:runs/mlruns", wandb="my-project")
    hook = TrackerHook(tracking, spec, store, study="my-study")
    try:
        run(spec, store, hooks=[hook])
    finally:
        hook.close()                      # marks the tracked run finished / failed from the store

The loop calls ``on_log(step, metrics)`` with host numbers: every ``log_every`` steps the training
loss, LR and gradient norm (``train/...``), after every evaluation ``dev/...``, and at the end
``test/...`` and ``final_dev/...``. Each point carries the wall time it was logged at. The tracked run
is named by the store's uid; its parameters are the flattened spec. The store stays the record.

Backends (each optional, the ``tracking`` extra installs all three):
    tensorboard  a folder; events go to ``<folder>/<study or "runs">/<uid>`` (names sanitised: never
                 outside the folder), flushed at every point so a reader sees them at once
    mlflow       a tracking URI (a folder or a server); experiment ``mlflow_experiment`` or the study
    wandb        a project name; ``wandb_mode`` offline (default: no account, files under ``wandb_dir``)
                 or online. W&B's own flush interval applies (``WANDB_X_TRANSACTION_LOG_FLUSH_INTERVAL``)
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from transferlab.errors import SpecError, UserError
from transferlab.recipes.hooks import Hook
from transferlab.spec import RunSpec, to_dict
from transferlab.spec import run_id as spec_run_id


@dataclass
class TrackingSpec:
    tensorboard: str | None = None  # a folder
    mlflow: str | None = None  # a tracking URI (a folder or a server URL)
    mlflow_experiment: str | None = None  # default: the study name, else "transferlab"
    wandb: str | None = None  # a W&B project
    wandb_mode: Literal["offline", "online"] = "offline"
    wandb_dir: str | None = None  # where W&B keeps its files (default: the working folder)

    @property
    def enabled(self) -> bool:
        return bool(self.tensorboard or self.mlflow or self.wandb)


def safe_name(text: str) -> str:
    """A single path component from any text: [A-Za-z0-9._-] kept, the rest '_', no leading dot."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).lstrip(".")
    return name or "_"


def inside(root: Path, *parts: str) -> Path:
    """``root / parts`` with every part sanitised; checked to lie inside ``root``."""
    root = Path(root).resolve()
    path = root.joinpath(*(safe_name(p) for p in parts)).resolve()
    if root != path and root not in path.parents:
        raise SpecError(f"tracking folder {path} would lie outside {root}")
    return path


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class TrackerHook(Hook):
    name = "tracker"

    def __init__(self, spec: TrackingSpec, run: RunSpec, store, study: str | None = None, run_id: str | None = None):
        self.spec, self.run, self.store, self.study = spec, run, store, study
        self.run_id = run_id or spec_run_id(run)  # carried in by a study, else computed here once
        self.uid: str | None = None
        self.writer = self.mlflow = self.mlflow_run = self.wandb_run = None
        self._check_installed()

    def _check_installed(self) -> None:
        for field, module, extra in (("tensorboard", "tensorboard", "tensorboard"), ("mlflow", "mlflow", "mlflow"),
                                     ("wandb", "wandb", "wandb")):
            if getattr(self.spec, field):
                try:
                    __import__(module)
                except ImportError:
                    raise UserError(f"tracking {field} needs {module}: pip install 'transferlab[{extra}]' "
                                    "(or [tracking] for all three)") from None

    # ------------------------------------------------------------------ the loop's calls
    def on_train_start(self, model, optimizer, total_steps: int) -> None:
        rows = self.store.runs(run_id=self.run_id)
        self.uid = rows[-1].uid if rows else self.run_id  # the attempt the loop just recorded
        tags = {"transferlab.uid": self.uid, "transferlab.run_id": self.run_id,
                "transferlab.study": self.study or "", "transferlab.name": self.run.name}
        params = {k: v for k, v in flatten(to_dict(self.run)).items()}
        if self.spec.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            folder = inside(Path(self.spec.tensorboard), self.study or "runs", self.uid)
            self.writer = SummaryWriter(log_dir=str(folder))
            self.writer.add_text("spec", "```\n" + json.dumps(to_dict(self.run), indent=1) + "\n```")
            self.writer.add_text("tags", json.dumps(tags))
            self.writer.flush()
        if self.spec.mlflow:
            import mlflow
            from mlflow.entities import Param

            if "://" not in self.spec.mlflow or self.spec.mlflow.startswith("file:"):  # MLflow 3 wants consent
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            self.mlflow = mlflow.tracking.MlflowClient(tracking_uri=self.spec.mlflow)
            name = self.spec.mlflow_experiment or self.study or "transferlab"
            exp = self.mlflow.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp else self.mlflow.create_experiment(name)
            self.mlflow_run = self.mlflow.create_run(exp_id, run_name=self.uid, tags=tags).info.run_id
            ps = [Param(k, str(v)[:500]) for k, v in params.items()]
            for i in range(0, len(ps), 100):  # MLflow takes at most 100 params a batch
                self.mlflow.log_batch(self.mlflow_run, params=ps[i:i + 100])
        if self.spec.wandb:
            import wandb

            folder = Path(self.spec.wandb_dir or ".")
            folder.mkdir(parents=True, exist_ok=True)
            self.wandb_run = wandb.init(project=safe_name(self.spec.wandb), name=self.uid, group=self.study,
                                        config=params, tags=[t for t in (self.study,) if t], dir=str(folder),
                                        mode=self.spec.wandb_mode, reinit="create_new")

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        now = time.time()
        if self.writer is not None:
            for tag, value in metrics.items():
                self.writer.add_scalar(tag, value, step, walltime=now)
            self.writer.flush()  # a reader (TensorBoard, a test) sees the point now, not in 2 minutes
        if self.mlflow is not None:
            from mlflow.entities import Metric

            self.mlflow.log_batch(self.mlflow_run, metrics=[Metric(k, float(v), int(now * 1000), step)
                                                            for k, v in metrics.items()])
        if self.wandb_run is not None:
            self.wandb_run.log(dict(metrics), step=step)

    # ------------------------------------------------------------------ after the run
    def close(self) -> None:
        """End the tracked runs with the stored run's status (failed when it never finished)."""
        status = "failed"
        if self.uid is not None:
            try:
                status = self.store.get(self.uid).status
            except UserError:
                pass
        if self.writer is not None:
            self.writer.add_text("status", status)
            self.writer.close()
        if self.mlflow is not None:
            self.mlflow.set_terminated(self.mlflow_run, "FINISHED" if status in ("finished", "diverged") else "FAILED")
        if self.wandb_run is not None:
            self.wandb_run.summary["transferlab.status"] = status
            self.wandb_run.finish(exit_code=0 if status in ("finished", "diverged") else 1)
        self.writer = self.mlflow = self.wandb_run = None
