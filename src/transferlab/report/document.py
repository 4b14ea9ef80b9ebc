"""Reports read only the store: Markdown and one self-contained HTML page with plots.

Runs are grouped into cells: a study's planned cells (task x arm and grid point, see
transferlab.study), or (study, task, run name) for runs outside a study plan. Each cell
shows its seeds' mean ± std of every final metric, on test when the task has labelled
test data and on dev otherwise; study cells also get the statistics, tests against the
baseline arm, chosen learning rates and figures of report/tables.py, analysis.py and plots.py.
"""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

import numpy as np

from transferlab.report.cells import Cell, cells
from transferlab.store import RunRow, Store


def mean_std(values: np.ndarray) -> str:
    """``mean ± std`` over seeds; one seed has no spread, so it shows the value and n = 1."""
    if len(values) == 0:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f} (n=1)"
    return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"


def summary_table(all_cells: list[Cell]) -> tuple[list[str], list[list[str]]]:
    metrics: list[str] = []
    for c in all_cells:
        for r in c.finished:
            for m in r.summary.get(c.split, {}):
                if m not in metrics:
                    metrics.append(m)
    header = ["study", "task", "arm", "split", "n", "failed", *metrics, "trainable"]
    rows = []
    for c in all_cells:
        failed = sum(r.status in ("failed", "diverged") for r in c.runs)
        share = [r.summary.get("trainable_share") for r in c.finished if r.summary.get("trainable_share")]
        rows.append([c.study, c.task, c.arm, c.split, str(len(c.finished)), str(failed),
                     *[mean_std(c.values(m)) for m in metrics], f"{np.mean(share):.1%}" if share else "-"])
    return header, rows


def seed_table(all_cells: list[Cell]) -> tuple[list[str], list[list[str]]]:
    """One row per run: its cell, seed, status, main metric on the cell's split, steps and uid."""
    header = ["task", "arm", "seed", "status", "metric", "value", "best step", "steps", "uid"]
    rows = []
    for c in all_cells:
        for r in sorted(c.runs, key=lambda r: r.seed):
            value = (r.summary.get(c.split) or {}).get(c.main_metric)
            rows.append([c.task, c.arm, str(r.seed), r.status, f"{c.main_metric} ({c.split})" if c.main_metric else "-",
                         "-" if value is None else f"{value:.4f}", _dash(r.summary.get("best_step")),
                         _dash(r.summary.get("steps") if r.status != "running" else None), r.uid])
    return header, rows


def _dash(value) -> str:
    """A stored number, or "-" where a run has none yet (a run still training has no summary)."""
    return "-" if value is None or (isinstance(value, float) and value != value) else str(value)


def config_diff_table(all_cells: list[Cell]) -> tuple[list[str], list[list[str]]]:
    """The spec fields whose values differ between the cells (one column per cell; seed and name left out)."""
    from transferlab.train.track import flatten

    shown = [c for c in all_cells if c.runs]
    if len(shown) < 2:
        return ["field"], []
    flat = [flatten(c.runs[0].spec) for c in shown]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    differ = [k for k in keys if k not in ("seed", "name") and len({repr(f.get(k)) for f in flat}) > 1]
    header = ["field", *[f"{c.arm} ({c.task})" for c in shown]]  # no "|" in a header cell: one cell per column
    return header, [[k, *["-" if k not in f else _value(f[k]) for f in flat]] for k in differ]


def _value(v) -> str:
    """A spec value as its YAML spelling would read (null, not Python's None)."""
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def _engine_label(r: RunRow) -> str:
    """The engine that trained a run: its typed record (``single``, ``stacked x8``); runs of older
    releases said ``seed_parallel`` in their provenance, or nothing (single)."""
    old = r.provenance.get("engine")
    if isinstance(old, dict) or not old:
        return r.summary.engine.label()
    return "stacked" if old == "seed_parallel" else str(old)


def provenance_table(all_cells: list[Cell]) -> tuple[list[str], list[list[str]]]:
    """Distinct software, hardware and engine of the reported runs, with how many runs each."""
    counts: dict[tuple, int] = {}
    for c in all_cells:
        for r in c.runs:
            p, hw = r.provenance, r.provenance.get("hardware") or {}
            device = hw.get("gpu") or hw.get("cpu") or "-"
            key = (p.get("transferlab") or "-", p.get("torch") or "-", p.get("transformers") or "-",
                   p.get("python") or "-", (p.get("git_commit") or "-")[:12], device, _engine_label(r))
            counts[key] = counts.get(key, 0) + 1
    header = ["transferlab", "torch", "transformers", "python", "git commit", "device", "engine", "runs"]
    return header, [[*map(str, k), str(n)] for k, n in counts.items()]


