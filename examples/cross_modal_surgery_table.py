"""The surgery table of examples/cross_modal_surgery.yaml: every finished run of the study, evaluated
unchanged and with layer 1 (or head 0 of layer 1) replaced, without retraining; mean ± std over the
runs (seeds) of the task's main metric (accuracy on MRPC, Spearman on STS-B) and Welch / Mann-Whitney
tests of each replacement's score against Xavier's.

    python examples/cross_modal_surgery_table.py runs/surgery.db [--split dev] [--seeds 0,1,2,3,4]
    python examples/cross_modal_surgery_table.py runs/text.db --study cross-modal-antiberty --arm normal

``--arm`` keeps the runs of one arm of a larger study (run names start with the arm's name), at the
learning rate most of that arm's finished runs used (the main phase's, not the LR search's others);
one run per seed.

Each surgery is ``transferlab surgery RUN -s ...`` (recipes/surgery.py) with ``--seed`` = the run's
seed (or, with ``--seeds``, each of those seeds on every run: the random replacements differ, AntiBERTy's
do not); the surgery runs are stored beside the others.
"""

import argparse
from collections import Counter, defaultdict

import numpy as np

from transferlab.report.stats import compare
from transferlab.store import Store
from transferlab.surgery import run_surgery

SURGERIES = {
    "layer 1 <- AntiBERTy": "transplant source=antiberty layers=1",
    "layer 1 <- Xavier": "init layers=1 scheme=xavier_uniform",
    "layer 1 <- uniform(±0.05)": "init layers=1 scheme=uniform",
    "layer 1 <- N(0, 0.02)": "init layers=1 scheme=normal",
    "head 0 of layer 1 <- AntiBERTy": "transplant source=antiberty layers=1 heads=0",
    "head 0 of layer 1 <- Xavier": "init layers=1 heads=0 scheme=xavier_uniform",
    "head 0 of layer 1 <- uniform(±0.05)": "init layers=1 heads=0 scheme=uniform",
    "head 0 of layer 1 <- N(0, 0.02)": "init layers=1 heads=0 scheme=normal",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("--study", default="cross-modal-surgery")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--seeds", default=None, help="surgery seeds per run, e.g. 0,1,2,3,4 (default: the run's)")
    parser.add_argument("--arm", default=None, help="only the runs of this arm (run names start with it)")
    parser.add_argument("--run-seeds", default=None, help="only the fine-tuned runs of these seeds, e.g. 1,2,3,4,5")
    args = parser.parse_args()
    store = Store(args.store)
    base_runs = [r for r in store.runs(study=args.study, latest=True) if r.kind == "train" and r.status == "finished"]
    if args.arm is not None:
        base_runs = [r for r in base_runs if r.name.split(" ")[0] == args.arm]
        lrs = Counter(r.spec["optim"]["lr"] for r in base_runs)
        if lrs:
            lr = lrs.most_common(1)[0][0]
            by_seed = {r.seed: r for r in base_runs if r.spec["optim"]["lr"] == lr}
            base_runs = [by_seed[s] for s in sorted(by_seed)]
            print(f"arm {args.arm}: lr {lr}, seeds {sorted(by_seed)}")
    if args.run_seeds is not None:
        keep = {int(x) for x in args.run_seeds.split(",")}
        base_runs = [r for r in base_runs if r.seed in keep]
    if not base_runs:
        raise SystemExit(f"no finished training run of study {args.study!r}" + (f", arm {args.arm!r}" if args.arm else ""))
    metrics: dict[str, list[float]] = defaultdict(list)
    main_metric = "accuracy"
    changed: dict[str, list[int]] = defaultdict(list)
    names = {text: name for name, text in SURGERIES.items()} | {"none": "unchanged"}
    pairs = [(run, seed) for run in base_runs
             for seed in ([int(s) for s in args.seeds.split(",")] if args.seeds else [run.seed])]
    for run, seed in pairs:
        main_metric, rows = run_surgery(store, run.uid, list(SURGERIES.values()), split=args.split, seed=seed)
        for row in rows:
            metrics[names[row["surgery"]]].append(row["metrics"][main_metric])
            changed[names[row["surgery"]]].append(row["changed"])
    print(f"{len(base_runs)} fine-tuned runs x {len(pairs) // max(1, len(base_runs))} surgery seeds, "
          f"{args.split} {main_metric}\n")
    print(f"| surgery | {main_metric} | change | predictions changed | vs Xavier (same part) |")
    print("| --- | --- | --- | --- | --- |")
    for name, values in metrics.items():
        v = np.asarray(values)
        delta = v - np.asarray(metrics["unchanged"])
        part = name.split(" <- ")[0]
        ref = metrics.get(f"{part} <- Xavier")
        test = ""
        if ref is not None and not name.endswith("Xavier") and name != "unchanged":
            c = compare(values, ref)
            test = f"{c['diff']:+.4f}, Welch t = {c['t']:.2f}, p = {c['t_p']:.3f}; MWU p = {c['u_p']:.3f}"
        print(f"| {name} | {v.mean():.4f} ± {v.std(ddof=1):.4f} | {delta.mean():+.4f} ± {delta.std(ddof=1):.4f} | "
              f"{np.mean(changed[name]):.1f} | {test} |")


if __name__ == "__main__":
    main()
