"""Build a task from its spec: look it up, load it, cut it down, check it.

    task = build_task(spec.task, seed=spec.seed)

The one index of task modules (``_register_tasks``); the helpers they share live in
data/common.py.

Seeds: ``max_train_samples`` draws its subset with ``task.options.sample_seed``
when set, else with the run seed (so seeds vary the subset, as in few-sample
studies); ``max_eval_samples`` draws with ``sample_seed`` or 0, so every run of a
study is scored on the same examples. Dev/test splits carved out of a data set
(``split_seed``) never depend on the run seed.
"""

from __future__ import annotations

import numpy as np

from transferlab.data.common import stratified_indices
from transferlab.data.task import IGNORE, TASKS, Task
from transferlab.errors import DataError, SpecError


def _register_tasks() -> None:
    """Import every task module so that its tasks are registered in TASKS."""
    from transferlab.data import bits, conll, files, glue, hub, images, imdb, listops, protein, squad  # noqa: F401


def validate(task: Task) -> Task:
    """Check that every split is non-empty, consistent, and labelled where it must be, and that the
    task's metrics can be computed for its problem (before any training)."""
    from transferlab.data.metrics import check_metrics

    for name in ("train", "dev"):
        if name not in task.splits:
            raise DataError(f"task {task.name}: no {name!r} split")
    for name, split in task.splits.items():
        where = f"task {task.name}, split {name!r}"
        n = len(split)
        if n == 0:
            raise DataError(f"{where}: the split is empty")
        for attr in ("texts", "text_pairs", "inputs", "words", "targets"):
            value = getattr(split, attr)
            if value is not None and len(value) != n:
                raise DataError(f"{where}: {len(value)} {attr} for {n} labels")
        labels = split.labels
        if task.problem == "regression":
            missing = np.isnan(labels)
            if missing.all() and name not in ("train", "dev"):
                continue  # an unlabelled test split
            if not np.isfinite(labels).all():
                i = int(np.flatnonzero(~np.isfinite(labels))[0])
                raise DataError(f"{where}: regression target {labels[i]} at example {i} is not finite")
        elif task.kind == "span":
            continue  # character offsets into the context, checked by the task's reader (data/squad.py)
        else:
            if (labels == -1).all() and name not in ("train", "dev"):
                continue
            bad = ((labels < 0) & (labels != IGNORE)) | (labels >= task.num_labels)  # IGNORE: word padding
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DataError(
                    f"{where}: label id {labels[i]} at example {i} is outside 0..{task.num_labels - 1}"
                )
    check_metrics(task.metrics, task.main_metric, task.problem, field=f"task {task.name}: metrics")
    return task


def build_task(spec, seed: int = 0) -> Task:
    """Build the task named by ``spec.name`` (a TaskSpec), cut to the sample limits, validated."""
    _register_tasks()
    builder = TASKS.get(spec.name, field="task.name")
    task = builder(spec)
    if getattr(spec, "split_dev", False) or getattr(spec, "few_sample", None) is not None:
        from transferlab.data.fewshot import apply_protocol  # the few-sample protocol

        task = apply_protocol(task, spec, seed)
    sample_seed = spec.options.get("sample_seed")
    stratify = task.problem == "classification" and task.kind == "sequence" and task.splits["train"].labels.ndim == 1
    for field in ("max_train_samples", "max_eval_samples"):
        value = getattr(spec, field)
        if value is not None and value < 1:
            raise SpecError(f"task.{field}: must be at least 1, got {value}")
    if spec.max_train_samples is not None:
        train = task.splits["train"]
        s = seed if sample_seed is None else sample_seed
        index = stratified_indices(train.labels, spec.max_train_samples, s, stratify)
        task.splits["train"] = train.subset(index)
    if spec.max_eval_samples is not None:
        s = 0 if sample_seed is None else sample_seed
        for name, split in list(task.splits.items()):
            if name != "train":
                idx = stratified_indices(split.labels, spec.max_eval_samples, s, stratify and split.labelled)
                task.splits[name] = split.subset(idx)
    return validate(task)


def input_columns(task_spec: dict) -> list[list]:
    """The columns a file of new inputs for this task holds, [[text, pair or None], ...], the first the
    default: a GLUE task's own columns (the files' names, then the hub's), SQuAD's question and context,
    a token task's ``tokens`` (or whitespace-split ``text``), else ``task.text_column``/``text_pair_column``."""
    from transferlab.data.glue import GLUE

    name = str(task_spec.get("name") or "")
    if name.lower() in GLUE or name.lower().replace("-", "") in ("stsb", "sst2"):
        g = GLUE[{"stsb": "sts-b", "sst2": "sst-2"}.get(name.lower(), name.lower())]
        found = [list(g.columns), list(g.hub_columns)]
        return [[c[0], c[1] if g.pair else None] for i, c in enumerate(found) if c not in found[:i]]
    if name == "squad":
        return [["question", "context"]]
    if name == "conll2003":
        return [["tokens", None], ["text", None]]
    return [[task_spec.get("text_column") or "text", task_spec.get("text_pair_column")]]
