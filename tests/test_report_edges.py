"""Report edges: only one recipe pools as seeds; per-seed, config-diff and provenance tables; n = 1 shown
without a spread; a single evaluation is visible; the LR plot has every step; k ticks are integers."""

import io

import numpy as np
import pytest
from conftest import tiny_spec_dict, write_sentiment_csv
from PIL import Image

from transferlab.report import cells, plots, write_report
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
