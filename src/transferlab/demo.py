"""The offline demo: does language pretraining help a transformer read images?

MiniLM (all-MiniLM-L6-v2, a real pretrained 6-layer BERT) is fine-tuned on
scikit-learn's handwritten digits, each 8x8 image cut into 4x4 patches (a sequence of
4 vectors of 16 pixels fed through a new linear input layer), against the same architecture
randomly initialised. Three seeds each; the table shows test accuracy (model selection
on dev) as mean ± std, and the report folder holds the plots.
"""

from __future__ import annotations

from pathlib import Path

from transferlab.report import cells, summary_table, write_report
from transferlab.spec import load_spec
from transferlab.store import Store
from transferlab.train.loop import run

BASE = {
    "task": {"name": "digits", "options": {"patch_size": 4}},
    "model": {"name": "minilm", "max_length": 64},
    "head": {"name": "mean", "dropout": 0.1},
    "optim": {"name": "adamw", "lr": 2e-4, "weight_decay": 0.01},
    "schedule": {"name": "linear", "warmup_ratio": 0.1},
    "train": {"epochs": 3, "batch_size": 32, "num_evals": 4, "save_model": False},
}

ARMS = {"pretrained": {"model.init": "pretrained"}, "random-init": {"model.init": "random"}}


def demo(out: Path, seeds: int = 3, progress: bool = True) -> Path:
    from transferlab.report.tables import format_table

    out.mkdir(parents=True, exist_ok=True)
    store = Store(out / "demo.db")
    specs = [load_spec(BASE, {**overrides, "name": arm, "seed": seed})
             for seed in range(seeds) for arm, overrides in ARMS.items()]
    for i, spec in enumerate(specs, 1):
        result = run(spec, store, study="demo", progress=progress)
        acc = result.test.get("accuracy", float("nan"))
        print(f"[{i}/{len(specs)}] {spec.name:12s} seed {spec.seed}: test accuracy {acc:.4f} "
              f"({result.duration_s:.0f}s{', reused' if result.status == 'skipped' else ''})", flush=True)
    header, rows = summary_table(cells(store, "demo"))
    print()
    print(format_table(header, rows))
    report = write_report(store, out / "report", study="demo")
    print(f"\nreport: {report[-1]}")
    return out
