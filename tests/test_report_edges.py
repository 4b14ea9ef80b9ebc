"""Report edges: only one recipe pools as seeds; per-seed, config-diff and provenance tables; n = 1 shown
without a spread; a single evaluation is visible; the LR plot has every step; k ticks are integers; the
conclusions for significant, not significant and degenerate comparisons; the CI of Δ of unpaired tests; a
report made while runs train; figures before tables."""

import io
import re

import numpy as np
import pytest
from conftest import tiny_spec_dict, write_sentiment_csv
from PIL import Image
from scipy import stats as sps

from transferlab.report import cells, plots, write_report
from transferlab.report import significance as sig
from transferlab.spec import load_spec
from transferlab.store import Store
from transferlab.train.loop import run

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def adhoc(tmp_path_factory):
    """Runs named 'tiny': seeds 0 and 1 at lr 3e-3, and one seed at lr 1e-3 (another recipe, same name)."""
    import torch

    tmp = tmp_path_factory.mktemp("edges")
    data = write_sentiment_csv(tmp / "toy", n_train=48, n_dev=32)
    store = Store(tmp / "s.db")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for lr, seed in ((3e-3, 0), (3e-3, 1), (1e-3, 0)):
            d = tiny_spec_dict(data, max_steps=9, num_evals=1, log_every=4, save_model=False)
            d["optim"]["lr"] = lr
            d["schedule"] = {"name": "linear", "warmup_steps": 3}
            run(load_spec(d, {"seed": seed}), store, progress=False)
    finally:
        torch.set_num_threads(before)
    out = tmp / "report"
    write_report(store, out)
    return store, out, (out / "report.md").read_text()


def test_only_runs_of_one_recipe_pool(adhoc):
    store, _, md = adhoc
    by_arm = {c.arm: c for c in cells(store)}
    assert len(by_arm) == 2
    sizes = sorted(len(c.runs) for c in by_arm.values())
    assert sizes == [1, 2]
    for c in by_arm.values():
        assert len({r.spec["optim"]["lr"] for r in c.runs}) == 1  # never two recipes in one cell


def test_seed_config_diff_and_provenance_tables(adhoc):
    store, _, md = adhoc
    assert "## Seeds" in md and "## Configuration differences" in md and "## Provenance" in md
    seeds = md.split("## Seeds", 1)[1].split("##", 1)[0]
    assert seeds.count("| finished |") == 3
    diff = md.split("## Configuration differences", 1)[1].split("##", 1)[0]
    assert "| optim.lr | 0.003 | 0.001 |" in diff or "| optim.lr | 0.001 | 0.003 |" in diff
    assert "seed" not in diff.split("|---|")[1]  # the seed is not a configuration difference
    import torch

    prov = md.split("## Provenance", 1)[1].split("##", 1)[0]
    assert f"| {torch.__version__} |" in prov and "| single | 3 |" in prov


def test_one_seed_shows_no_spread(adhoc):
    store, _, md = adhoc
    (one,) = [c.arm for c in cells(store) if len(c.runs) == 1]
    single = [line for line in md.splitlines() if f"| {one} | dev |" in line]  # its Runs and Statistics rows
    assert single and all("(n=1)" in line and "±" not in line for line in single)
    assert "± -" not in md


