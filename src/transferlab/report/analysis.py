"""The report's inference sections, computed from report cells (``report/cells.py``).

    comparisons_paired  each cell against its baseline cell: paired t + Wilcoxon when the two cells
                        share >= 2 seeds (same few-sample draw and data order per seed), else Welch +
                        Mann-Whitney; CI of the mean difference, ASO eps_min, TOST when a margin is given
    paired_table        the above, Holm-adjusted over the report
    planning_table      seeds needed for the observed difference (and for the TOST margin) at power 0.8
    unbiased_max_table  unbiased expected best of k seeds ± jackknife sd (Tang et al. 2020)
    across_tasks_table  mean rank, IQM, Friedman and the Nemenyi critical difference (>= 2 tasks)
    churn_table         share of test predictions that change between two seeds of a cell
    conclusions         the comparisons in words

Every table is (header, rows of strings), like report/tables.py.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np

from transferlab.data.degenerate import is_degenerate
from transferlab.data.metrics import higher_is_better
from transferlab.errors import UserError
from transferlab.models.artifacts import load_predictions
from transferlab.report import significance as sig
from transferlab.report import stats
from transferlab.report.cells import Cell
from transferlab.report.tables import DEFAULT_MARGIN, KS, _f, _p, _signed, study_meta
from transferlab.store import Store


def seed_scores(cell, metric: str) -> dict[int, float]:
    split = cell.split
    return {r.seed: float(r.summary[split][metric]) for r in cell.finished if metric in r.summary.get(split, {})}


def baseline_pairs(store: Store, cells: list[Cell]) -> list[tuple]:
    """(cell, baseline cell) for each non-baseline cell of a study with a ``baseline`` arm."""
    out = []
    for c in cells:
        baseline = study_meta(store, c.study).get("baseline")
        if not baseline or not c.study_arm or c.study_arm == baseline or not c.main_metric:
            continue
        target = baseline + c.arm[len(c.study_arm):]  # the same grid point in the baseline arm
        base = next((b for b in cells if b.study == c.study and b.task == c.task and b.arm == target), None)
        if base is not None:
            out.append((c, base))
    return out


def tost_margin(store: Store, study: str, override: float | None) -> float | None:
    return override if override is not None else (study_meta(store, study).get("report") or {}).get("tost_margin")


def degenerate_count(store: Store, cell: Cell) -> tuple[int, int]:
    """(degenerate runs, runs with a verdict) of a cell's finished runs, at its study's degenerate_margin."""
    margin = study_meta(store, cell.study).get("degenerate_margin", DEFAULT_MARGIN)
    flags = [is_degenerate(r.summary, cell.split, margin) for r in cell.finished]
    flags = [f for f in flags if f is not None]
    return sum(flags), len(flags)


def _test(x: np.ndarray, y: np.ndarray, is_paired: bool) -> dict:
    """The primary test (paired t, else Welch's t) with its CI of Δ, and the rank test's p."""
    if is_paired:
        r = sig.paired(x, y)
        return {"test": "paired t", "t_p": r["t_p"], "r_p": r["w_p"], "ci_low": r["ci_low"], "ci_high": r["ci_high"]}
    r = stats.compare(x, y)
    return {"test": "Welch t", "t_p": r["t_p"], "r_p": r["u_p"], "ci_low": r["ci_low"], "ci_high": r["ci_high"]}


def _power(x: np.ndarray, y: np.ndarray, diff: float, is_paired: bool) -> dict:
    """Power of the primary test for the observed Δ with these seeds, and the seeds power 0.8 needs."""
    if len(x) < 2 or len(y) < 2 or math.isnan(diff) or diff == 0:
        return {"power": math.nan, "seeds_needed": None}
    plan = sig.plan_seeds(x, y, abs(diff), paired=is_paired)
    return {"power": plan["power_now"], "seeds_needed": plan["seeds"]}


def comparisons_paired(store: Store, cells: list[Cell], margin: float | None = None, seed: int = 0) -> list[dict]:
    """Each cell against its baseline cell: paired when they share >= 2 seeds, else independent samples."""
    pairs = baseline_pairs(store, cells)
    out = []
    for c, base in pairs:
        metric = c.main_metric
        higher = higher_is_better(metric)
        a, b = seed_scores(c, metric), seed_scores(base, metric)
        common = sig.shared_seeds(a, b)
        is_paired = len(common) >= 2
        x = np.array([a[s] for s in common] if is_paired else list(a.values()))
        y = np.array([b[s] for s in common] if is_paired else list(b.values()))
        diff = float(x.mean() - y.mean()) if len(x) and len(y) else math.nan
        sign = 1 if higher else -1  # ASO asks "is A better": flip errors
        # ASO compares two distributions: one seed per arm has none (eps_min would read 0 or 1)
        eps = sig.aso(sign * x, sign * y, num_comparisons=len(pairs), seed=seed) if min(len(x), len(y)) >= 2 else math.nan
        m = tost_margin(store, c.study, margin)
        row = {"study": c.study, "task": c.task, "arm": c.arm, "study_arm": c.study_arm, "baseline": base.arm,
               "metric": metric, "split": c.split, "paired": is_paired, "n_a": len(x), "n_b": len(y),
               "diff": diff, "aso": eps, "margin": m, "higher": higher, "x": x, "y": y,
               "degenerate_a": degenerate_count(store, c), "degenerate_b": degenerate_count(store, base),
               **_test(x, y, is_paired), **_power(x, y, diff, is_paired)}
        if m is not None:
            row["tost"] = sig.tost(x, y, m, paired=is_paired)
        out.append(row)
    for key in ("t_p", "r_p"):
        for r, adj in zip(out, stats.holm([r[key] for r in out])):
            r[key + "_holm"] = float(adj)
    for r in out:  # the primary test, as significance.sentence reads it
        r["p"], r["p_holm"] = r["t_p"], r["t_p_holm"]
    return out


def paired_note(rows: list[dict]) -> str:
    n_paired = sum(r["paired"] for r in rows)
    if n_paired == len(rows):
        how = ("The arms share seeds (the same few-sample draw and data order per seed), so every comparison is "
               "PAIRED: paired t test and Wilcoxon signed-rank on the per-seed differences, t CI of the mean "
               "difference.")
    elif n_paired == 0:
        how = ("The arms share no seeds: independent samples (Welch t test, Mann-Whitney U); the CI of Δ is "
               "Welch's t interval.")
    else:
        how = (f"{n_paired} of {len(rows)} comparisons share seeds and are paired (paired t, Wilcoxon); the rest "
               "are independent (Welch, Mann-Whitney; Welch's t interval of Δ).")
    return (how + " p (Holm): adjusted over all comparisons of the report. ASO: eps_min of Almost Stochastic "
            "Order (Dror et al. 2019; Bonferroni over the comparisons): < 0.2 the arm almost stochastically "
            "dominates the baseline, 0.2-0.5 weak dominance (no claim), 0.5 and above none. TOST: equivalence within ± the study's report.tost_margin.")


def paired_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["task", "arm", "vs", "metric", "test", "Δ mean", "95% CI of Δ", "t p", "t p (Holm)",
              "rank p", "rank p (Holm)", "ASO eps_min", "TOST"]
    out = []
    for r in rows:
        test = f"paired, {r['n_a']} seeds" if r["paired"] else f"independent, {r['n_a']} vs {r['n_b']}"
        ci = "-" if math.isnan(r["ci_low"]) else f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]"
        tost = "-"
        if "tost" in r:
            t = r["tost"]
            tost = f"±{r['margin']:g}: p {_p(t['p'])} ({'equivalent' if t['equivalent'] else 'not shown equivalent'})"
        out.append([r["task"], r["arm"], r["baseline"], f"{r['metric']} ({r['split']})", test, _signed(r["diff"]),
                    ci, _p(r["t_p"]), _p(r["t_p_holm"]), _p(r["r_p"]), _p(r["r_p_holm"]), _f(r["aso"], 3), tost])
    return header, out


def planning_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["task", "arm", "vs", "seeds now", "sd", "Δ observed (abs)", "power now",
              "seeds for that Δ (power 0.8)", "seeds for Δ = margin"]
    out = []
    for r in rows:
        if len(r["x"]) < 2 or len(r["y"]) < 2 or r["diff"] == 0 or math.isnan(r["diff"]):
            continue
        plan = sig.plan_seeds(r["x"], r["y"], abs(r["diff"]), paired=r["paired"])
        at_margin = "-"
        if r["margin"]:
            n = sig.plan_seeds(r["x"], r["y"], r["margin"], paired=r["paired"])["seeds"]
            at_margin = f"{n} (Δ = {r['margin']:g})" if n else "> 100000"
        needed = plan["seeds"]
        out.append([r["task"], r["arm"], r["baseline"], str(len(r["x"])), f"{plan['sd']:.4f}", f"{abs(r['diff']):.4f}",
                    f"{plan['power_now']:.2f}", str(needed) if needed else "> 100000", at_margin])
    return header, out


def unbiased_max_table(cells: list[Cell]) -> tuple[list[str], list[list[str]]]:
    n_max = max((len(c.values(c.main_metric)) for c in cells if c.main_metric), default=0)
    ks = [k for k in KS if k <= n_max]
    header = ["task", "arm", "metric", *[f"k={k}" for k in ks]]
    rows = []
    for c in cells:
        if not c.main_metric:
            continue
        v, higher = c.values(c.main_metric), higher_is_better(c.main_metric)
        cols = []
        for k in ks:
            mean = sig.expected_max_unbiased(v, k, higher)
            var = sig.expected_max_variance(v, k, higher)
            cols.append("-" if math.isnan(mean) else _f(mean) + ("" if math.isnan(var) else f" ± {math.sqrt(var):.4f}"))
        rows.append([c.task, c.arm, c.main_metric, *cols])
    return header, rows


def across_tasks(cells: list[Cell]) -> dict[str, dict]:
    """Per study with >= 2 tasks: significance.aggregate over its arms (grid points are arms here)."""
    by_study: dict[str, dict] = defaultdict(lambda: defaultdict(dict))
    metric: dict[str, str] = {}
    for c in cells:
        if c.study and c.main_metric:
            by_study[c.study][c.arm][c.task] = c.values(c.main_metric)
            metric[c.study] = c.main_metric
    out = {}
    for study, table in by_study.items():
        tasks = {t for arm in table.values() for t in arm}
        if len(tasks) >= 2 and len(table) >= 2:
            out[study] = sig.aggregate(table, higher_is_better(metric[study]))
    return out


def across_tasks_table(cells: list[Cell]) -> tuple[list[str], list[list[str]], str]:
    header = ["study", "arm", "mean rank", "IQM (all runs)", "tasks"]
    rows, notes = [], []
    for study, agg in across_tasks(cells).items():
        for arm in sorted(agg["arms"], key=lambda a: agg["mean_rank"][a]):
            rows.append([study, arm, f"{agg['mean_rank'][arm]:.2f}", _f(agg["iqm"][arm]), str(len(agg["tasks"]))])
        fried = (f"Friedman chi2 {agg['friedman']:.2f}, p {_p(agg['friedman_p'])}" if not math.isnan(agg["friedman_p"])
                 else "Friedman: needs >= 3 arms")
        notes.append(f"{study}: {fried}; Nemenyi critical difference of mean ranks (alpha 0.05) {agg['cd']:.2f}.")
    note = ("Mean rank of each arm's task means (1 = best); IQM: 25% trimmed mean of all runs (Agarwal et al. "
            "2021; meaningful when the tasks share a metric scale). " + " ".join(notes))
    return header, rows, note


def churn_table(store: Store, cells: list[Cell]) -> tuple[list[str], list[list[str]]]:
    header = ["task", "arm", "runs with stored test predictions", "churn"]
    rows = []
    for c in cells:
        preds = [load_predictions(store.artifact_dir(r.uid), "test") for r in c.finished]
        preds = [p for p in preds if p is not None and p.dtype.kind in "iu"]  # classes only, not regression
        if len(preds) >= 2 and len({p.shape for p in preds}) == 1:
            rows.append([c.task, c.arm, str(len(preds)), f"{sig.churn(preds):.1%}"])
    return header, rows


def conclusions(rows: list[dict], cells: list[Cell], alpha: float = sig.ALPHA) -> list[str]:
    """One sentence per comparison (significance.sentence), and per arm compared on several tasks or grid
    points, the count of its verdicts; then the LR-search seeds left out."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["study"], r["arm"][len(r["study_arm"]):], r["study_arm"], r["baseline"])].append(r)
    lines = []
    for (study, point, arm, base), rs in groups.items():
        if len(rs) > 1:
            per_task = [{"diff": r["diff"], "p_holm": r["p_holm"], "degenerate_a": r["degenerate_a"],
                         "degenerate_b": r["degenerate_b"]} for r in rs]
            line = sig.conclusion(arm + point, base, per_task, rs[0]["higher"], alpha)
            lines.append(f"{study}: {line} ({rs[0]['test']} test).")
        lines += [f"{study}: {sig.sentence(r, alpha)}." for r in rs]
    for c in cells:  # a report made while the study runs: cells with nothing to compare yet
        if c.study and c.runs and not c.finished:
            states = ", ".join(f"{n} {s}" for s, n in sorted(Counter(r.status for r in c.runs).items()))
            lines.append(f"{c.study}: {c.arm} on {c.task}: no finished run yet ({states}).")
    left_out = defaultdict(set)
    for c in cells:
        left_out[c.study].update(r.seed for r in c.excluded)
    for study, seeds in left_out.items():
        if seeds:
            lines.append(f"{study}: the LR-search seeds {sorted(seeds)} are left out of every reported cell "
                         "(they chose the LR, so they bias the cells upward); --include-search-seeds keeps them.")
    return lines


def plan_rows(store: Store, cells: list[Cell], study: str, delta: float, alpha: float = sig.ALPHA,
              target: float = sig.POWER) -> list[list[str]]:
    """``transferlab plan-seeds``: per comparison with the baseline (paired when the arms share seeds), or
    per cell when the study has no baseline (two arms with this cell's sd), the seeds needed to detect
    ``delta`` at power ``target``. Raises UserError for delta <= 0 or fewer than 2 pilot seeds."""
    if not delta > 0:
        raise UserError(f"--delta: the difference to detect must be > 0, got {delta}")
    if not any(c.study == study for c in cells):
        known = ", ".join(s for s, _, _ in store.studies()) or "(none)"
        raise UserError(f"--study: no finished cells of study {study!r} in {store.path}; studies: {known}")
    pairs = baseline_pairs(store, [c for c in cells if c.study == study])
    rows = []
    if pairs:
        for c, base in pairs:
            a, b = seed_scores(c, c.main_metric), seed_scores(base, base.main_metric)
            common = sig.shared_seeds(a, b)
            is_paired = len(common) >= 2
            x = [a[s] for s in common] if is_paired else list(a.values())
            y = [b[s] for s in common] if is_paired else list(b.values())
            p = sig.plan_seeds(x, y, delta, alpha, target, paired=is_paired)
            rows.append([c.task, c.arm, base.arm, "paired" if is_paired else "two-sample", str(len(x)),
                         f"{p['sd']:.4f}", f"{p['d']:.2f}", f"{p['power_now']:.2f}", str(p["seeds"] or "> 100000")])
    else:
        for c in cells:
            if c.study != study or not c.main_metric:
                continue
            p = sig.plan_seeds(c.values(c.main_metric), None, delta, alpha, target)
            rows.append([c.task, c.arm, "(another arm like it)", "two-sample", str(p["pilot_n"]), f"{p['sd']:.4f}",
                         f"{p['d']:.2f}", f"{p['power_now']:.2f}", str(p["seeds"] or "> 100000")])
    return rows


PLAN_HEADER = ["task", "arm", "vs", "test", "pilot seeds", "sd", "d = delta / sd", "power now", "seeds needed"]
