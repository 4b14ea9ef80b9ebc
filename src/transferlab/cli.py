"""The ``transferlab`` command line.

    transferlab run SPEC.yaml [--set key=value ...] [--store PATH] [--rerun]
    transferlab run STUDY.yaml [--profile cpu|gpu|...] [--dry-run] [--executor inline|processes|ray] [--workers N] [--address A]
                               [--skip-failed] [--new-study] [--yes]   (--yes: more than 10,000 runs)
    transferlab runs [--store PATH] [--study NAME] [--all]
    transferlab export RUN -o DIR [--force]   (a Hugging Face folder with the tokenizer and a model card)
    transferlab export --csv DIR | --parquet DIR [--force]   (the store's tables)
    transferlab predict RUN|FOLDER --input FILE|--split test [--output FILE [--force]]   (labels, probabilities)
    transferlab report [STORE | CSV_DIR] [--study NAME] -o DIR [--tost-margin M] [--include-search-seeds]
    transferlab plan-seeds STORE --study NAME --delta D [--alpha 0.05] [--power 0.8]   (seeds needed)
    transferlab surgery RUN -s "init layers=5 scheme=xavier_uniform" [-s ...] [--split dev]
    transferlab demo [-o DIR] [--seeds N] [--train-samples N] [--epochs N]
    transferlab pretrain SPEC.yaml [--set key=value ...]   (MLM / masked modelling -> a HF folder)
    transferlab bench [--model minilm|bert-base|...] [--batch 32] [--seq 64] [--seeds 1,4,8,20]   (throughput)

Exit codes:
    0    done (``runs`` listing no runs is an answer, so 0 too)
    1    the command ran but could not give what was asked: some runs of a study failed, a report of a
         store that holds no runs; or the machine failed a run that had started (disk full, I/O error,
         the store held by another process beyond $TRANSFERLAB_BUSY_S): one line, the store intact
    2    a mistake in what was given (spec, value, file, folder, model, run, study or store name), or a
         damaged store, or such a fault before any run started: one line on stderr naming the field,
         file or line; nothing trains and no run row is written
    130  interrupted (Ctrl-C, SIGTERM), from the first line of ``main`` on: one line, no traceback
    141  stdout closed early (``transferlab runs | head``): the rest of the output is dropped quietly
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from pathlib import Path

from transferlab.errors import FaultError, UserError
from transferlab.store import DEFAULT_STORE


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=os.environ.get("TRANSFERLAB_STORE", DEFAULT_STORE),
                   help=f"SQLite store file (default: $TRANSFERLAB_STORE or {DEFAULT_STORE})")


def _run_parser(sub) -> None:
    p = sub.add_parser("run", help="fine-tune and evaluate one run spec (YAML) and store it")
    p.add_argument("spec", help="run spec YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field, e.g. --set optim.lr=3e-5 (repeatable)")
    p.add_argument("--rerun", action="store_true", help="run again even if this run id already finished")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--nproc", type=int, default=1, help=(
        "train one run data-parallel on N processes of this machine (gloo on CPU, NCCL on CUDA; "
        "train.batch_size is the global batch); under torchrun the ranks come from its environment"))
    p.add_argument("--dry-run", action="store_true", help=(
        "check the spec and print what would run (a run: its resolved spec and run id; a study: its expanded "
        "runs and their state); train nothing"))
    t = p.add_argument_group("live tracking (the `tracking` extra; a study's `logging:` section does the same)")
    t.add_argument("--tensorboard", metavar="DIR", help="log the run to TensorBoard under DIR while it trains")
    t.add_argument("--mlflow", metavar="URI", help="log the run to this MLflow tracking URI (a folder or a server)")
    t.add_argument("--wandb", metavar="PROJECT", help="log the run to this Weights & Biases project")
    t.add_argument("--wandb-mode", choices=["offline", "online"], default=None, help="W&B mode (default offline)")
    g = p.add_argument_group("studies (a YAML file with a top-level `study:` key)")
    g.add_argument("--profile", default=None, metavar="NAME", help=(
        "a size profile the study file declares under `profiles:` (e.g. cpu, gpu); stored as <study>@<NAME>"))
    g.add_argument("--executor", default="inline", help="inline (default), processes or ray")
    g.add_argument("--workers", type=int, default=2, help="worker processes, or local Ray CPUs (default 2)")
    g.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads per run (default: per executor)")
    g.add_argument("--seed-parallel", choices=["auto", "on", "off"], default="auto",
                   help="train a study's runs as the slots of stacked groups in one process: seeds, and arms "
                        "that differ only in per-slot fields (auto: on CUDA only)")
    g.add_argument("--max-slots", type=int, default=None, metavar="N",
                   help="runs one stacked group holds at most (default: what fits in the device's memory by the "
                        "per-slot estimate, train/memory.py)")
    g.add_argument("--gpus-per-task", type=float, default=None,
                   help="Ray: GPUs per seed group (fractional, e.g. 0.25: four groups share a GPU)")
    g.add_argument("--ray-retries", type=int, default=1, help="Ray: retries of a task whose worker or node died")
    g.add_argument("--ray-resource", action="append", default=[], metavar="NAME=AMOUNT",
                   help="Ray: a custom resource every task asks for (repeatable), e.g. trainer=1")
    g.add_argument("--artifacts", default=os.environ.get("TRANSFERLAB_ARTIFACTS"), metavar="FOLDER|URL",
                   help="where runs keep weights and checkpoints: a folder, or an fsspec URL (s3://, gs://, "
                        "file://); default: a folder next to the store ($TRANSFERLAB_ARTIFACTS)")
    g.add_argument("--skip-failed", action="store_true", help="do not run failed runs again")
    g.add_argument("--yes", action="store_true", help="run a study of more runs than the limit (10,000) without asking")
    g.add_argument("--new-study", action="store_true", help="replace a stored study of this name and another spec")
    _store_arg(p)


def _runs_parser(sub) -> None:
    p = sub.add_parser("runs", help="list stored runs with their metrics")
    p.add_argument("--study", default=None)
    p.add_argument("--all", action="store_true", help="every attempt, not only the newest per run id")
    p.add_argument("--task", default=None, help="only runs that train this task (a multi-task run lists under each)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table",
                   help="table (default), csv or json (one object per run, every metric and differing field)")
    _store_arg(p)


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a run's fine-tuned model, or dump the store's tables")
    p.add_argument("run", nargs="?", help="run id or uid (a unique prefix is enough)")
    p.add_argument("-o", "--out", help="output folder for the model")
    p.add_argument("--force", action="store_true", help="write into a non-empty output folder, replace table files")
    p.add_argument("--csv", metavar="DIR", help="dump the store's tables as CSV files into DIR")
    p.add_argument("--parquet", metavar="DIR", help="dump the store's tables as Parquet files into DIR")
    _store_arg(p)


def _predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="predict labels (or values) for new text with a run or an export folder")
    p.add_argument("source", metavar="RUN|FOLDER", help="run id or uid (prefix), or a folder written by export")
    p.add_argument("--input", default=None, help="CSV, TSV or JSONL file with a text column")
    p.add_argument("--split", default=None, help="instead of --input: a split of the run's task (e.g. test)")
    p.add_argument("--output", default=None, help="write CSV/TSV/JSONL here (by suffix); default: CSV on stdout")
    p.add_argument("--force", action="store_true", help="replace --output if it exists")
    p.add_argument("--text-column", default=None, help="default: the run's task.text_column, or 'text'")
    p.add_argument("--text-pair-column", default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _store_arg(p)


def _report_parser(sub) -> None:
    p = sub.add_parser("report", help="write a Markdown + HTML report of a store")
    p.add_argument("store_path", nargs="?",
                   help="store file (default: --store), or a folder of `transferlab export --csv` tables")
    p.add_argument("--study", default=None)
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--tost-margin", type=float, default=None,
                   help="equivalence margin of TOST (default: the study's report.tost_margin; none: no TOST)")
    p.add_argument("--include-search-seeds", action="store_true", default=None,
                   help="keep the LR-search seeds in the reported cells (left out by default)")
    _store_arg(p)


def _plan_seeds_parser(sub) -> None:
    p = sub.add_parser("plan-seeds", help="how many seeds to detect a difference, from a study's runs as a pilot")
    p.add_argument("store_path", nargs="?", help="store file (default: --store)")
    p.add_argument("--study", required=True)
    p.add_argument("--delta", type=float, required=True, help="the difference of the main metric to detect, > 0")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--power", type=float, default=0.8)
    p.add_argument("--include-search-seeds", action="store_true", default=None)
    _store_arg(p)


def _surgery_parser(sub) -> None:
    p = sub.add_parser("surgery", help="evaluate a stored fine-tuned run under surgeries, without training")
    p.add_argument("run", help="run id or uid of a finished training run")
    p.add_argument("-s", "--surgery", action="append", default=[], metavar="STEPS", help=(
        'e.g. "init layers=5 scheme=xavier_uniform" or "transplant source=self layers=5"; steps joined by " + " '
        "(repeatable; see transferlab.surgery)"))
    p.add_argument("--split", default="dev", help="labelled split to evaluate (default dev)")
    p.add_argument("--task-path", default=None, help="the task's data folder, if it moved since the run")
    p.add_argument("--seed", type=int, default=0, help="seed of the init schemes (default 0)")
    p.add_argument("--batch-size", type=int, default=64)
    _store_arg(p)


def _pretrain_parser(sub) -> None:
    p = sub.add_parser("pretrain", help="MLM or masked-input pretraining (YAML spec); writes a Hugging Face folder")
    p.add_argument("spec", help="pretraining spec YAML (see transferlab.pretrain.spec)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field, e.g. --set train.max_steps=100 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="offline CPU demo: pretrained vs random MiniLM on digit patches")
    p.add_argument("-o", "--out", default="demo_out", help="folder for the store and the report")
    p.add_argument("--seeds", type=int, default=3, help="seeds per arm (default 3; both arms run the same seeds)")
    p.add_argument("--train-samples", type=int, default=None, metavar="N",
                   help="train on N of the 1,257 training images (a faster, smaller demo)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    p.add_argument("--quiet", action="store_true")


def _bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="training throughput: HF Trainer vs our single run vs S seeds in parallel")
    p.add_argument("--model", default="minilm", help="alias, folder, hub id, or bert-base (its shape, random weights)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64, help="tokens per example (every example has exactly this many)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--seeds", default="1,4,8,20", help="seed counts of the seed-parallel rows (comma-separated)")
    p.add_argument("--rows", default="trainer,single,parallel",
                   help="which rows (comma-separated): trainer, single, parallel, fast, fast-padded, slots (mixed arms "
                        "as the slots of one stacked group), slots-dropout (those arms at their own dropout, "
                        "train.dropout_rng: run)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"], help="torch.compile (auto: on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--repeat", type=int, default=1, help="run all rows this many times in rotation; report medians")
    p.add_argument("--json", default=None, help="also write the results to this JSON file (each row as measured)")
    p.add_argument("--append", action="store_true", help="keep the rows already in the --json file")
    p.add_argument("--profile", default=None, metavar="DIR", help="profile the timed steps; Chrome traces into DIR")
    p.add_argument("--task", default=None, help="a GLUE task (e.g. rte): train on its real data (needs --data)")
    p.add_argument("--data", default=None, metavar="PATH", help="the task's folder (GLUE layout)")
    p.add_argument("--checkpoint-layers", action="store_true",
                   help="our rows recompute each layer in the backward (train.checkpoint_layers): less memory")
    p.add_argument("--optim", default="adamw", help="optim.name of our rows (adamw, bertadam, adabelief, sgd)")


def build_parser() -> argparse.ArgumentParser:
    from transferlab._version import __version__

    parser = argparse.ArgumentParser(prog="transferlab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"transferlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_run_parser, _runs_parser, _export_parser, _predict_parser, _report_parser, _plan_seeds_parser,
                _surgery_parser, _pretrain_parser, _demo_parser, _bench_parser):  # one builder per command
        add(sub)
    return parser


def _interrupt(signum, frame) -> None:
    """Ctrl-C, and SIGTERM (timeout, Slurm, kill) alike: KeyboardInterrupt, which stops cleanly and
    resumably. Inside an object's finalizer (a progress bar collected after training) an exception would
    only be printed as "Exception ignored ... Traceback" and lost: the signal is sent again once it is done."""
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
            return
        frame = frame.f_back
    raise KeyboardInterrupt


def main(argv: list[str] | None = None, *, restore_signals: bool = True) -> int:
    handlers = _install_handlers()  # before any work: a signal during start-up stops as cleanly as one later
    try:
        args = build_parser().parse_args(argv)
        quiet_libraries()
        code = COMMANDS[args.command](args) or 0
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
        return code
    except UserError as e:
        print(f"transferlab: error: {one_line(e)}", file=sys.stderr)
        return 2
    except FaultError as e:  # the machine failed (disk full, I/O, store held): 1 once a run started, else 2
        print(f"transferlab: error: {one_line(e)}", file=sys.stderr)
        return 1 if e.started else 2
    except KeyboardInterrupt:
        print("transferlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`transferlab runs | head`): point stdout at /dev/null so the interpreter's
        # final flush does not fail again, and exit as a process killed by SIGPIPE would (128 + 13)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    finally:
        for signum, handler in handlers.items() if restore_signals else ():  # a caller gets its own back
            signal.signal(signum, handler)


def _install_handlers() -> dict:
    """SIGINT and SIGTERM raise KeyboardInterrupt (``_interrupt``); the previous handlers, to restore (main
    thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {signal.SIGINT: signal.getsignal(signal.SIGINT), signal.SIGTERM: signal.getsignal(signal.SIGTERM)}
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    return previous


def entry() -> None:
    """The process's entry point (the ``transferlab`` command, ``python -m transferlab.cli``): ``main``, then
    a signal during the interpreter's teardown ends the process at once with the command's own exit
    code (its work is stored) instead of a traceback from a library's exit hook."""
    try:
        code = main(restore_signals=False)  # SIGINT and SIGTERM raise KeyboardInterrupt until the switch below
    except KeyboardInterrupt:  # between main's last line and here
        code = 130
    if threading.current_thread() is threading.main_thread():
        def now(signum, frame) -> None:
            with contextlib.suppress(Exception):  # e.g. a closed pipe: the exit matters more
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, now)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