def _blue_pixels(png: bytes) -> int:
    """Pixels of matplotlib's first colour (C0, tab:blue 31,119,180) in a PNG."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=int)
    return int(((abs(rgb[..., 0] - 31) < 40) & (abs(rgb[..., 1] - 119) < 40) & (rgb[..., 2] > 140)).sum())


def test_a_single_evaluation_is_visible_on_the_dev_curve(adhoc):
    store, out, _ = adhoc
    (c, *_) = [c for c in cells(store) if len(c.runs) == 2]
    assert {s for r in c.finished for s, split, *_ in store.evals(r.uid) if split == "dev"} == {9}  # one
    assert _blue_pixels(plots.dev_curve_plot(store, [c])) > 10


def test_lr_plot_has_every_step_with_the_warmup(adhoc):
    store, _, _ = adhoc
    r = store.runs()[0]
    lrs = plots.lr_schedule(r.spec, r.summary["total_steps"])
    assert len(lrs) == 9
    assert lrs[0] == 0.0 and lrs[1] < lrs[2] and lrs[3] == pytest.approx(3e-3)  # 3 warmup steps, then decay
    assert np.all(np.diff(lrs[3:]) < 0)
    for step, _, lr, _ in store.curve(r.uid):  # the loop's logged LRs are the schedule's
        assert lrs[step - 1] == pytest.approx(lr)


def test_expected_max_ticks_are_integers(adhoc, monkeypatch):
    store, _, _ = adhoc
    figures = []
    monkeypatch.setattr(plots, "_png", lambda fig: figures.append(fig) or b"png")
    (c, *_) = [c for c in cells(store) if len(c.runs) == 2]
    assert plots.expected_max_plot([c]) == b"png"
    ticks = figures[0].axes[0].get_xticks()
    lo, hi = figures[0].axes[0].get_xlim()
    shown = [t for t in ticks if lo <= t <= hi]
    assert shown and all(float(t).is_integer() for t in shown)


# ----------------------------------------------------------------------------- conclusions from stored runs
# Studies written straight into a store (no training): each arm's per-seed test accuracies are given, so the
# significant, not significant, degenerate and still-running cases are fixtures with known statistics.


def _study_store(path, name: str, scores: dict[str, list], baseline: str, constant: float = 0.5,
                 running: dict[str, list[int]] | None = None, first_seed: dict[str, int] | None = None):
    """A study of ``scores[arm]`` (test accuracy per seed, seeds from ``first_seed[arm]`` or 0; a seed listed in
    ``running[arm]`` is still training, with no summary) whose task's constant prediction scores ``constant``."""
    from transferlab.records import RunSummary

    store = Store(path)
    store.register_study(name, "h-" + name, {"study": name, "baseline": baseline, "degenerate_margin": 0.01})
    plan = []
    for arm, values in scores.items():
        for seed, value in enumerate(values, (first_seed or {}).get(arm, 0)):
            run_id = f"{name}-{arm}-s{seed}"
            plan.append(("main", run_id, "rte", arm, arm, seed, None))
            spec = {"task": {"name": "rte"}, "optim": {"name": arm, "lr": 2e-5},
                    "train": {"max_steps": None if arm == baseline else 100}, "seed": seed}
            uid = store.start_run(run_id, f"{name}-{arm}", seed, spec, name=arm, study=name)
            if seed in (running or {}).get(arm, []):
                continue
            summary = {"main_metric": "accuracy", "steps": 100, "best_step": 50,
                       "dev": {"accuracy": value}, "test": {"accuracy": value},
                       "baselines": {"dev": {"accuracy": constant}, "test": {"accuracy": constant}}}
            store.finish_run(uid, "finished", summary=RunSummary.from_dict(summary), duration_s=1.0)
    store.plan_runs(name, plan)
    return store


def _conclusion(md: str, arm: str) -> str:
    return next(line for line in md.split("## Conclusions", 1)[1].splitlines() if line.startswith(f"- cmp: {arm} vs"))


def test_significant_difference_is_called_better(tmp_path):
    store = _study_store(tmp_path / "s.db", "cmp", {"base": [0.60, 0.62, 0.61, 0.63, 0.59],
                                                    "new": [0.70, 0.73, 0.70, 0.74, 0.69]}, "base")
    write_report(store, tmp_path / "r", study="cmp")
    line = _conclusion((tmp_path / "r" / "report.md").read_text(), "new")
    p = sig.paired([0.70, 0.73, 0.70, 0.74, 0.69], [0.60, 0.62, 0.61, 0.63, 0.59])
    assert p["t_p"] < 0.01
    assert "new is better than base (Δ +0.1020" in line and "paired t p" in line
    assert f"95% CI [{p['ci_low']:+.4f}, {p['ci_high']:+.4f}]" in line
    assert "no difference" not in line and "degenerate" not in line


def test_not_significant_says_no_difference_with_power_and_seeds_needed(tmp_path):
    """The issue's over-read: Δ +0.016 with paired p 0.11 was "reinit-top2 beats no-reinit"."""
    base = [0.600, 0.640, 0.610, 0.650]
    new = [0.640, 0.642, 0.628, 0.654]
    store = _study_store(tmp_path / "s.db", "cmp", {"no-reinit": base, "reinit-top2": new}, "no-reinit")
    write_report(store, tmp_path / "r", study="cmp")
    line = _conclusion((tmp_path / "r" / "report.md").read_text(), "reinit-top2")
    p = sig.paired(new, base)
    assert 0.05 < p["t_p"] < 0.2 and p["diff"] == pytest.approx(0.016)
    plan = sig.plan_seeds(new, base, abs(p["diff"]), paired=True)
    assert f"no difference detected (Δ +0.0160, 95% CI [{p['ci_low']:+.4f}, {p['ci_high']:+.4f}]" in line
    assert f"power {plan['power_now']:.2f} for this Δ" in line and f"{plan['seeds']} seeds needed for power 0.8" in line
    assert "better" not in line and "beats" not in line


