"""The ``transferlab`` command line.

    transferlab run SPEC.yaml [--set key=value ...] [--store PATH] [--rerun]
    transferlab runs [--store PATH] [--study NAME] [--all]
    transferlab export RUN -o DIR           (a Hugging Face folder with the tokenizer)
    transferlab export --csv DIR | --parquet DIR   (the store's tables)
    transferlab report [--store PATH] [--study NAME] -o DIR
    transferlab demo [-o DIR]

A user's mistake (bad spec, missing file, unknown model) prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from transferlab.errors import UserError
from transferlab.store import DEFAULT_STORE


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=os.environ.get("TRANSFERLAB_STORE", DEFAULT_STORE),
                   help=f"SQLite store file (default: $TRANSFERLAB_STORE or {DEFAULT_STORE})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="transferlab", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="fine-tune and evaluate one run spec (YAML) and store it")
    p.add_argument("spec", help="run spec YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field, e.g. --set optim.lr=3e-5 (repeatable)")
    p.add_argument("--rerun", action="store_true", help="run again even if this run id already finished")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _store_arg(p)

    p = sub.add_parser("runs", help="list stored runs with their metrics")
    p.add_argument("--study", default=None)
    p.add_argument("--all", action="store_true", help="every attempt, not only the newest per run id")
    _store_arg(p)

    p = sub.add_parser("export", help="write a run's fine-tuned model, or dump the store's tables")
    p.add_argument("run", nargs="?", help="run id or uid (a unique prefix is enough)")
    p.add_argument("-o", "--out", help="output folder for the model")
    p.add_argument("--csv", metavar="DIR", help="dump the store's tables as CSV files into DIR")
    p.add_argument("--parquet", metavar="DIR", help="dump the store's tables as Parquet files into DIR")
    _store_arg(p)

    p = sub.add_parser("report", help="write a Markdown + HTML report of a store")
    p.add_argument("store_path", nargs="?", help="store file (default: --store)")
    p.add_argument("--study", default=None)
    p.add_argument("-o", "--out", required=True)
    _store_arg(p)

    p = sub.add_parser("demo", help="offline CPU demo: pretrained vs random MiniLM on digit patches")
    p.add_argument("-o", "--out", default="demo_out", help="folder for the store and the report")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--quiet", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    try:
        return COMMANDS[args.command](args) or 0
    except UserError as e:
        print(f"transferlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("transferlab: interrupted", file=sys.stderr)
        return 130


def quiet_libraries() -> None:
    """Our own progress bars say what happens; the libraries' per-file bars and advice are noise."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def cmd_run(args) -> int:
    from transferlab.spec import load_spec
    from transferlab.store import Store
    from transferlab.train.loop import run

    spec = load_spec(args.spec, args.overrides)
    store = Store(args.store)
    result = run(spec, store, force=args.rerun, progress=not args.quiet)
    if result.status == "skipped":
        print(f"run {result.run_id} already finished (uid {result.uid}); --rerun to run it again")
    print(f"{result.uid}  {result.status}  steps {result.steps}  {result.duration_s:.0f}s")
    for split, metrics in (("dev", result.dev), ("test", result.test)):
        if metrics:
            print(f"  {split}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    if result.status == "diverged":
        print(f"  diverged: {result.summary.get('error')}")
    return 0


def format_table(header: list[str], rows: list[list]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_runs(args) -> int:
    from transferlab.store import Store

    store = Store(args.store)
    rows = []
    for r in store.runs(study=args.study, latest=not args.all):
        dev = r.summary.get("dev") or {}
        metrics = "  ".join(f"{k}={v:.4f}" for k, v in dev.items())
        rows.append([r.uid, r.name or "", r.spec.get("task", {}).get("name", ""), r.spec.get("model", {}).get("name", ""),
                     r.seed, r.status, f"{r.duration_s:.0f}s" if r.duration_s else "", metrics])
    if not rows:
        print(f"no runs in {store.path}")
        return 0
    print(format_table(["uid", "name", "task", "model", "seed", "status", "time", "dev"], rows))
    return 0


def cmd_export(args) -> int:
    from transferlab.store import Store

    store = Store(args.store)
    if args.csv or args.parquet:
        from transferlab.export_tables import export_tables

        for path in export_tables(store, Path(args.csv or args.parquet), "csv" if args.csv else "parquet"):
            print(path)
        return 0
    if not args.run or not args.out:
        raise UserError("export needs a RUN and -o DIR (or --csv DIR / --parquet DIR)")
    from transferlab.models.export import export_model
    from transferlab.train.restore import load_run_model

    model, task = load_run_model(store, args.run)
    out = export_model(model, task, Path(args.out))
    print(f"wrote {out}")
    return 0


def cmd_report(args) -> int:
    from transferlab.report import write_report
    from transferlab.store import Store

    store = Store(args.store_path or args.store)
    for path in write_report(store, Path(args.out), study=args.study):
        print(path)
    return 0


def cmd_demo(args) -> int:
    from transferlab.demo import demo

    demo(Path(args.out), seeds=args.seeds, progress=not args.quiet)
    return 0


COMMANDS = {"run": cmd_run, "runs": cmd_runs, "export": cmd_export, "report": cmd_report, "demo": cmd_demo}


if __name__ == "__main__":
    sys.exit(main())