def one_line(error: Exception) -> str:
    """The error's message on one line (a library's multi-line text folded)."""
    return " ".join(str(error).split())


def quiet_libraries() -> None:
    """Our own progress bars say what happens; the libraries' per-file bars and advice are noise.

    transformers reads both variables when it is imported (inside a command, never for ``--help``: the
    command line starts without it); one imported already (``main`` called in-process) is told directly."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" not in sys.modules:
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def cmd_run(args) -> int:
    from transferlab.spec import load_spec, read_yaml, run_id
    from transferlab.store import Store
    from transferlab.study.spec import is_study
    from transferlab.train.loop import run

    data = read_yaml(args.spec)
    if is_study(data):
        if args.nproc != 1:
            raise UserError("--nproc: trains one run across processes; a study's runs go to --executor processes")
        return cmd_study(args, data)
    if args.profile is not None:
        raise UserError(f"--profile {args.profile}: profiles belong to study files; {args.spec} is a run spec")
    spec = load_spec(data, args.overrides)
    if args.dry_run:
        return dry_run(spec, args.store)
    check_artifacts(args.artifacts)
    if args.nproc != 1 or distributed_env():
        return cmd_run_ddp(args, spec)
    store = Store(args.store, artifacts=args.artifacts)
    tracking = tracking_from_args(args)
    tracker, rid = None, run_id(spec)  # computed once, for the loop and the tracker
    if tracking.enabled:
        from transferlab.train.track import TrackerHook

        tracker = TrackerHook(tracking, spec, store, run_id=rid)
    try:
        result = run(spec, store, force=args.rerun, progress=not args.quiet, hooks=[tracker] if tracker else [],
                     run_id=rid)
    finally:
        if tracker is not None:
            tracker.close()
    if result.status == "skipped":
        print(f"run {result.run_id} already finished (uid {result.uid}); --rerun to run it again")
    print(f"{result.uid}  {result.status}  steps {result.steps}  {result.duration_s:.0f}s")
    if result.summary.get("n_params"):
        s = result.summary
        print(f"  trainable: {s['n_trainable']:,} of {s['n_params']:,} parameters ({s['trainable_share']:.2%})")
    if result.summary.get("data_sizes"):
        from transferlab.records import format_sizes

        print(f"  data: {format_sizes(result.summary['data_sizes'])}")
    for split, metrics in (("dev", result.dev), ("test", result.test)):
        if metrics:
            print(f"  {split}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    if result.status == "diverged":
        print(f"  diverged: {result.summary.get('error')}")
    return 0


def check_artifacts(location: str | None) -> None:
    """A local --artifacts folder exists or can be made, and is writable (a URL is checked by its backend)."""
    from transferlab.checks import check_writable_dir

    if location and ("://" not in location or location.startswith("file://")):
        check_writable_dir(location.removeprefix("file://"), "--artifacts")


def distributed_env() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ  # started by torchrun


def cmd_run_ddp(args, spec) -> int:
    """One run data-parallel (train/distributed.py): ``--nproc N`` spawns the ranks, torchrun started them."""
    from transferlab.store import Store
    from transferlab.train import ddp_launch, distributed

    ranks = distributed.from_env()
    world = ranks[1] if ranks else args.nproc
    if tracking_from_args(args).enabled:
        raise UserError(f"--nproc {world}: live tracking (--tensorboard/--mlflow/--wandb) is not supported under "
                        "data-parallel training; the stored curve is the global batch's")
    if ranks is not None:  # this process is one rank of torchrun's
        distributed.check(spec, ranks[1])
        result = ddp_launch.run_rank(spec, args.store, *ranks, artifacts=args.artifacts, progress=not args.quiet)
        if ranks[0]:
            return 0
    else:
        distributed.check(spec, args.nproc)  # before the store exists
        result = ddp_launch.launch(spec, Store(args.store, artifacts=args.artifacts), args.nproc,
                                    force=args.rerun, progress=not args.quiet)
    print(f"{result.uid}  {result.status}  steps {result.steps}  {result.duration_s:.0f}s  ({world} processes)")
    for split, metrics in (("dev", result.dev), ("test", result.test)):
        if metrics:
            print(f"  {split}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return 0


def tracking_from_args(args, base=None):
    """The TrackingSpec of ``--tensorboard/--mlflow/--wandb``, over ``base`` (a study's logging section)."""
    import dataclasses

    from transferlab.train.track import TrackingSpec

    given = {k: v for k, v in (("tensorboard", args.tensorboard), ("mlflow", args.mlflow), ("wandb", args.wandb),
                               ("wandb_mode", args.wandb_mode)) if v is not None}
    return dataclasses.replace(base or TrackingSpec(), **given)


def dry_run(spec, store_path: str) -> int:
    """Check the spec as a run would (values, device, files, model) and print it resolved; train nothing."""
    import yaml

    from transferlab.spec import run_id, to_dict
    from transferlab.store import Store
    from transferlab.train.validate import validate_run

    store = Store(store_path, create=False) if Path(store_path).is_file() else None
    task = validate_run(spec, store=store)
    rid = run_id(spec)
    state = "todo"
    if store is not None:
        state = "done (--rerun to run it again)" if store.finished(rid) else "todo"
    print(yaml.safe_dump(to_dict(spec), sort_keys=False).rstrip())
    print(f"# data {loaded_sizes(spec, task)}")
    print(f"# run id {rid}  state {state}  store {store_path}")
    return 0


def loaded_sizes(spec, task=None) -> str:
    """The examples a run of ``spec`` loads per split (its task built as the run builds it)."""
    from transferlab.data.build import build_task
    from transferlab.records import data_sizes, format_sizes

    if spec.multitask is not None:
        return "  ".join(f"{t.name}: {format_sizes(data_sizes(build_task(t, seed=spec.seed).splits))}"
                         for t in spec.multitask.tasks)
    return format_sizes(data_sizes((task if task is not None else build_task(spec.task, seed=spec.seed)).splits))


def cmd_study(args, data: dict) -> int:
    from transferlab.text_table import format_table
    from transferlab.store import Store
    from transferlab.study.expand import plan_study
    from transferlab.study.runner import check_workers, describe_plan, run_study
    from transferlab.study.spec import load_study

    study = load_study(data, args.overrides, profile=args.profile)
    study.logging = tracking_from_args(args, study.logging)
    if too_large(study, args):
        return 0
    existing = Store(args.store, create=False) if Path(args.store).is_file() else None
    plan = plan_study(study, store=existing)  # expanded and validated once (stored references too), then handed on
    if args.dry_run:
        rows = describe_plan(study, existing, args.seed_parallel, plan, max_slots=args.max_slots)
        if study.search is not None:
            from transferlab.study.search import plan_lines

            print("\n".join(plan_lines(study)))
        print(format_table(["phase", "task", "cell", "seed", "lr", "run id", "state", "group"], rows))
        runs = [r for r in rows if not r[5].startswith("(")]
        waiting = sum(r[0] == "main" and r[5].startswith("(") for r in rows)
        print(f"{study.study}: {sum(r[6] != 'done' for r in runs)} of {len(runs)} runs to do"
              + (f"; then {waiting} cells x {len(study.seeds)} seeds at the "
                 + ("best trial's values" if study.search else "LRs chosen on validation") if waiting else ""))
        from transferlab.study.estimate import estimate, plan_specs

        print(f"{study.study}: " + estimate(plan_specs(study, plan)).line())
        return 0
    resources = {}
    for item in args.ray_resource:
        name, _, amount = item.partition("=")
        try:
            resources[name] = float(amount or 1)
        except ValueError:
            raise UserError(f"--ray-resource: {item!r} is not NAME=AMOUNT, e.g. trainer=1") from None
    from transferlab.locations import ArtifactLocation
    from transferlab.study.executors import EXECUTORS

    if args.artifacts:
        ArtifactLocation(args.artifacts)  # a missing fsspec backend: one line before anything is written
        check_artifacts(args.artifacts)
    executor = EXECUTORS.get(args.executor, field="--executor")(
        workers=args.workers, address=args.address, threads=args.threads, seed_parallel=args.seed_parallel,
        gpus_per_task=args.gpus_per_task, retries=args.ray_retries, resources=resources)
    check_workers(plan, executor)
    try:
        store = Store(args.store, artifacts=args.artifacts)
    except BaseException:
        executor.close(cancel=True)
        raise
    result = run_study(study, store, executor=executor, skip_failed=args.skip_failed, new=args.new_study, plan=plan,
                       max_slots=args.max_slots)
    if result.interrupted:
        return 130
    if result.failed:  # 0: every run finished or diverged; 1: some failed (listed above); one line on stderr
        lines = result.errors[0].strip().splitlines() if result.errors else []
        first = lines[-1][:200] if lines else ""  # a traceback's last line says what went wrong
        print(f"transferlab: {study.study}: {result.failed} of {result.executed} runs failed (first: {first}); "
              f"`transferlab runs --study {study.study}` lists them", file=sys.stderr)
        return 1
    return 0


def too_large(study, args) -> bool:
    """A study of more than MAX_RUNS runs: refused without --yes; its dry run a summary in constant time
    (the first cell of each arm checked). True when the summary was printed (nothing more to do)."""
    from transferlab.study.expand import MAX_RUNS, count_runs, first_runs
    from transferlab.train.validate import validate_runs

    n = count_runs(study)
    if n <= MAX_RUNS:
        return False
    if args.dry_run:
        validate_runs(first_runs(study))
        print(f"{study.study}: {n} runs ({len(study.arm_names)} arms, {len(study.seeds)} seeds); more than "
              f"{MAX_RUNS:,}, so not listed; the first cell of each arm was checked; `--yes` runs them all")
        return True
    if not args.yes:
        raise UserError(f"{study.study}: {n:,} runs, more than {MAX_RUNS:,}; pass --yes to run them all "
                        "(--dry-run summarises them)")
    return False


def cmd_runs(args) -> int:
    from transferlab.text_table import format_table
    from transferlab.store import Store

    store = Store(args.store, create=False)
    rows = store.runs(study=args.study, latest=not args.all)
    if args.task is not None:
        rows = [r for r in rows if args.task in run_tasks(r.spec)]
    if args.study is not None and not rows and args.study not in {s for s, _, _ in store.studies()}:
        raise UserError(f"--study: no study {args.study!r} in {store.path}; studies: "
                        + (", ".join(s for s, _, _ in store.studies()) or "none"))
    if not rows:
        print(f"no runs in {store.path}" + (f" for study {args.study}" if args.study else "")
              + (f" for task {args.task}" if args.task else ""))
        return 0
    header, table = runs_table(rows)
    if args.format == "json":
        import json

        print(json.dumps([dict(zip(header, r)) for r in table], indent=1, default=str))
    elif args.format == "csv":
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(table)
    else:
        print(format_table(*runs_text_table(header, table)))
    return 0


RUN_COLUMNS = ["uid", "name", "study", "task", "model", "seed", "status", "steps", "time_s", "engine", "device",
               "samples_s", "error", "data"]


def run_tasks(spec: dict) -> list[str]:
    """The tasks a run trains: a multi-task run's every task, else its one task."""
    tasks = (spec.get("multitask") or {}).get("tasks") or [spec.get("task") or {}]
    return [str(t.get("name", "")) for t in tasks]


def runs_table(rows) -> tuple[list[str], list[list]]:
    """One row per run: identity, status, error, every dev_/test_ metric, and every spec field whose
    value differs between the listed runs (seed and name have their own columns)."""
    from transferlab.spec import flatten

    flat = [flatten(r.spec) for r in rows]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    differ = [k for k in keys if k not in ("seed", "name") and len({repr(f.get(k)) for f in flat}) > 1]
    metrics = [f"{split}_{m}" for split in ("dev", "test")
               for m in dict.fromkeys(m for r in rows for m in (r.summary.get(split) or {}))]
    table = []
    for r, f in zip(rows, flat):
        error = (r.error or r.summary.get("error") or "").strip().splitlines()
        values = {f"{split}_{m}": v for split in ("dev", "test") for m, v in (r.summary.get(split) or {}).items()}
        table.append([r.uid, r.name or "", r.study or "", "+".join(run_tasks(r.spec)), f.get("model.name", ""), r.seed,
                      r.status, r.summary.get("steps", ""), round(r.duration_s, 1) if r.duration_s else "",
                      r.summary.engine.label() if r.summary.steps else "", r.summary.engine.device if r.summary.steps
                      else "", round(r.summary.samples_per_s, 1) if r.summary.samples_per_s else "",
                      error[-1][:300] if error else "",  # a traceback's last line says what went wrong
                      " ".join(f"{k}={n}" for k, n in (r.summary.get("data_sizes") or {}).items()),
                      *[values.get(m, "") for m in metrics], *[f.get(k, "") for k in differ]])
    return RUN_COLUMNS + metrics + differ, table


def runs_text_table(header: list[str], table: list[list]) -> tuple[list[str], list[list[str]]]:
    """The terminal view: metrics to 4 decimals, the differing fields as key=value, errors cut short."""
    n_fixed = len(RUN_COLUMNS)
    metric_cols = [i for i, h in enumerate(header) if i >= n_fixed and h.startswith(("dev_", "test_"))]
    differ_cols = [i for i in range(n_fixed, len(header)) if i not in metric_cols]
    out_header = ["uid", "name", "task", "model", "seed", "status", "time", "engine", "data", "dev", "test", "differs",
                  "error"]
    col = {h: i for i, h in enumerate(header)}
    out = []
    for r in table:
        def joined(prefix: str) -> str:
            return "  ".join(f"{header[i][len(prefix):]}={r[i]:.4f}" for i in metric_cols
                             if header[i].startswith(prefix) and isinstance(r[i], float))
        differs = " ".join(f"{header[i]}={r[i]}" for i in differ_cols)
        time_s = r[col["time_s"]]
        out.append([r[0], r[1], r[3], r[4], r[5], r[6], f"{time_s:.0f}s" if time_s != "" else "", r[col["engine"]],
                    r[col["data"]], joined("dev_"), joined("test_"), differs, r[col["error"]][:60]])
    keep = [j for j, h in enumerate(out_header) if h in ("uid", "status") or any(row[j] != "" for row in out)]
    return [out_header[j] for j in keep], [[row[j] for j in keep] for row in out]


def cmd_export(args) -> int:
    from transferlab.checks import check_writable_dir
    from transferlab.store import Store

    store = Store(args.store, create=False)
    if args.csv or args.parquet:
        from transferlab.report.export_tables import export_tables

        folder = check_writable_dir(args.csv or args.parquet, "--csv" if args.csv else "--parquet")
        for path in export_tables(store, folder, "csv" if args.csv else "parquet", force=args.force):
            print(path)
        return 0
    if not args.run or not args.out:
        raise UserError("export needs a RUN and -o DIR (or --csv DIR / --parquet DIR)")
    check_writable_dir(args.out, "export -o")
    from transferlab.card import export_run

    out = export_run(store, args.run, Path(args.out), force=args.force)
    print(f"wrote {out}")
    return 0


def cmd_predict(args) -> int:
    from transferlab.predict import as_text, predict, write_predictions
    from transferlab.store import Store

    check_output(args.output, args.input, args.force)
    store = Store(args.store) if Path(args.store).is_file() else None
    frame = predict(args.source, args.input, store=store, split=args.split, text_column=args.text_column,
                    text_pair_column=args.text_pair_column, batch_size=args.batch_size, device=args.device,
                    progress=not args.quiet)
    if args.output:
        print(f"wrote {len(frame)} predictions to {write_predictions(frame, Path(args.output))}", file=sys.stderr)
    else:
        as_text(frame).to_csv(sys.stdout, index=False)
    return 0


def check_output(output: str | None, input: str | None, force: bool) -> None:
    """Never overwrite a user's file: --output is not --input, and an existing one needs --force."""
    if not output:
        return
    out = Path(output).expanduser()
    source = Path(input).expanduser() if input else None
    if source is not None and out.exists() and source.exists() and out.resolve() == source.resolve():
        raise UserError(f"--output: {out} is the --input file; write the predictions to another file")
    if out.exists() and not force:
        raise UserError(f"--output: {out} exists; pass --force to replace it")


def cmd_report(args) -> int:
    from transferlab.store import Store

    source = Path(args.store_path or args.store)
    if source.is_dir():  # a folder of `export --csv` tables, read into a store of our own for the report
        return _report_tables(args, source)
    return _report_store(args, Store(source, create=False))


def _report_tables(args, folder: Path) -> int:
    import tempfile

    from transferlab.report.export_tables import import_tables
    from transferlab.store import Store

    with tempfile.TemporaryDirectory(prefix="transferlab-report-") as tmp:  # ours: removed after the report
        store = Store(Path(tmp) / "store.db")
        try:
            import_tables(folder, store)
            return _report_store(args, store)
        finally:
            store.close()


def _report_store(args, store) -> int:
    from transferlab.checks import check_writable_dir
    from transferlab.report import write_report

    known = {s for s, _, _ in store.studies()} | {r.study for r in store.runs() if r.study}
    if args.study is not None and args.study not in known:
        raise UserError(f"--study: no study {args.study!r} in {store.path}; studies: {', '.join(sorted(known)) or 'none'}")
    if not store.runs(study=args.study):
        print(f"transferlab: {store.path} holds no runs{f' of study {args.study}' if args.study else ''}; "
              "nothing to report", file=sys.stderr)
        return 1
    check_writable_dir(args.out, "report -o")
    for path in write_report(store, Path(args.out), study=args.study, tost_margin=args.tost_margin,
                             include_search_seeds=args.include_search_seeds):
        print(path)
    return 0


def cmd_plan_seeds(args) -> int:
    from transferlab.report import cells
    from transferlab.report.analysis import PLAN_HEADER, plan_rows
    from transferlab.text_table import format_table
    from transferlab.store import Store

    path = Path(args.store_path or args.store)
    if not path.is_file():
        raise UserError(f"store {path} does not exist")
    if not 0 < args.alpha < 1 or not 0 < args.power < 1:
        raise UserError(f"--alpha and --power must lie in (0, 1), got {args.alpha} and {args.power}")
    store = Store(path)
    rows = plan_rows(store, cells(store, args.study, args.include_search_seeds), args.study, args.delta,
                     args.alpha, args.power)
    print(format_table(PLAN_HEADER, rows))
    print(f"seeds needed to detect a difference of {args.delta:g} at power {args.power:g}, two-sided alpha "
          f"{args.alpha:g} (per arm; paired: the same seeds in both arms)")
    return 0


def cmd_pretrain(args) -> int:
    from transferlab.pretrain import load_pretrain_spec, pretrain

    spec = load_pretrain_spec(args.spec, args.overrides)
    s = pretrain(spec, progress=not args.quiet)
    print(f"wrote {spec.out}  ({s['objective']}, {s['steps']} steps, {s['duration_s']:.0f}s)")
    print(f"  held-out loss: {s['heldout_before']:.4f} -> {s['heldout_after']:.4f}")
    return 0


def cmd_bench(args) -> int:
    import torch

    from transferlab.bench import bench

    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    except ValueError:
        raise UserError(f"--seeds: {args.seeds!r} is not a comma-separated list of integers, e.g. 1,4,8") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    result = bench(args.model, batch=args.batch, seq=args.seq, steps=args.steps, warmup=args.warmup, seeds=seeds,
                   rows=tuple(r.strip() for r in args.rows.split(",") if r.strip()), device=args.device,
                   precision=args.precision, compile=args.compile, repeat=args.repeat, profile=args.profile,
                   task=args.task, data=args.data, checkpoint_layers=args.checkpoint_layers, optim=args.optim,
                   json_path=args.json, append=args.append)
    return 0 if not result["failed"] else 1


def cmd_demo(args) -> int:
    from transferlab.demo import demo

    for name, value in (("--seeds", args.seeds), ("--epochs", args.epochs), ("--train-samples", args.train_samples)):
        if value is not None and value < 1:
            raise UserError(f"{name}: expected a whole number >= 1, got {value}")
    demo(Path(args.out), seeds=args.seeds, progress=not args.quiet, train_samples=args.train_samples,
         epochs=args.epochs)
    return 0


def cmd_surgery(args) -> int:
    from transferlab.text_table import format_table
    from transferlab.store import Store
    from transferlab.surgery import run_surgery, table

    main, rows = run_surgery(Store(args.store, create=False), args.run, args.surgery, split=args.split, task_path=args.task_path,
                             seed=args.seed, batch_size=args.batch_size)
    print(format_table(*table(main, rows)))
    return 0


COMMANDS = {"bench": cmd_bench, "surgery": cmd_surgery, "run": cmd_run, "runs": cmd_runs, "export": cmd_export, "report": cmd_report, "demo": cmd_demo,
            "predict": cmd_predict,
            "plan-seeds": cmd_plan_seeds,
            "pretrain": cmd_pretrain}


if __name__ == "__main__":
    entry()