def md_text(value) -> str:
    """Text from the store (names, errors, fields) made inert in Markdown: a ``<`` that opens a tag escaped
    (a viewer renders raw HTML; ``n < 10`` stays as it is), ``|`` escaped (it would split a table cell),
    line breaks folded."""
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", " ".join(str(value).splitlines())).replace("|", "\\|")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(map(md_text, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(md_text, r)) + " |" for r in rows]
    return "\n".join(lines)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def seed_plot(all_cells: list[Cell]) -> bytes | None:
    """A strip plot: one dot per seed, one column per cell, on each cell's main metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [c for c in all_cells if len(c.values(c.main_metric))]
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(shown)), 3.2))
    rng = np.random.default_rng(0)
    for i, c in enumerate(shown):
        v = c.values(c.main_metric)
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(v)), v, s=18, alpha=0.8)
        ax.hlines(v.mean(), i - 0.25, i + 0.25, color="k")
    ax.set_xticks(range(len(shown)), [f"{c.task}\n{c.arm}" for c in shown], fontsize=8)
    ax.set_ylabel(f"{shown[0].main_metric} ({shown[0].split})")
    ax.set_title("seeds per arm (line: mean)")
    ax.grid(axis="y", alpha=0.3)
    data = _png(fig)
    plt.close(fig)
    return data


def curve_plot(store: Store, all_cells: list[Cell]) -> bytes | None:
    """Training loss per arm: mean across seeds with a min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    drawn = False
    for c in all_cells:
        curves = [np.array(store.curve(r.uid), dtype=float) for r in c.finished]
        curves = [k for k in curves if len(k)]
        if not curves:
            continue
        n = min(len(k) for k in curves)
        steps = curves[0][:n, 0]
        losses = np.stack([k[:n, 1] for k in curves])
        ax.plot(steps, losses.mean(0), label=f"{c.task}/{c.arm}")
        ax.fill_between(steps, losses.min(0), losses.max(0), alpha=0.2)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    data = _png(fig)
    plt.close(fig)
    return data


CONCLUSIONS_NOTE = ("In words, from the tables below. \"Better\" or \"worse\" only where the primary test (paired t "
                    "when the arms share seeds, else Welch's t) has a Holm-adjusted p < 0.05 over all comparisons "
                    "of the report; otherwise \"no difference detected\", with the difference, its 95% CI, the "
                    "power these seeds have for it and the seeds power 0.8 needs. ASO eps_min: < 0.2 dominance, "
                    "0.2-0.5 weak dominance (no claim), above none. Degenerate: runs not above the best constant "
                    "prediction.")


def _sections(store: Store, all_cells: list[Cell], compared: list[dict]
              ) -> list[tuple[str, str, tuple[list[str], list[list[str]]]]]:
    """(title, note, table) of every table section with rows (the conclusions and figures come first)."""
    from transferlab.report import analysis, tables
    from transferlab.report.stats import BCA_MIN_N
    from transferlab.study import search

    studies = list(dict.fromkeys(c.study for c in all_cells if c.study))
    across_header, across_rows, across_note = analysis.across_tasks_table(all_cells)
    sections = [
        ("Runs", "Mean ± std over seeds of every final metric; failed counts failed and diverged runs.",
         summary_table(all_cells)),
        ("Statistics per cell", (f"Main metric. 95% CI of the mean: BCa bootstrap from {BCA_MIN_N} seeds, a t "
         f"interval below (flagged: BCa from a handful of seeds is too narrow). Degenerate: not above the best "
         "constant prediction by the study's margin. Steps: median first dev evaluation reaching the threshold. "
         "Search seeds left out: runs of the LR-search seeds, not counted in n (they chose the LR; "
         "report.exclude_search_seeds, on by default)."), tables.stats_table(store, all_cells)),
        ("Paired comparison against the baseline arm", analysis.paired_note(compared),
         analysis.paired_table(compared)),
        ("Against the baseline arm (independent samples)", ("Two-sided Welch t-test and Mann-Whitney U, seeds "
         "treated as independent; Holm-adjusted over all comparisons of the report. CI of Δ: Welch's t interval "
         "of the difference of means. HL shift: the Hodges-Lehmann estimate (median of all pairwise "
         "differences) with the exact distribution-free interval that inverts the Mann-Whitney test."),
         tables.comparison_table(store, all_cells)),
        ("How many seeds?", ("Power analysis from these runs as a pilot (noncentral t; paired when the arms share "
         "seeds): the sd of the differences, the power the current seeds have for the observed difference, and the "
         "seeds needed for power 0.8 at alpha 0.05. `transferlab plan-seeds` answers for any difference."),
         analysis.planning_table(compared)),
        ("Across tasks", across_note, (across_header, across_rows)),
        ("Prediction churn", ("Share of test examples whose predicted class differs between two seeds of a cell, "
         "averaged over pairs of seeds (from each run's stored test predictions)."),
         analysis.churn_table(store, all_cells)),
        ("Learning rates chosen on validation", ("Per cell, the mean final dev (validation) score of each LR "
         "over the search seeds; the best LR then ran with all seeds."), tables.lr_table(store, studies)),
        ("Hyper-parameter search (Optuna)", ("Per searched cell, the best trials by their objective over the "
         "search seeds' final dev scores (pruned and failed trials counted in the last column); the cell then "
         "ran every seed at the best trial's values. Importance: Optuna's fANOVA, in the figures."),
         search.trials_table(store, studies)),
        ("Expected best score over k seeds", "Dodge et al. (2019), from the empirical distribution of the seeds.",
         tables.expected_max_table(all_cells)),
        ("Expected best score over k seeds, unbiased", ("The U-statistic over all k-subsets of the seeds (Tang et "
         "al. 2020; Dodge et al. 2021), unbiased where the estimate above is biased down at small n; ± jackknife sd."),
         analysis.unbiased_max_table(all_cells)),
        ("Paper-style table", "Mean ± std × 100 of each task's main metric.", tables.paper_table(all_cells)),
        ("Seeds", "Every run of every cell: the main metric on the cell's split.", seed_table(all_cells)),
        ("Configuration differences", "The spec fields that differ between the cells (seed and name aside).",
         config_diff_table(all_cells)),
        ("Provenance", "Versions, device and training engine of the runs (single: one run per process; "
         "stacked xS: S seeds stacked in one process).", provenance_table(all_cells)),
    ]
    return [s for s in sections if s[2][1]]