def test_both_arms_degenerate_is_no_conclusion(tmp_path):
    """The issue's over-read: "bertadam beats adam" with both arms 4/4 degenerate."""
    store = _study_store(tmp_path / "s.db", "cmp", {"adam": [0.50, 0.50, 0.50, 0.50],
                                                    "bertadam": [0.505, 0.505, 0.505, 0.505]}, "adam")
    write_report(store, tmp_path / "r", study="cmp")
    md = (tmp_path / "r" / "report.md").read_text()
    line = _conclusion(md, "bertadam")
    assert "both arms are degenerate (4/4 and 4/4 runs not above the constant prediction): no conclusion" in line
    assert "better" not in line and "beats" not in line
    assert "| rte | bertadam | test | accuracy | 4 |" in md and "| 4/4 (100%) |" in md


def test_one_degenerate_arm_is_flagged_in_the_sentence(tmp_path):
    store = _study_store(tmp_path / "s.db", "cmp", {"adam": [0.70, 0.72, 0.71, 0.69],
                                                    "bertadam": [0.50, 0.50, 0.62, 0.50]}, "adam")
    write_report(store, tmp_path / "r", study="cmp")
    line = _conclusion((tmp_path / "r" / "report.md").read_text(), "bertadam")
    assert line.endswith("; degenerate runs: bertadam 3/4.") and "better" not in line


def test_unpaired_comparison_has_a_ci_of_the_difference(tmp_path):
    """Arms without shared seeds: Welch's t interval of Δ, and the Hodges-Lehmann shift's exact interval."""
    from transferlab.report import stats

    a, b = [0.71, 0.74, 0.70, 0.73, 0.75], [0.60, 0.63, 0.61]
    store = _study_store(tmp_path / "s.db", "cmp", {"base": b, "new": a}, "base", first_seed={"base": 10})
    write_report(store, tmp_path / "r", study="cmp")
    md = (tmp_path / "r" / "report.md").read_text()
    res = stats.compare(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((ref.low, ref.high))
    welch = f"[{res['ci_low']:+.4f}, {res['ci_high']:+.4f}]"
    hl = f"{res['hl']:+.4f} [{res['hl_low']:+.4f}, {res['hl_high']:+.4f}]"
    row = next(x for x in md.split("## Against the baseline arm (independent samples)")[1].splitlines()
               if x.startswith("| rte | new | base |"))
    assert welch in row and hl in row and res["hl_conf"] >= 0.95
    line = _conclusion(md, "new")
    assert "(accuracy, test, 5 vs 3 seeds)" in line and "Welch t p" in line and welch in line


def _md_tables(md: str) -> list[list[str]]:
    tables, current = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def test_live_report_has_no_none_or_nan_and_tables_keep_their_columns(tmp_path):
    """A report made while a study runs: some runs still training (no summary), one arm without any
    finished run yet. Nothing prints None or nan; every Markdown table row has as many cells as its
    header (the configuration differences once had 5 header cells over 3 columns)."""
    scores = {"adam": [0.60, 0.62, 0.61], "bertadam": [0.65, 0.66, 0.64], "lamb": [0.7, 0.7]}
    store = _study_store(tmp_path / "s.db", "cmp", scores, "adam",
                         running={"adam": [2], "bertadam": [0], "lamb": [0, 1]})
    assert [r.status for r in store.runs() if r.name == "lamb"] == ["running", "running"]
    written = write_report(store, tmp_path / "r", study="cmp")
    md = (tmp_path / "r" / "report.md").read_text()
    page = (tmp_path / "r" / "report.html").read_text()
    for text in (md, page):
        assert not re.search(r"\bNone\b|\bnan\b|\bNaN\b", text)
    assert "- cmp: lamb on rte: no finished run yet (2 running)." in md
    assert "| rte | lamb | dev | - | 0 |" in md  # no metric yet: a dash, not an empty or None cell
    assert "| rte | bertadam | 0 | running |" in md and "| rte | bertadam | test | accuracy | 2 |" in md
    diff = md.split("## Configuration differences", 1)[1]
    assert "| field | adam (rte) | bertadam (rte) | lamb (rte) |" in diff and "| train.max_steps | null | 100 | 100 |" in diff
    for table in _md_tables(md):
        widths = {len(re.split(r"(?<!\\)\|", row)) for row in table}
        naive = {row.count("|") for row in table}  # a renderer that splits on every pipe agrees
        assert len(widths) == 1 and len(naive) == 1, table[:2]
    assert any(p.name == "report.html" for p in written)


def test_html_puts_the_conclusions_and_figures_before_the_tables(tmp_path):
    store = _study_store(tmp_path / "s.db", "cmp", {"base": [0.60, 0.62, 0.61], "new": [0.70, 0.73, 0.70]}, "base")
    write_report(store, tmp_path / "r", study="cmp")
    page = (tmp_path / "r" / "report.html").read_text()
    first_table, first_image = page.index("<table"), page.index("<img")
    assert page.index("<h2>Conclusions</h2>") < first_image < first_table
    md = (tmp_path / "r" / "report.md").read_text()
    assert md.index("## Conclusions") < md.index("## Figures") < md.index("## Runs")
