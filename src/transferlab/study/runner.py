"""Run a study: register it, plan it, run what is missing, show progress.

    result = run_study(load_study("study.yaml"), Store("runs/transferlab.db"), executor="processes", workers=2)

Resume: a run whose newest attempt finished or diverged is done and never runs again; a
failed run runs again (unless ``skip_failed``), and so does an unfinished one (its process
died) or one stopped by Ctrl-C. Every new attempt is a new row, so nothing is overwritten
or duplicated. A study name already in the store with a different definition is refused
unless ``new=True`` (``--new-study``), which replaces its plan; the runs stay and are
reused where the specs match.

Progress prints one line per completed run: runs done out of the total, the run's result,
and an ETA from the mean duration of the runs this session has executed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from transferlab.data.degenerate import is_degenerate
from transferlab.errors import UserError
from transferlab.fingerprint import fingerprint
from transferlab.spec import run_id as spec_run_id
from transferlab.spec import spec_hash, to_dict
from transferlab.store import Heartbeat, Store
from transferlab.study import lr_select, ray_executor  # noqa: F401  (ray_executor registers "ray")
from transferlab.study import search as search_mod
from transferlab.study.executors import EXECUTORS, Executor
from transferlab.study.expand import Planned, StudyPlan, cell_defs, expand, plan_study
from transferlab.study.jobs import Job, Outcome
from transferlab.study.spec import StudySpec, study_hash

INTERRUPTED = "interrupted"  # prefix of the error the loop stores for a run stopped by Ctrl-C


@dataclass
class StudyResult:
    planned: int = 0
    executed: int = 0
    skipped: int = 0  # already done (or failed and skipped)
    failed: int = 0
    diverged: int = 0
    pruned: int = 0  # search runs stopped by Optuna's pruner (stored failed, "pruned: ...")
    interrupted: bool = False
    elsewhere: int = 0  # claimed by another driver of the same study meanwhile
    lrs: dict = field(default_factory=dict)
    chosen: dict = field(default_factory=dict)  # (task, cell) -> the search's best values
    failures: list[str] = field(default_factory=list)  # one line per failed run
    errors: list[str] = field(default_factory=list)  # the failed runs' errors, in completion order


def state(store: Store, rid: str) -> str:
    """What the study should do with a run id: done, failed (earlier, not interrupted), running, todo."""
    rows = store.runs(run_id=rid)
    if not rows:
        return "todo"
    last = rows[-1]
    if last.status in ("finished", "diverged"):
        return "done"
    if last.status == "failed" and not (last.error or "").startswith(INTERRUPTED):
        return "failed"
    if last.status == "running":
        return "running"  # alive on this host, or on another host: leave it to its process
    return "todo"  # unfinished, or stopped by Ctrl-C


def _fmt_time(seconds: float) -> str:
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    def __init__(self, total: int, done: int, parallelism: int, margin: float, out: Callable[[str], None]):
        self.total, self.done, self.parallelism, self.margin, self.out = total, done, parallelism, margin, out
        self.durations: list[float] = []

    def report(self, p: Planned, o: Outcome) -> None:
        self.done += 1
        if o.status != "skipped":
            self.durations.append(o.duration_s)
        remaining = self.total - self.done
        eta = ""
        if self.durations and remaining:
            mean = sum(self.durations) / len(self.durations)
            eta = f"  ETA {_fmt_time(mean * remaining / max(1, self.parallelism))}"
        summary = o.summary or {}
        split = "test" if summary.get("test") else "dev"
        metric = summary.get("main_metric")
        value = (summary.get(split) or {}).get(metric)
        what = f"{split} {metric} {value:.4f}" if value is not None else ((o.error or "").splitlines() or [""])[0][:100]
        flag = "  DEGENERATE" if is_degenerate(summary, split, self.margin) else ""
        phase = {"lr": "[lr search] ", "search": "[search] "}.get(p.phase, "")
        self.out(f"[{self.done}/{self.total}] {phase}{p.task} | {p.cell} | seed {p.seed}"
                 f"{f' | lr {p.lr:g}' if p.lr else ''}: {o.status}  {what}  ({o.duration_s:.0f}s){flag}{eta}")


def _claimed(groups, planned: list[Planned], store: Store, study: str, *, skip_failed: bool, artifacts: str | None,
             beat: Heartbeat, elsewhere: list[Job]):
    """The groups' jobs, each claimed in the store just before it is handed to the executor; a job
    another driver holds or finished meanwhile is left out (listed in ``elsewhere``)."""
    for group in groups:
        live = []
        for job in group:
            p = planned[job.index]
            refs = _refs(store, p.spec)  # a teacher that is not there fails before a claim exists
            phase_a = _phase_a(store, p.spec, study, refs) if p.spec.intermediate is not None else None
            if phase_a is False:  # another job of a driver trains this phase A now: left to it
                elsewhere.append(job)
                continue
            claim = store.claim(p.run_id, spec_hash(p.spec), p.seed, to_dict(p.spec), name=p.spec.name, study=study,
                                fingerprint=fingerprint(p.spec), retry_failed=not skip_failed)
            if claim is None:
                if phase_a:
                    store.heartbeat([phase_a["uid"]], lease_s=-1)  # released: reads unfinished, reruns later
                elsewhere.append(job)
                continue
            job.uid, job.earlier = claim
            job.artifacts, job.refs, job.phase_a = artifacts, refs, phase_a
            beat.uids.update([job.uid] + ([phase_a["uid"]] if phase_a else []))
            live.append(job)
        if live:
            yield live


def _phase_a(store: Store, spec, study: str, refs: dict[str, dict]) -> dict | bool | None:
    """An intermediate-task run's phase A (train/intermediate.py), a run of its own: when it finished
    already, its row goes to the worker in ``refs`` (None); else it is claimed with phase B and the
    claim travels in the job (a dict); False when another job holds it now."""
    from transferlab.spec import run_id
    from transferlab.train.intermediate import phase_a_spec

    a = phase_a_spec(spec)
    a_id = run_id(a)
    row = store.finished(a_id)
    if row is not None:
        refs[a_id] = _ref_row(store, row)
        return None
    claim = store.claim(a_id, spec_hash(a), a.seed, to_dict(a), name=a.name, study=study, fingerprint=fingerprint(a))
    if claim is None:
        return False
    return {"uid": claim[0], "earlier": claim[1], "run_id": a_id, "recipe_hash": spec_hash(a), "seed": a.seed}


def _refs(store: Store, spec) -> dict[str, dict]:
    """Runs of this store that a spec names (a KD teacher without teacher_store): their rows, for the worker."""
    from pathlib import Path

    teacher = spec.distill.teacher
    if spec.distill.kind == "none" or not teacher or spec.distill.teacher_store or Path(teacher).is_dir():
        return {}
    return {teacher: _ref_row(store, store.get(teacher))}


def _ref_row(store: Store, row) -> dict:
    """A stored run's row as plain data for a worker's Recorder, with where its weights are."""
    return {**row.__dict__, "summary": row.summary.to_dict(), "artifacts": store.location_of(row.uid).url}


def _execute(study: StudySpec, store: Store, planned: list[Planned], executor, *, skip_failed: bool,
             result: StudyResult, out: Callable[[str], None], prune: dict | None = None,
             max_slots: int | None = None) -> None:
    from transferlab.study.seed_groups import seed_groups

    states = {p.run_id: state(store, p.run_id) for p in planned}
    todo = [p for p in planned if states[p.run_id] == "todo" or (states[p.run_id] == "failed" and not skip_failed)]
    done = len(planned) - len(todo)
    counts = {s: sum(v == s for v in states.values()) for s in ("done", "failed", "running")}
    phase = {"lr": "LR search", "search": "search trial"}.get(planned[0].phase if planned else "", "runs")
    out(f"{study.study}: {phase}: {len(planned)} planned, {counts['done']} done, {counts['failed']} failed "
        f"({'skipped' if skip_failed else 'run again'}), {counts['running']} running elsewhere, {len(todo)} to run")
    result.planned += len(planned)
    result.skipped += done
    if not todo:
        return
    tracking = to_dict(study.logging) if study.logging.enabled else None  # live, from inside each run
    jobs = [Job(i, p.spec, study.study, str(store.path), run_id=p.run_id, tracking=tracking,
                prune=prune and {**prune, "pos": study.search.seeds.index(p.seed)}) for i, p in enumerate(todo)]
    groups = seed_groups(jobs, executor.seed_parallel, has_hooks=getattr(executor, "hooks", None) is not None,
                         max_slots=max_slots)
    artifacts = store.location.url if executor.shares_files or store.location_named else None
    progress = Progress(len(planned), done, executor.parallelism, study.degenerate_margin, out)
    beat, elsewhere = Heartbeat(store.path), []

    def handle(outcome: Outcome) -> None:
        for record in outcome.extra:  # phase A of an intermediate-task run, trained first
            store.write_record(record)
            beat.uids.discard(record.uid)
        store.write_record(outcome.record)  # the driver is the only writer
        beat.uids.discard(outcome.uid)
        _report(todo[outcome.index], outcome, result, progress)

    executor.emit = handle  # inline: a slot is stored as it leaves its group (study/jobs.py execute_jobs)
    try:
        claimed = _claimed(groups, todo, store, study.study, skip_failed=skip_failed, artifacts=artifacts,
                           beat=beat, elsewhere=elsewhere)
        for outcome in executor.map(claimed):
            handle(outcome)
    except BaseException:
        beat.close(store, release=True)
        raise
    finally:
        executor.emit = None
    beat.close(store)
    result.skipped += len(elsewhere)
    result.elsewhere += len(elsewhere)
    if elsewhere:
        out(f"{study.study}: {len(elsewhere)} runs were claimed by another driver meanwhile; left to it")


def _report(p: Planned, outcome: Outcome, result: StudyResult, progress: Progress) -> None:
    from transferlab.study.search import PRUNED

    result.executed += 1
    if outcome.status == "failed" and (outcome.error or "").startswith(PRUNED):
        result.pruned += 1
        progress.report(p, outcome)
        return
    result.failed += outcome.status == "failed"
    result.diverged += outcome.status == "diverged"
    if outcome.status == "failed":
        last = ((outcome.error or "failed").strip().splitlines() or ["failed"])[-1][:200]
        result.failures.append(f"{p.task} | {p.cell} | seed {p.seed}: {last}")
        result.errors.append(outcome.error or "")
    progress.report(p, outcome)


def run_study(study: StudySpec, store: Store, *, executor: str | Executor = "inline", workers: int = 1,
              address: str | None = None, threads: int | None = None, skip_failed: bool = False, new: bool = False,
              hooks: Callable[[Job], list] | None = None, out: Callable[[str], None] | None = None,
              seed_parallel: str = "auto", plan: StudyPlan | None = None, max_slots: int | None = None,
              **executor_options) -> StudyResult:
    """Run every planned run of ``study`` that is not done yet; returns counts. Ctrl-C stops cleanly.

    ``threads``: torch CPU threads per run (default: torch's own inline, cores / workers in
    processes, 1 on Ray). CPU results depend on it, so give the same number to compare executors.
    ``seed_parallel`` (auto, on, off): train runs that differ only in seed together (study/seed_groups.py);
    auto does so on CUDA only; ``max_slots``: runs a stacked group holds at most (default: what fits in the
    device's memory, study/seed_groups.py slot_limit). ``executor_options``: the Ray executor's ``gpus_per_task``, ``retries``
    and ``resources`` (study/ray_executor.py). ``plan``: the study already planned (``plan_study``); with
    an Executor given too, its workers were checked with it (the CLI does both before it opens the store).
    """
    if not isinstance(study, StudySpec):
        raise UserError(f"run_study: expected a StudySpec (load_study(path or dict)), got {type(study).__name__}")
    if not isinstance(store, Store):
        raise UserError(f"run_study: store must be a Store, got {type(store).__name__}")
    out = out or (lambda line: print(line, flush=True))
    checked = plan is not None and not isinstance(executor, str)  # the caller checked this executor's workers
    plan = plan or plan_study(study, store=store)  # first: a study that cannot expand or validate is not registered
    if max_slots is not None:  # 0, or more than fit: one line before anything is written
        from transferlab.study.seed_groups import slot_limit

        slot_limit([p.spec for p in plan.search + plan.main], max_slots)
    search, main = plan.search, plan.main
    if isinstance(executor, str):  # before anything is written: a bad cluster address leaves the store as it was
        kwargs = {"workers": workers, "address": address, "threads": threads, "hooks": hooks,
                  "seed_parallel": seed_parallel, **executor_options}
        executor = EXECUTORS.get(executor, field="--executor")(**kwargs)
    ex = executor
    ex.log = out
    if not checked:
        check_workers(plan, ex)
    store.register_study(study.study, study_hash(study), to_dict(study), new=new)
    result = StudyResult()
    start = time.time()
    try:
        if study.lr_search is not None:
            store.plan_runs(study.study, [p.plan_row() for p in search])
            _execute(study, store, search, ex, skip_failed=skip_failed, result=result, out=out, max_slots=max_slots)
            choices = lr_select.choose(store, search, study.lr_search.metric)
            lr_select.record(store, study.study, choices)
            for c in choices.values():
                out(f"{study.study}: {c.task} | {c.cell}: LR {c.lr:g} chosen on validation {c.metric} ("
                    + ", ".join(f"{lr:g}: {s:.4f}" for lr, s, _ in c.scores) + ")")
            result.lrs = {k: c.lr for k, c in choices.items()}
            main = expand(study, result.lrs)
        if study.search is not None:
            def trial(planned: list[Planned], prune: dict | None) -> None:
                _execute(study, store, planned, ex, skip_failed=skip_failed, result=result, out=out, prune=prune,
                         max_slots=max_slots)

            result.chosen = search_mod.run_search(study, store, trial, out)
            main = expand(study, chosen=result.chosen)
        store.plan_runs(study.study, [p.plan_row() for p in main])
        _execute(study, store, main, ex, skip_failed=skip_failed, result=result, out=out, max_slots=max_slots)
    except KeyboardInterrupt:
        result.interrupted = True
        ex.close(cancel=True)
        out(f"{study.study}: stopped after {_fmt_time(time.time() - start)}; runs in flight are left unfinished. "
            "Run the same command again to resume.")
        return result
    ex.close()
    out(f"{study.study}: {result.executed} runs executed ({result.failed} failed, {result.diverged} diverged"
        + (f", {result.pruned} pruned" if result.pruned else "") + "), "
        f"{result.skipped} already done, in {_fmt_time(time.time() - start)}")
    for line in result.failures:
        out(f"{study.study}: failed: {line}")
    return result


def check_workers(plan: StudyPlan, ex: Executor) -> None:
    """Can the executor's workers read what the study's runs read (a Ray node without the data: one line,
    before anything is written)? The executor is closed when not."""
    jobs = [Job(i, p.spec, plan.study, "", run_id=p.run_id) for i, p in enumerate(plan.search + plan.main)]
    jobs += [Job(len(jobs) + i, spec, plan.study, "", run_id=spec_run_id(spec)) for i, spec in enumerate(plan.trials)]
    try:
        ex.check(jobs)
    except BaseException:
        ex.close(cancel=True)
        raise


def describe_plan(study: StudySpec, store: Store | None, seed_parallel: str = "auto",
                  plan: StudyPlan | None = None, max_slots: int | None = None) -> list[list[str]]:
    """Rows for ``--dry-run``, in the order the runs execute (stacked groups as the executor forms them):
    phase, task, cell, seed, lr, run id, state in the store, and the group (number, slots, engine)."""
    from transferlab.study.seed_groups import seed_groups

    rows = []
    plan = plan or plan_study(study, validate=False)
    search = plan.search
    lrs = lr_select.stored_choices(store, study.study) if store is not None and search else {}
    path = str(store.path) if store is not None else ""
    chosen = search_mod.stored_choices(store, study.study) if store is not None and study.search else {}
    if study.search is not None:
        n = search_mod.budget(study.search)
        rows += [["search", c.task, c.cell, ",".join(map(str, study.search.seeds)), "-", f"({n} trials x "
                  f"{len(study.search.seeds)} seeds)", "done" if (c.task, c.cell) in chosen else "todo", "-"]
                 for c in cell_defs(study)]
    n_groups = 0
    for phase in (search, expand(study, lrs or None, chosen or None) if (lrs or chosen) else plan.main):
        jobs = [Job(i, p.spec, study.study, path, run_id=p.run_id) for i, p in enumerate(phase)]
        for group in seed_groups(jobs, seed_parallel, max_slots=max_slots):
            label = group_label(n_groups := n_groups + 1, [j.spec for j in group])
            for job in group:
                p = phase[job.index]
                st = state(store, p.run_id) if store is not None else "todo"
                rows.append([p.phase, p.task, p.cell, str(p.seed), f"{p.lr:g}" if p.lr else "-", p.run_id, st, label])
    if study.lr_search is not None:
        waiting = {(c.task, c.cell) for c in cell_defs(study)} - set(lrs)
        for task, cell in sorted(waiting):
            rows.append(["main", task, cell, ",".join(map(str, study.seeds)), "chosen on validation",
                         "(after the LR search)", "todo", "-"])
    if study.search is not None:
        for c in cell_defs(study):
            if (c.task, c.cell) not in chosen:
                rows.append(["main", c.task, c.cell, ",".join(map(str, study.seeds)), "-",
                             "(at the best trial's values)", "todo", "-"])
    return rows


def group_label(number: int, specs: list) -> str:
    """``--dry-run``'s group column: its number, its slots and the engine it will use (train/support.py)."""
    if len(specs) == 1:
        return f"{number}: 1 run, single"
    from transferlab.errors import UserError as _Refused
    from transferlab.train.support import choose_engine

    try:
        kind, _ = choose_engine(specs)
    except _Refused:
        kind = "refused"
    return f"{number}: {len(specs)} slots, {kind}"
