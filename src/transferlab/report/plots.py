"""The report's study figures (matplotlib, Agg): each function returns PNG bytes, or None if empty.

    seeds_plot          box plot with every seed as a dot, per cell, one panel per task
    dev_curve_plot      validation (dev) main metric against step: mean and ±1 std band across seeds
                        (with markers, so a single evaluation shows)
    lr_plot             the learning-rate schedule of each cell at every step (from the spec's schedule),
                        with the stored (logged) points as dots
    expected_max_plot   expected best score over k seeds (Dodge et al. 2019) against k
"""

from __future__ import annotations

import io

import numpy as np

from transferlab.data.metrics import higher_is_better
from transferlab.report.cells import Cell
from transferlab.report.stats import expected_max
from transferlab.store import Store


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _by_task(cells: list[Cell]) -> dict[str, list]:
    out: dict[str, list] = {}
    for c in cells:
        out.setdefault(c.task, []).append(c)
    return out


def _panels(n: int, width: float = 5.0, height: float = 3.2):
    plt = _plt()
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, list(axes[0])


def seeds_plot(cells: list[Cell]) -> bytes | None:
    tasks = {t: [c for c in cs if len(c.values(c.main_metric))] for t, cs in _by_task(cells).items()}
    tasks = {t: cs for t, cs in tasks.items() if cs}
    if not tasks:
        return None
    fig, axes = _panels(len(tasks), width=max(4.0, 1.2 * max(len(cs) for cs in tasks.values())))
    rng = np.random.default_rng(0)
    for ax, (task, cs) in zip(axes, tasks.items()):
        data = [c.values(c.main_metric) for c in cs]
        ax.boxplot(data, positions=range(len(cs)), widths=0.5, showfliers=False)
        for i, v in enumerate(data):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(v)), v, s=16, alpha=0.75, zorder=3)
        ax.set_xticks(range(len(cs)), [c.arm for c in cs], rotation=20, ha="right", fontsize=8)
        ax.set_title(task, fontsize=9)
        ax.set_ylabel(f"{cs[0].main_metric} ({cs[0].split})")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("seeds per arm (box: quartiles; dots: seeds)", fontsize=10)
    return _png(fig)


def _curves(c, column) -> tuple[np.ndarray, np.ndarray] | None:
    """Steps and a (runs, steps) array of ``column(run)`` points, cut to the shortest run."""
    series = [np.array(column(r), dtype=float) for r in c.finished]
    series = [s for s in series if len(s)]
    if not series:
        return None
    n = min(len(s) for s in series)
    return series[0][:n, 0], np.stack([s[:n, 1] for s in series])


def dev_curve_plot(store: Store, cells: list[Cell]) -> bytes | None:
    tasks = _by_task([c for c in cells if c.main_metric])
    if not tasks:
        return None
    fig, axes = _panels(len(tasks))
    drawn = False
    for ax, (task, cs) in zip(axes, tasks.items()):
        for c in cs:
            m = c.main_metric
            got = _curves(c, lambda r, m=m: [(s, v) for s, sp, mm, v in store.evals(r.uid)
                                                  if sp == "dev" and mm == m])
            if got is None:
                continue
            steps, values = got
            mean, std = values.mean(0), values.std(0)
            ax.plot(steps, mean, marker="o", ms=4, label=c.arm)  # markers: one evaluation is still a point
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
            drawn = True
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(f"{cs[0].main_metric} (dev)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a task whose runs have no evaluation yet has no line
            ax.legend(fontsize=7)
    if not drawn:
        _plt().close(fig)
        return None
    fig.suptitle("validation metric: mean ± 1 std across seeds", fontsize=10)
    return _png(fig)


def lr_schedule(spec: dict, total: int) -> np.ndarray:
    """The learning rate of every optimizer step 1..total (the largest group's, as the curve stores it),
    computed from the spec's schedule, so warmup shows even when only every log_every-th step was logged."""
    import torch

    from transferlab.recipes.schedules import build_schedule
    from transferlab.spec import spec_from_dict

    run = spec_from_dict(spec)
    base = max(run.optim.lr, run.optim.head_lr or 0.0)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    schedule = build_schedule(optimizer, run.schedule, total)
    lrs = []
    for _ in range(total):
        lrs.append(schedule.get_last_lr()[0])  # the LR step s trains with, as the loop logs it
        optimizer.step()
        schedule.step()
    return np.array(lrs)


def lr_plot(store: Store, cells: list[Cell]) -> bytes | None:
    fig, axes = _panels(1, width=6.0)
    ax = axes[0]
    drawn = False
    for c in cells:
        run = next((r for r in c.finished if r.summary.get("total_steps")), None)
        if run is None:
            continue
        lrs = lr_schedule(run.spec, int(run.summary["total_steps"]))
        line, = ax.plot(np.arange(1, len(lrs) + 1), lrs, label=f"{c.task} | {c.arm}")
        logged = np.array([(s, lr) for s, _, lr, _ in store.curve(run.uid)], dtype=float).reshape(-1, 2)
        if len(logged):
            ax.plot(logged[:, 0], logged[:, 1], "o", ms=3, color=line.get_color())  # the stored points
        drawn = True
    if not drawn:
        _plt().close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate (largest group)")
    ax.set_title("learning-rate schedule (line: every step; dots: logged)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def expected_max_plot(cells: list[Cell]) -> bytes | None:
    from matplotlib.ticker import MaxNLocator

    tasks = {t: [c for c in cs if len(c.values(c.main_metric)) > 1] for t, cs in _by_task(cells).items()}
    tasks = {t: cs for t, cs in tasks.items() if cs}
    if not tasks:
        return None
    fig, axes = _panels(len(tasks))
    for ax, (task, cs) in zip(axes, tasks.items()):
        for c in cs:
            v = c.values(c.main_metric)
            ks = np.arange(1, len(v) + 1)
            higher = higher_is_better(c.main_metric)
            ax.plot(ks, [expected_max(v, k, higher) for k in ks], marker="o", ms=3, label=c.arm)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("k (seeds)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # k counts seeds: no 1.5
        ax.set_ylabel(f"expected best {cs[0].main_metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("expected best score over k seeds (Dodge et al. 2019)", fontsize=10)
    return _png(fig)
