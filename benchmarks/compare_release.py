"""Do single, stacked, fused and multi-task runs give the same numbers as an older release of transferlab?
(issue 12, acceptance 2; issue 23, acceptance 3)

    PYTHONPATH=<old checkout>/src python benchmarks/compare_release.py train OUT_OLD
    PYTHONPATH=src                python benchmarks/compare_release.py train OUT_NEW
    python benchmarks/compare_release.py compare OUT_OLD OUT_NEW

``train`` runs a few specs (tiny BERT with dropout, MiniLM-shaped heads, layer decay, BERTAdam,
gradual unfreezing) on the CPU, each as a single run, as two seeds stacked (``train.engine: general``)
and as two seeds fused (``train.engine: fused``), plus one multi-task run of two tasks and one MLM
pretraining, and writes each
run's curve, evaluations and final weights under OUT; ``compare`` prints the largest difference of each.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SPECS = {
    "cls_adamw": {},
    "mean_bertadam_decay": {"head": {"name": "mean"}, "optim": {"name": "bertadam", "layer_decay": 0.8, "lr": 1e-3}},
    "gradual_cosine": {"freeze": {"name": "gradual", "options": {"every_steps": 3}},
                       "schedule": {"name": "cosine", "warmup_ratio": 0.2}},
}


def data_dir(root: Path) -> Path:
    import random

    folder = root / "toy"
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for split, n in (("train", 96), ("dev", 32)):
        rows = ["text,label"]
        for i in range(n):
            label = i % 2
            words = rng.sample(["the", "movie", "plot", "was", "quite", "a", "story", "film"], 4)
            words.append(rng.choice(["great", "good", "fine"] if label else ["awful", "bad", "dull"]))
            rng.shuffle(words)
            rows.append(f"{' '.join(words)},{label}")
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return folder


MODES = {"single": None, "stacked": "general", "fused": "fused"}  # train.engine of the S = 2 runs


def record(store, uid: str) -> dict:
    from safetensors.torch import load_file

    weights = load_file(str(store.artifact_dir(uid) / "model.safetensors"))
    return {"curve": store.curve(uid), "evals": store.evals(uid),
            "weights": {k: v.double().flatten().tolist() for k, v in weights.items()}}


def train(out: Path) -> None:
    import torch

    from transferlab.spec import load_spec
    from transferlab.store import Store
    from transferlab.train.loop import run, run_seeds

    torch.set_num_threads(1)
    data = data_dir(out)
    for name, over in SPECS.items():
        d = {"name": name, "model": {"name": "tiny-bert", "max_length": 24}, "task": {"name": "csv", "path": str(data)},
             "optim": {"lr": 3e-3}, "train": {"epochs": 2, "batch_size": 16, "num_evals": 3, "log_every": 1,
                                               "device": "cpu"}}
        for key, value in over.items():
            d[key] = {**d.get(key, {}), **value}
        for mode, engine in MODES.items():
            store = Store(out / f"{name}-{mode}.db")
            if engine is None:
                results = [run(load_spec(d), store, progress=False)]
            else:
                specs = [load_spec(d, {"seed": s, "train.engine": engine}) for s in (0, 1)]
                results = run_seeds(specs, store, progress=False)
            for r in results:
                seed = store.get(r.uid).seed
                (out / f"{name}-{mode}-s{seed}.json").write_text(json.dumps(record(store, r.uid)))
    train_multitask(out, data)
    train_mlm(out, data)


def train_multitask(out: Path, data: Path) -> None:
    """Two tasks (the toy data as CSV and as TSV, a second name), temperature sampling, dev selection."""
    from transferlab.spec import load_spec
    from transferlab.store import Store
    from transferlab.train.loop import run

    tsv = out / "toy_tsv"
    tsv.mkdir(exist_ok=True)
    for split in ("train", "dev"):
        (tsv / f"{split}.tsv").write_text((data / f"{split}.csv").read_text().replace(",", "\t"))
    d = {"name": "multitask", "model": {"name": "tiny-bert", "max_length": 24}, "head": {"name": "cls"},
         "multitask": {"tasks": [{"name": "csv", "path": str(data)}, {"name": "tsv", "path": str(tsv)}],
                       "sampler": "temperature", "temperature": 2.0},
         "optim": {"lr": 3e-3}, "train": {"epochs": 1, "batch_size": 16, "num_evals": 3, "log_every": 1,
                                           "device": "cpu"}}
    store = Store(out / "multitask.db")
    result = run(load_spec(d), store, progress=False)
    (out / "multitask-single-s0.json").write_text(json.dumps(record(store, result.uid)))


def train_mlm(out: Path, data: Path) -> None:
    """MLM pretraining of tiny BERT on the toy texts: the held-out losses stand in for evaluations."""
    from safetensors.torch import load_file

    from transferlab.pretrain import load_pretrain_spec, pretrain

    corpus = out / "corpus.txt"
    corpus.write_text("\n".join(r.rsplit(",", 1)[0] for r in (data / "train.csv").read_text().splitlines()[1:]))
    spec = {"name": "mlm", "model": {"name": "tiny-bert", "max_length": 24},
            "corpus": {"files": [str(corpus)], "heldout": 0.2}, "optim": {"lr": 3e-3}, "out": str(out / "mlm"),
            "train": {"max_steps": 30, "batch_size": 16, "num_evals": 2, "log_every": 5, "device": "cpu"}}
    s = pretrain(load_pretrain_spec(spec), progress=False)
    weights = load_file(str(out / "mlm" / "model.safetensors"))
    (out / "mlm-single-s0.json").write_text(json.dumps({
        "curve": s["curve"], "evals": [(step, "heldout", "loss", v) for step, v in s["heldout"]],
        "weights": {k: v.double().flatten().tolist() for k, v in weights.items()}}))


def compare(a: Path, b: Path) -> None:
    import numpy as np

    for path in sorted(a.glob("*-s*.json")):
        name = path.stem
        x, y = (json.loads((p / f"{name}.json").read_text()) for p in (a, b))
        curve = max(abs(u - v) / max(abs(u), 1e-12) for r, s in zip(x["curve"], y["curve"])
                    for u, v in zip(r[1:], s[1:]) if u is not None)
        evals = max((abs(r[3] - s[3]) for r, s in zip(sorted(x["evals"]), sorted(y["evals"]))), default=0.0)
        w = max(float(np.max(np.abs(np.array(x["weights"][k]) - np.array(y["weights"][k])))) for k in x["weights"])
        same_rows = len(x["curve"]) == len(y["curve"]) and len(x["evals"]) == len(y["evals"])
        print(f"{name}: rows equal {same_rows}; curve max rel diff {curve:.3g}; eval max abs diff {evals:.3g}; "
              f"weights max abs diff {w:.3g}")


if __name__ == "__main__":
    if sys.argv[1] == "train":
        train(Path(sys.argv[2]))
    else:
        compare(Path(sys.argv[2]), Path(sys.argv[3]))
