"""The report's study tables, computed from report cells (``report/cells.py``).

Every table is (header, rows of strings), ready for Markdown and HTML:

    stats_table        per cell: n, diverged, mean ± std, median, min, max, 95% CI, degenerate rate,
                       steps to the threshold
    expected_max_table per cell: expected best score over k seeds, k = 1, 2, 3, 5, 10, 20 (up to n)
    comparison_table   each cell against the baseline arm's cell of the same task and grid point:
                       difference of means, Welch's t and Mann-Whitney U with raw and Holm p-values and
                       a CI of the difference for each (Welch's t interval; the Hodges-Lehmann shift's
                       exact interval, stats.hodges_lehmann)
    lr_table           the learning rate each cell chose on validation, with every LR's score
    paper_table        mean ± std x 100 of the main metric, one row per cell and one column per task
"""

from __future__ import annotations

import math

import numpy as np

from transferlab.data.degenerate import is_degenerate
from transferlab.data.metrics import higher_is_better
from transferlab.report import stats
from transferlab.report.cells import Cell
from transferlab.store import Store
from transferlab.text_table import format_table  # noqa: F401  (re-exported: the report's plain-text tables)

KS = (1, 2, 3, 5, 10, 20)
DEFAULT_MARGIN = 0.01


def _f(x: float | None, digits: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _signed(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:+.4f}"


def _p(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2g}" if x < 0.001 else f"{x:.3f}"


def study_meta(store: Store, study: str) -> dict:
    return store.study_spec(study) or {}


def stats_table(store: Store, cells: list[Cell]) -> tuple[list[str], list[list[str]]]:
    header = ["task", "arm", "split", "metric", "n", "diverged", "mean ± std", "median", "min", "max",
              "95% CI", "degenerate", "steps to threshold", "search seeds left out"]
    rows = []
    for c in cells:
        meta = study_meta(store, c.study)
        margin = meta.get("degenerate_margin", DEFAULT_MARGIN)
        metric, split = c.main_metric, c.split
        d = stats.describe(c.values(metric)) if metric else stats.describe([])
        flags = [is_degenerate(r.summary, split, margin) for r in c.finished]
        flags = [f for f in flags if f is not None]
        degenerate = f"{sum(flags)}/{len(flags)} ({sum(flags) / len(flags):.0%})" if flags else "-"
        diverged = sum(r.status == "diverged" for r in c.runs)
        mean_std = ("-" if d["n"] == 0 else f"{d['mean']:.4f} (n=1)" if d["n"] == 1
                    else f"{d['mean']:.4f} ± {_f(d['std'])}")
        ci = "-" if math.isnan(d["ci_low"]) else f"[{d['ci_low']:.4f}, {d['ci_high']:.4f}]"
        ci += f" (t, n < {stats.BCA_MIN_N})" if d["ci_method"] == "t" and ci != "-" else ""
        excluded = getattr(c, "excluded", [])
        left_out = f"{len(excluded)} (seeds {', '.join(str(r.seed) for r in excluded)})" if excluded else "-"
        rows.append([c.task, c.arm, split, metric or "-", str(d["n"]), str(diverged), mean_std, _f(d["median"]),
                     _f(d["min"]), _f(d["max"]), ci, degenerate, _threshold_cell(store, c, meta.get("threshold")),
                     left_out])
    return header, rows


def _threshold_cell(store: Store, c, threshold: float | None) -> str:
    """Median first dev step at which the main metric reaches ``threshold``, and how many runs did."""
    if threshold is None or not c.finished:
        return "-"
    metric = c.main_metric
    higher = higher_is_better(metric)
    steps = []
    for r in c.finished:
        points = [(s, v) for s, split, m, v in store.evals(r.uid) if split == "dev" and m == metric]
        steps.append(stats.steps_to_threshold(points, threshold, higher))
    reached = [s for s in steps if s is not None]
    median = f"{np.median(reached):.0f}" if reached else "never"
    return f"{median} ({len(reached)}/{len(steps)} reach {threshold:g})"


def expected_max_table(cells: list[Cell]) -> tuple[list[str], list[list[str]]]:
    n_max = max((len(c.values(c.main_metric)) for c in cells if c.main_metric), default=0)
    ks = [k for k in KS if k <= max(1, n_max)]
    header = ["task", "arm", "metric", *[f"k={k}" for k in ks]]
    rows = []
    for c in cells:
        if not c.main_metric:
            continue
        v = c.values(c.main_metric)
        higher = higher_is_better(c.main_metric)
        rows.append([c.task, c.arm, c.main_metric,
                     *[_f(stats.expected_max(v, k, higher)) if 0 < k <= len(v) else "-" for k in ks]])
    return header, rows


def comparisons(store: Store, cells: list[Cell]) -> list[dict]:
    """Each non-baseline cell of a study with a ``baseline`` arm against the baseline cell, Holm-adjusted."""
    out = []
    for c in cells:
        baseline = study_meta(store, c.study).get("baseline")
        if not baseline or not c.study_arm or c.study_arm == baseline:
            continue
        target = baseline + c.arm[len(c.study_arm):]  # the same grid point in the baseline arm
        base = next((b for b in cells if b.study == c.study and b.task == c.task and b.arm == target), None)
        if base is None or not c.main_metric:
            continue
        res = stats.compare(c.values(c.main_metric), base.values(c.main_metric))
        out.append({"study": c.study, "task": c.task, "arm": c.arm, "baseline": base.arm,
                    "metric": c.main_metric, "split": c.split, **res})
    for key in ("t_p", "u_p"):
        adjusted = stats.holm([r[key] for r in out])
        for r, a in zip(out, adjusted):
            r[key + "_holm"] = float(a)
    return out


def _ci(low: float, high: float) -> str:
    return "-" if math.isnan(low) else f"[{low:+.4f}, {high:+.4f}]"


def _hl(r: dict) -> str:
    """The Hodges-Lehmann shift with its interval, and the level it reaches when few seeds cannot give 95%."""
    if math.isnan(r["hl"]):
        return "-"
    level = "" if r["hl_conf"] >= 0.95 - 1e-9 else f" ({r['hl_conf']:.0%}: the most these seeds allow)"
    return f"{r['hl']:+.4f} {_ci(r['hl_low'], r['hl_high'])}{level}"


def comparison_table(store: Store, cells: list[Cell]) -> tuple[list[str], list[list[str]]]:
    header = ["task", "arm", "vs", "metric", "Δ mean", "95% CI of Δ (Welch)", "Welch t", "p", "p (Holm)",
              "HL shift [95% CI]", "Mann-Whitney U", "p", "p (Holm)"]
    rows = [[r["task"], r["arm"], r["baseline"], f"{r['metric']} ({r['split']})", _signed(r["diff"]),
             _ci(r["ci_low"], r["ci_high"]), _f(r["t"], 3), _p(r["t_p"]), _p(r["t_p_holm"]), _hl(r),
             _f(r["u"], 1), _p(r["u_p"]), _p(r["u_p_holm"])]
            for r in comparisons(store, cells)]
    return header, rows


def lr_table(store: Store, studies: list[str]) -> tuple[list[str], list[list[str]]]:
    header = ["study", "task", "cell", "chosen LR", "validation metric", "mean score per LR (runs)"]
    rows = []
    for study in studies:
        for key, v in store.study_values(study).items():
            if key.startswith("lr/"):
                scores = ", ".join(f"{lr:g}: {s:.4f} ({n})" for lr, s, n in v["scores"])
                rows.append([study, v["task"], v["cell"], f"{v['lr']:g}", v["metric"], scores])
    return header, rows


def paper_table(cells: list[Cell]) -> tuple[list[str], list[list[str]]]:
    """Mean ± std x 100 of each task's main metric (on test where the task has one), as papers print it."""
    tasks = list(dict.fromkeys(c.task for c in cells))
    arms = list(dict.fromkeys(c.arm for c in cells))
    by = {(c.task, c.arm): c for c in cells}
    metric = {t: next((c.main_metric for c in cells if c.task == t and c.main_metric), "") for t in tasks}
    header = ["arm", *[f"{t} ({metric[t]})" for t in tasks]]
    rows = []
    for arm in arms:
        row = [arm]
        for t in tasks:
            c = by.get((t, arm))
            v = c.values(metric[t]) * 100 if c is not None and metric[t] else np.array([])
            row.append("-" if len(v) == 0 else f"{v[0]:.1f} (n=1)" if len(v) == 1 else f"{v.mean():.1f} ± {v.std(ddof=1):.1f}")
        rows.append(row)
    return header, rows


