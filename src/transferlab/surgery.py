"""Surgery: evaluate a fine-tuned run after replacing parts of it, without training.

    transferlab surgery RUN -s "init layers=5 scheme=xavier_uniform" -s "transplant source=self layers=5"

Each surgery starts from the run's own fine-tuned weights and applies its steps in order (steps
joined by `` + ``). A step is ``init`` (keys of an init rule's ``select``: layers, roles, heads,
modules, patterns; ``scheme`` (default normal) and the scheme's options) or ``transplant`` (the keys
of a transplant step: source, run, store, layers, roles, heads, modules, on_mismatch; ``source=self``
is the fine-tuned run itself, so ``transplant source=self layers=5`` puts layer 5's own weights back).
Layers count from 0 at the input: layer 5 is the sixth. Lists are comma-separated (``roles=q,k``);
``heads=0<-1`` maps target head 0 to source head 1.

Every surgery, and the unchanged model (``none``), is evaluated on the run's task (``--split``,
default dev) and stored as a run of kind ``surgery`` with its metrics, the change against the
unchanged model and the number of predictions that changed; the table is the Wav2Vec2-into-BERT
study's "swap one part, no retraining" table.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from typing import Any

import numpy as np
import yaml
from torch import nn

from transferlab.errors import SpecError, UserError

OPS = ("init", "transplant")
_LISTS = ("roles", "modules", "patterns")


def _value(key: str, text: str) -> Any:
    if key in _LISTS:
        return [t for t in text.split(",") if t]
    if key == "heads":
        if "<-" in text:
            return dict(tuple(int(x) for x in pair.split("<-")) for pair in text.split(","))
        return [int(h) for h in text.split(",") if h]
    if key in ("layers", "source", "run", "store", "scheme", "on_mismatch", "nonlinearity", "mode"):
        return text
    value = yaml.safe_load(text)
    return value if isinstance(value, (int, float, bool)) else text


def parse_surgery(text: str) -> list[tuple[str, Any]]:
    """``"init layers=5 scheme=xavier_uniform + transplant source=self layers=5"`` -> checked steps."""
    from transferlab.spec import InitRule, TransplantSpec, spec_from_dict

    steps = []
    for part in text.split(" + "):
        words = part.split()
        if not words or words[0] not in OPS:
            raise UserError(f"surgery {text!r}: each step starts with one of {', '.join(OPS)}")
        args = {}
        for word in words[1:]:
            key, eq, val = word.partition("=")
            if not eq:
                raise UserError(f"surgery {text!r}: {word!r} is not key=value")
            try:
                args[key] = _value(key, val)
            except ValueError:
                raise UserError(f"surgery {text!r}: {word!r}: heads are integers (0,1 or 0<-1)") from None
        try:
            if words[0] == "init":
                select = {k: args.pop(k) for k in ("layers", "roles", "heads", "modules", "patterns") if k in args}
                steps.append(("init", InitRule(select=select, scheme=args.pop("scheme", "normal"), options=args)))
            else:
                steps.append(("transplant", spec_from_dict(args, TransplantSpec)))
        except SpecError as e:
            raise SpecError(f"surgery {text!r}: {e}") from None
    return steps


def apply_surgery(model: nn.Module, original: nn.Module, steps: list[tuple[str, Any]], store=None,
                  seed: int = 0) -> list[dict[str, Any]]:
    """Apply parsed steps to ``model``; ``original`` is the source for ``transplant source=self``."""
    from transferlab.recipes.init import apply_init
    from transferlab.recipes.transplant import load_source, transplant
    from transferlab.spec import InitSpec

    reports = []
    for op, step in steps:
        if op == "init":
            reports.append({"init": apply_init(model, InitSpec(rules=[step]), seed=seed)})
            continue
        source, name = (original, "self") if step.source == "self" else load_source(step, store)
        reports.append({"transplant": transplant(model, source, layers=step.layers, roles=step.roles,
                                                 heads=step.heads, modules=step.modules,
                                                 on_mismatch=step.on_mismatch, source_name=name)})
    return reports


def run_surgery(store, ref: str, surgeries: list[str], *, split: str = "dev", task_path: str | None = None,
                seed: int = 0, batch_size: int = 64, device: str = "auto") -> tuple[str, list[dict[str, Any]]]:
    """Evaluate run ``ref`` unchanged and under each surgery; store each as a ``surgery`` run.

    Returns the main metric's name and one row per surgery: name, uid, metrics, delta (main metric),
    changed (predictions that differ from the unchanged model's).
    """
    from transferlab.data.build import build_task
    from transferlab.data.metrics import compute
    from transferlab.models.artifacts import load_run_model
    from transferlab.spec import spec_from_dict
    from transferlab.train.batches import encode
    from transferlab.train.evaluate import predict
    from transferlab.train.steps import resolve_device

    parsed = {text: parse_surgery(text) for text in surgeries}  # every mistake before any work
    base = store.get(ref)
    if base.kind != "train" or base.status != "finished":
        raise UserError(f"run {base.uid} is a {base.status} {base.kind} run; surgery needs a finished training run")
    spec = spec_from_dict(base.spec)
    if task_path is not None:
        spec.task.path = task_path
    model, _ = load_run_model(store, base.uid)
    task = build_task(spec.task, seed=spec.seed)
    if split not in task.splits or not task.splits[split].labelled:
        have = [n for n, s in task.splits.items() if s.labelled]
        raise UserError(f"--split: task {task.name} has no labelled split {split!r}; "
                        f"labelled splits: {', '.join(have)}")
    enc = encode(task.splits[split], task, model.backbone.tokenizer, spec.model.max_length)
    dev = resolve_device(device)
    model.to(dev)
    original = copy.deepcopy(model)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    main = task.main_metric

    rows: list[dict[str, Any]] = []
    reference = None
    for text in ["none", *surgeries]:
        start = time.time()
        model.load_state_dict(snapshot)
        reports = apply_surgery(model, original, parsed[text], store, seed) if text != "none" else []
        preds = predict(model, enc, task, batch_size, dev)
        metrics = compute(task.metrics, preds, enc.labels)
        reference = (preds, metrics) if reference is None else reference
        changed = int(np.sum(preds != reference[0]))
        delta = metrics[main] - reference[1][main]
        rows.append({"surgery": text, "metrics": metrics, "delta": delta, "changed": changed})
        key = json.dumps({"base": base.uid, "surgery": text, "split": split, "seed": seed, "task_path": task_path},
                         sort_keys=True)
        recipe = hashlib.sha256(key.encode()).hexdigest()
        record = {"name": text, "task": base.spec.get("task", {}), "model": base.spec.get("model", {}),
                  "surgery": {"base_run": base.uid, "steps": text, "split": split, "seed": seed}}
        uid = store.start_run(f"surgery-{recipe[:12]}-s{seed}", recipe, seed, record, name=text, kind="surgery")
        store.log_evals(uid, 0, split, metrics)
        store.finish_run(uid, "finished", duration_s=time.time() - start, summary={
            "split": split, "metrics": metrics, "dev": metrics if split == "dev" else {}, "main_metric": main,
            "base_run": base.uid, "delta": delta, "changed_predictions": changed, "n_examples": len(enc),
            "reports": reports})
        rows[-1]["uid"] = uid
    return main, rows


def table(main: str, rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and cells: surgery, main metric, its change, changed predictions, other metrics."""
    others = [k for k in rows[0]["metrics"] if k != main] if rows else []
    header = ["surgery", main, f"delta {main}", "changed", *others]
    cells = [[r["surgery"], f"{r['metrics'][main]:.4f}", f"{r['delta']:+.4f}", str(r["changed"]),
              *(f"{r['metrics'][k]:.4f}" for k in others)] for r in rows]
    return header, cells
