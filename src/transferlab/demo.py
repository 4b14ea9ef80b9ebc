"""The offline demo: does language pretraining help a transformer read images?

A study of two arms on scikit-learn's handwritten digits, each 8x8 image cut into 4x4 patches (a
sequence of 4 vectors of 16 pixels fed through a new linear input layer): MiniLM (all-MiniLM-L6-v2,
a real pretrained 6-layer BERT) fine-tuned, against the baseline arm, the same architecture randomly
initialised. Both arms run the same seeds, so the report compares them paired: a paired t test,
Holm-adjusted, and a sentence that says "better" only when that test is significant, else "no
difference detected" with the difference, its CI, the power and the seeds a clear answer needs.

``transferlab demo`` prints the per-arm table, that sentence, where the store and report are, and
the commands that go on from there. ``train_samples`` and ``epochs`` shrink it (the tests do).
"""

from __future__ import annotations

import shlex
from pathlib import Path

BASE = {
    "task": {"name": "digits", "options": {"patch_size": 4}},
    "model": {"name": "minilm", "max_length": 64},
    "head": {"name": "mean", "dropout": 0.1},
    "optim": {"name": "adamw", "lr": 2e-4, "weight_decay": 0.01},
    "schedule": {"name": "linear", "warmup_ratio": 0.1},
    "train": {"epochs": 3, "batch_size": 32, "num_evals": 4, "save_model": False},
}

ARMS = {"pretrained": {"model.init": "pretrained"}, "random-init": {"model.init": "random"}}
BASELINE = "random-init"
STUDY = "demo"


def study_dict(seeds: int = 3, train_samples: int | None = None, epochs: int = 3, model: str = "minilm") -> dict:
    """The demo as a study file would write it: two arms, the random-init baseline, ``seeds`` shared seeds
    (``model``: another backbone of the same shape of use, e.g. tiny-bert for a fast test of the machinery)."""
    base = {**BASE, "task": {**BASE["task"]}, "train": {**BASE["train"], "epochs": epochs},
            "model": {**BASE["model"], "name": model}}
    if train_samples is not None:
        base["task"]["max_train_samples"] = train_samples
    return {"study": STUDY, "base": base, "arms": ARMS, "baseline": BASELINE, "seeds": list(range(seeds))}


def next_commands(out: Path) -> list[str]:
    """What to type after the demo: the store is not the default one, so each command names it."""
    store, report = shlex.quote(str(out / "demo.db")), shlex.quote(str(out / "report"))
    return [f"transferlab runs --store {store}",
            f"transferlab report {store} --study {STUDY} -o {report}",
            f"transferlab plan-seeds {store} --study {STUDY} --delta 0.01"]


def demo(out: Path, seeds: int = 3, progress: bool = True, *, train_samples: int | None = None,
         epochs: int = 3, model: str = "minilm") -> list[str]:
    """Run (or resume) the demo study in ``out``/demo.db, write ``out``/report, print the answer; returns the
    report's conclusion sentences."""
    from transferlab.report import analysis, cells, summary_table, write_report
    from transferlab.text_table import format_table
    from transferlab.store import Store
    from transferlab.study.runner import run_study
    from transferlab.study.spec import load_study

    out.mkdir(parents=True, exist_ok=True)
    store = Store(out / "demo.db")
    print(f"store: {store.path}", flush=True)
    # a demo rerun with other sizes replaces the stored definition; finished runs of equal specs are reused
    run_study(load_study(study_dict(seeds, train_samples, epochs, model)), store, new=True,
              out=(lambda line: print(line, flush=True)) if progress else (lambda _: None))
    all_cells = cells(store, STUDY)
    print()
    print(format_table(*summary_table(all_cells)))
    lines = analysis.conclusions(analysis.comparisons_paired(store, all_cells), all_cells)
    print("\nDoes pretraining help? " + (" ".join(lines) if lines else "no comparison: no finished runs"))
    written = write_report(store, out / "report", study=STUDY)
    print(f"\nstore:  {store.path}\nreport: {written[-1]} (and {written[-2].name} beside it)")
    print("next:\n" + "\n".join(f"  {cmd}" for cmd in next_commands(out)))
    return lines
