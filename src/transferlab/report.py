"""Reports read only the store: Markdown and one self-contained HTML page with plots.

Runs are grouped into cells by (study, task, arm name); each cell shows its seeds'
mean ± std of every final metric, on test when the task has labelled test data and
on dev otherwise.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transferlab.store import RunRow, Store


@dataclass
class Cell:
    study: str
    task: str
    arm: str
    runs: list[RunRow] = field(default_factory=list)

    @property
    def split(self) -> str:
        return "test" if all(r.summary.get("test") for r in self.finished) and self.finished else "dev"

    @property
    def finished(self) -> list[RunRow]:
        return [r for r in self.runs if r.status == "finished"]

    def values(self, metric: str, split: str | None = None) -> np.ndarray:
        split = split or self.split
        return np.array([r.summary[split][metric] for r in self.finished if metric in r.summary.get(split, {})])

    @property
    def main_metric(self) -> str:
        return self.runs[0].summary.get("main_metric", "") if self.runs else ""


def cells(store: Store, study: str | None = None) -> list[Cell]:
    groups: dict[tuple, Cell] = {}
    for r in store.runs(study=study, latest=True):
        key = (r.study or "", r.spec.get("task", {}).get("name", ""), r.name or "run")
        groups.setdefault(key, Cell(*key)).runs.append(r)
    return list(groups.values())


def mean_std(values: np.ndarray) -> str:
    if len(values) == 0:
        return "-"
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.4f} ± {std:.4f}"


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


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
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


def write_report(store: Store, out: Path, study: str | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    all_cells = cells(store, study)
    header, rows = summary_table(all_cells)
    plots = {"seeds.png": seed_plot(all_cells), "loss_curves.png": curve_plot(store, all_cells)}
    written = []
    for name, data in plots.items():
        if data:
            (out / name).write_bytes(data)
            written.append(out / name)
    title = f"transferlab report: {study or store.path.name}"
    md = [f"# {title}", "", markdown_table(header, rows), ""]
    md += [f"![{name}]({name})" for name, data in plots.items() if data]
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    written.append(out / "report.md")
    table_html = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    table_html += "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    table_html += "</table>"
    imgs = "".join(f'<p><img alt="{n}" src="data:image/png;base64,{base64.b64encode(d).decode()}"></p>'
                   for n, d in plots.items() if d)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{table_html}{imgs}</body></html>")
    (out / "report.html").write_text(page, encoding="utf-8")
    written.append(out / "report.html")
    return written