def _search_plots(store: Store, all_cells: list[Cell]) -> dict[str, bytes]:
    from transferlab.study import search

    studies = list(dict.fromkeys(c.study for c in all_cells if c.study))
    return search.importance_plots(store, studies) if search.searches(store, studies) else {}


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    out = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    out += "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return out + "</table>"


def write_report(store: Store, out: Path, study: str | None = None, *, tost_margin: float | None = None,
                 include_search_seeds: bool | None = None) -> list[Path]:
    """``tost_margin`` overrides the study's report.tost_margin; ``include_search_seeds`` its
    report.exclude_search_seeds (None: as the study says, excluded by default). The page reads top down:
    the conclusions in words, the figures, then the tables they come from."""
    from transferlab.report import plots as study_plots
    from transferlab.report.significance import check_margin

    if tost_margin is not None:
        check_margin(tost_margin, "--tost-margin")
    out.mkdir(parents=True, exist_ok=True)
    all_cells = cells(store, study, include_search_seeds)
    from transferlab.report import analysis

    compared = analysis.comparisons_paired(store, all_cells, tost_margin)
    lines = analysis.conclusions(compared, all_cells)
    sections = _sections(store, all_cells, compared)
    plots = {
        "seeds.png": study_plots.seeds_plot(all_cells) or seed_plot(all_cells),
        "dev_curves.png": study_plots.dev_curve_plot(store, all_cells),
        "loss_curves.png": curve_plot(store, all_cells),
        "lr_schedule.png": study_plots.lr_plot(store, all_cells),
        "expected_max.png": study_plots.expected_max_plot(all_cells),
        **_search_plots(store, all_cells),
    }
    plots = {name: data for name, data in plots.items() if data}
    written = []
    for name, data in plots.items():
        (out / name).write_bytes(data)
        written.append(out / name)
    title = f"transferlab report: {study or store.path.name}"
    (out / "report.md").write_text(_markdown(title, lines, plots, sections), encoding="utf-8")
    (out / "report.html").write_text(_html(title, lines, plots, sections), encoding="utf-8")
    return [*written, out / "report.md", out / "report.html"]


def _markdown(title: str, lines: list[str], plots: dict[str, bytes], sections: list) -> str:
    md = [f"# {md_text(title)}", ""]
    if lines:
        md += ["## Conclusions", "", CONCLUSIONS_NOTE, ""] + [f"- {md_text(line)}" for line in lines] + [""]
    if plots:
        md += ["## Figures", ""] + [f"![{name}]({name})" for name in plots] + [""]
    for name, note, (header, rows) in sections:
        md += [f"## {name}", "", note, "", markdown_table(header, rows), ""]
    return "\n".join(md) + "\n"


def _html(title: str, lines: list[str], plots: dict[str, bytes], sections: list) -> str:
    body = ""
    if lines:
        body += (f"<h2>Conclusions</h2><p class='note'>{html.escape(CONCLUSIONS_NOTE)}</p><ul>"
                 + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>")
    if plots:
        body += "<h2>Figures</h2>" + "".join(
            f'<p><img alt="{n}" src="data:image/png;base64,{base64.b64encode(d).decode()}"></p>'
            for n, d in plots.items())
    body += "".join(f"<h2>{html.escape(name)}</h2><p class='note'>{html.escape(note)}</p>{_html_table(*table)}"
                    for name, note, table in sections)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}.note{color:#555;font-size:90%}"
            "li{margin-bottom:.4em}img{max-width:100%}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{body}</body></html>")
