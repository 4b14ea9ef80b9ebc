"""A study's ``search:`` section: a hyper-parameter search per cell, driven by Optuna (the ``search`` extra).

    search:
      space: {optim.lr: {low: 1e-5, high: 1e-3, log: true}, train.batch_size: [16, 32]}
      trials: 20                 # per cell (task x arm x grid point)
      seeds: [100, 101]          # every trial runs these seeds: ordinary runs of the store
      sampler: tpe               # tpe | random | grid
      objective: mean            # mean | lcb (mean - lcb_k * sd / sqrt(n))
      pruner: median             # none | median | halving, at the runs' dev evaluations

It generalises ``lr_search`` (study/lr_select.py): every cell gets its own Optuna study, each trial's
seeds are planned runs (phase ``search``, run ids the hash of their resolved spec as every run), the
objective is the trials' final validation score (a diverged run scores as the constant baseline), and
the cell then runs every study seed at the best trial's values (``main``; a search run whose values
and seed recur is reused). Optuna's state lives in its RDB storage (an SQLite file beside the store by
default), so a search stopped anywhere resumes: finished trials are never rerun, a trial cut short
(its process killed) is asked again with the same values, and its finished runs are reused from the
store. Pruning: a hook in each run reports the dev metric to the trial at every evaluation
(intermediate step = seed position x run steps + step) and stops the run when Optuna's pruner says
so; the run is stored as failed (``pruned: ...``), the trial as PRUNED. One driver per search.

Written here: the YAML space, the per-seed aggregation, the Study.optimize loop over the study's executors
and the resume rule. Samplers, pruners, storage and importance are Optuna's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.errors import UserError
from transferlab.recipes.hooks import Hook
from transferlab.study.expand import sample_specs, search_point  # noqa: F401  (re-exported)
from transferlab.study.search_space import (  # noqa: F401  (the section's names, used here and re-exported)
    DIM_KEYS,
    OBJECTIVES,
    PRUNERS,
    SAMPLERS,
    _optuna,
    budget,
    check_search,
    grid_size,
    grid_values,
    make_pruner,
)

PRUNED = "pruned"  # prefix of a pruned run's stored error


# --------------------------------------------------------------------------- Optuna objects
def storage_url(search, store_path: str | Path) -> str:
    if search.storage:
        return search.storage
    path = Path(store_path)
    return f"sqlite:///{path.with_name(path.stem + '.optuna.db').resolve()}"


def storage(url: str):
    optuna = _optuna()
    if url.startswith("sqlite:"):  # several processes (the driver, its workers' pruning hooks) share the file
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return url


def make_sampler(search, seed: int):
    optuna = _optuna()
    if search.sampler == "grid":
        return optuna.samplers.GridSampler({k: grid_values(k, d) for k, d in search.space.items()}, seed=seed)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def distribution(key: str, dim: Any, sampler: str):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if sampler == "grid" or isinstance(dim, list):
        return CategoricalDistribution(grid_values(key, dim) if sampler == "grid" else dim)
    if dim["type"] == "int":
        return IntDistribution(int(dim["low"]), int(dim["high"]), log=dim["log"], step=int(dim["step"] or 1))
    return FloatDistribution(float(dim["low"]), float(dim["high"]), log=dim["log"], step=dim["step"])


def optuna_name(study, task: str, cell: str) -> str:
    """The cell's Optuna study: named by the study's identity too, so a changed definition
    (``--new-study``) starts a new Optuna study instead of mixing incompatible trials."""
    from transferlab.study.spec import study_hash

    return f"{study.study}/{task}/{cell}/{study_hash(study)[:8]}"


def objective(values: list[float], kind: str, k: float, higher: bool) -> float:
    """The trial's value from its seeds' scores: the mean, or a pessimistic bound of it (lcb)."""
    mean = float(np.mean(values))
    if kind == "mean" or len(values) < 2:
        return mean
    half = k * float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return mean - half if higher else mean + half


# --------------------------------------------------------------------------- pruning, inside a run
class Pruned(UserError):
    """Raised by the pruning hook: the run stops and is stored as failed with this message."""


class PruneHook(Hook):
    """Reports the dev metric to the Optuna trial at every evaluation; stops the run when pruned.

    Its arguments travel in the Job as plain data: url (Optuna's storage), study (its name), trial_id,
    pruner, metric (the searched metric), pos (the seed's position in the trial)."""

    name = "optuna-prune"

    def __init__(self, url: str, study: str, trial_id: int, pruner: str, options: dict, metric: str, pos: int):
        optuna = _optuna()
        ostudy = optuna.load_study(study_name=study, storage=storage(url), pruner=make_pruner(pruner, options))
        self.trial = optuna.trial.Trial(ostudy, trial_id)
        self.metric, self.pos, self.offset = metric, pos, 0

    def on_train_start(self, model, optimizer, total_steps: int) -> None:
        self.offset = self.pos * total_steps
        self._stop_if_pruned(0)

    def _stop_if_pruned(self, step: int) -> None:
        attrs = self.trial.storage.get_trial(self.trial._trial_id).user_attrs
        if PRUNED in attrs:  # another seed of the trial was pruned: this one stops too
            raise Pruned(f"{PRUNED} at step {step}: the trial was pruned ({attrs[PRUNED]})")

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        dev = {k[4:]: v for k, v in metrics.items() if k.startswith("dev/")}
        if not dev:
            return
        metric = self.metric
        if metric not in dev:
            return
        self._stop_if_pruned(step)
        self.trial.report(dev[metric], self.offset + step)
        if self.trial.should_prune():
            why = f"seed #{self.pos} step {step}: dev {metric} {dev[metric]:.4f}"
            self.trial.set_user_attr(PRUNED, why)
            raise Pruned(f"{PRUNED} by Optuna's pruner at {why}")


# --------------------------------------------------------------------------- the driver
def trial_runs(study, cell, number: int, params: dict[str, Any]) -> list:
    """A trial's planned runs: the cell at the trial's values, once per search seed."""
    from transferlab.study.expand import Planned, build_spec

    return [Planned("search", cell.task, cell.arm, cell.cell, seed, params.get("optim.lr"),
                    build_spec(study, cell, seed, params, f"{cell.cell} trial {number}"))
            for seed in study.search.seeds]


def _metric(study, cell) -> tuple[str, bool]:
    """The searched metric and whether higher is better (the task's main metric unless given)."""
    from transferlab.data.build import build_task
    from transferlab.data.metrics import higher_is_better
    from transferlab.study.expand import build_spec

    metric = study.search.metric
    if metric is None:
        spec = build_spec(study, cell, study.search.seeds[0], search_point(study.search), cell.cell)
        metric = build_task(spec.task, seed=spec.seed).main_metric
    return metric, higher_is_better(metric)


def open_study(study, cell, url: str, direction: str | None = None):
    """The cell's Optuna study (created when ``direction`` is given), or None when it is not there."""
    optuna = _optuna()
    name = optuna_name(study, cell.task, cell.cell)
    try:
        pruner = make_pruner(study.search.pruner, study.search.pruner_options)
        return optuna.load_study(study_name=name, storage=storage(url), pruner=pruner)
    except KeyError:
        if direction is None:
            return None
    return optuna.create_study(study_name=name, storage=storage(url), direction=direction,
                               pruner=make_pruner(study.search.pruner, study.search.pruner_options))


def resume(ostudy) -> int:
    """Trials a dead driver left RUNNING get the verdict they reached (a value, pruned, failed) or, cut short
    before one, FAIL and are asked again with the same values, once (their finished runs are reused from
    the store); returns the trials that count against the budget."""
    from optuna.trial import TrialState

    trials = ostudy.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    done = 0
    for t in trials:
        verdict = t.user_attrs.get("verdict")
        if t.state == TrialState.RUNNING:
            if verdict == "complete":
                ostudy.tell(t.number, t.user_attrs["value"])
            else:
                ostudy.tell(t.number, state=TrialState.PRUNED if verdict == "pruned" else TrialState.FAIL)
        if verdict or t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            done += 1
        elif t.state != TrialState.WAITING and t.number not in retried and t.params:
            ostudy.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
    return done


def run_search(study, store, execute, out) -> dict[tuple[str, str], dict[str, Any]]:
    """Search every cell (``execute(planned, prune)`` runs a trial's runs through the study's executor);
    returns (task, cell) -> the best trial's values, and records each cell's search in the store."""
    from transferlab.study.expand import cell_defs

    search, url = study.search, storage_url(study.search, store.path)
    chosen = {}
    for cell in cell_defs(study):
        metric, higher = _metric(study, cell)
        ostudy = open_study(study, cell, url, "maximize" if higher else "minimize")
        done = resume(ostudy)
        left = budget(search) - done
        out(f"{study.study}: search {cell.task} | {cell.cell}: {done} of {budget(search)} trials done, {max(0, left)} "
            f"to run ({search.sampler}, pruner {search.pruner}, {len(search.seeds)} seeds each)")

        def one_trial(trial, cell=cell, metric=metric, higher=higher):
            return _trial(study, store, cell, trial, metric, higher, url, execute, out)

        def reseed(ostudy, frozen):  # the next trial's sampler seed is its number: resumable sequences
            if search.sampler != "grid":  # the grid sampler keeps its own (unvisited points, from the storage)
                ostudy.sampler = make_sampler(search, search.sampler_seed + frozen.number + 1)

        if left > 0:
            ostudy.sampler = make_sampler(search, search.sampler_seed + len(ostudy.trials))
            dists = {k: distribution(k, d, search.sampler) for k, d in search.space.items()}
            ostudy.optimize(lambda t: one_trial(_suggest(t, dists)), n_trials=left, callbacks=[reseed])
        chosen[(cell.task, cell.cell)] = _record(study, store, cell, ostudy, metric, url, out)
    return chosen


def _suggest(trial, dists):
    for key, dist in dists.items():
        trial._suggest(key, dist)  # Optuna's own path for fixed distributions (as Study.ask does)
    return trial


def _trial(study, store, cell, trial, metric: str, higher: bool, url: str, execute, out) -> float:
    """Run a trial's seeds; its value from their final dev scores, or pruned / failed."""
    from transferlab.study.lr_select import latest, score

    optuna = _optuna()
    planned = trial_runs(study, cell, trial.number, trial.params)
    trial.set_user_attr("run_ids", [p.run_id for p in planned])
    store.plan_runs(study.study, [p.plan_row() for p in planned])
    prune = None if study.search.pruner == "none" else {
        "url": url, "study": trial.study.study_name, "trial_id": trial._trial_id, "pruner": study.search.pruner,
        "options": study.search.pruner_options, "metric": metric}
    execute(planned, prune)
    rows = [latest(store, p.run_id) for p in planned]
    pruned = [r for r in rows if r is not None and r.status == "failed" and (r.error or "").startswith(PRUNED)]
    scores = [s[1] for r in rows if r is not None and (s := score(r, metric)) is not None]
    params = ", ".join(f"{k}={_label(v)}" for k, v in trial.params.items())
    if pruned:
        trial.set_user_attr("verdict", "pruned")
        out(f"{study.study}: trial {trial.number} ({params}): pruned ({pruned[0].error.splitlines()[0]})")
        raise optuna.TrialPruned()
    if len(scores) < len(planned):
        trial.set_user_attr("verdict", "failed")
        out(f"{study.study}: trial {trial.number} ({params}): {len(planned) - len(scores)} of {len(planned)} runs "
            "failed; the trial fails")
        return float("nan")  # Optuna stores the trial as FAIL and the search goes on
    value = objective(scores, study.search.objective, study.search.lcb_k, higher)
    trial.set_user_attr("scores", scores)
    trial.set_user_attr("value", value)
    trial.set_user_attr("verdict", "complete")
    out(f"{study.study}: trial {trial.number} ({params}): {study.search.objective} dev {metric} {value:.4f}")
    return value


def _label(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _record(study, store, cell, ostudy, metric: str, url: str, out) -> dict[str, Any]:
    """The cell's search in the store (``study_values``, key ``search/<task>/<cell>``); the best values."""
    from optuna.trial import TrialState

    trials = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
               "scores": t.user_attrs.get("scores"), "run_ids": t.user_attrs.get("run_ids", [])}
              for t in ostudy.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    if not any(t["state"] == "COMPLETE" for t in trials):
        raise UserError(f"search {cell.task} / {cell.cell}: no trial completed (all pruned or failed); "
                        f"see `transferlab runs --study {study.study}`")
    best = ostudy.best_trial
    store.set_study_value(study.study, f"search/{cell.task}/{cell.cell}", {
        "task": cell.task, "cell": cell.cell, "metric": metric, "direction": ostudy.direction.name.lower(),
        "objective": study.search.objective, "best": best.number, "params": best.params, "value": best.value,
        "storage": url, "optuna_study": ostudy.study_name, "trials": trials})
    out(f"{study.study}: {cell.task} | {cell.cell}: best trial {best.number} ("
        + ", ".join(f"{k}={_label(v)}" for k, v in best.params.items()) + f"): {best.value:.4f}")
    return dict(best.params)


def stored_choices(store, study: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(task, cell) -> the best values, as recorded by an earlier run of the study."""
    return {(v["task"], v["cell"]): v["params"] for k, v in store.study_values(study).items()
            if k.startswith("search/")}


def plan_lines(study) -> list[str]:
    """``--dry-run``: the search plan in words, before the table."""
    s = study.search
    lines = [f"search: {budget(s)} trials per cell ({s.sampler} sampler, seed {s.sampler_seed}; pruner {s.pruner}), "
             f"each over seeds {s.seeds}; objective {s.objective}"
             + (f" (k {s.lcb_k:g})" if s.objective == "lcb" else "")
             + f" of the final dev {s.metric or 'main metric'}; then every cell runs seeds {study.seeds} "
             "at its best trial's values"]
    for key, dim in s.space.items():
        what = (f"choices {dim}" if isinstance(dim, list) else
                f"{dim['type']} [{dim['low']:g}, {dim['high']:g}]" + (" log" if dim["log"] else "")
                + (f" step {dim['step']:g}" if dim["step"] else ""))
        lines.append(f"  {key}: {what}")
    return lines



# --------------------------------------------------------------------------- the report's view
def searches(store, studies: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(study, the cell's stored search) for every searched cell of ``studies``."""
    return [(s, v) for s in studies for k, v in store.study_values(s).items() if k.startswith("search/")]


def trials_table(store, studies: list[str], top: int = 5) -> tuple[list[str], list[list[str]]]:
    """The best ``top`` trials of every searched cell, then a count of the rest by state."""
    header = ["study", "task", "cell", "rank", "trial", "value", "values", "seed scores", "trials"]
    rows = []
    for study, v in searches(store, studies):
        done = [t for t in v["trials"] if t["state"] == "COMPLETE"]
        done.sort(key=lambda t: t["value"], reverse=v["direction"] == "maximize")
        states = {}
        for t in v["trials"]:
            states[t["state"].lower()] = states.get(t["state"].lower(), 0) + 1
        counts = ", ".join(f"{n} {s}" for s, n in states.items())
        for rank, t in enumerate(done[:top], 1):
            rows.append([study, v["task"], v["cell"], str(rank), str(t["number"]),
                         f"{t['value']:.4f} ({v['objective']} dev {v['metric']})",
                         ", ".join(f"{k}={_label(x)}" for k, x in t["params"].items()),
                         ", ".join(f"{x:.4f}" for x in t["scores"] or []), counts if rank == 1 else ""])
    return header, rows


def importance_plots(store, studies: list[str]) -> dict[str, bytes]:
    """Optuna's parameter importance plot (fANOVA, its default evaluator) per searched cell with at least
    two completed trials, read from the search's storage; a storage that is not reachable is skipped."""
    import io
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    optuna = _optuna()
    out = {}
    for i, (study, v) in enumerate(searches(store, studies)):
        if sum(t["state"] == "COMPLETE" for t in v["trials"]) < 2:
            continue
        try:
            ostudy = optuna.load_study(study_name=v["optuna_study"], storage=storage(v["storage"]))
        except Exception:  # noqa: BLE001 - the storage moved or is another machine's: the table stays
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's matplotlib backend is marked experimental
            ax = optuna.visualization.matplotlib.plot_param_importances(ostudy)
        fig = ax.figure
        ax.set_title(f"{v['task']} | {v['cell']}: parameter importance (Optuna fANOVA)")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        out[f"search_importance_{i + 1}.png"] = buf.getvalue()
    return out
