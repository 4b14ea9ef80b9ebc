"""The report of a study: tables, statistics, figures, the CLI, and the HTML page in headless Chromium."""

import base64
import io
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_spec_dict, tiny_study_dict, write_sentiment_csv
from PIL import Image

from transferlab.cli import main
from transferlab.models.artifacts import load_predictions
from transferlab.report import cells, write_report
from transferlab.report import significance as sig
from transferlab.report import stats
from transferlab.spec import load_spec
from transferlab.store import Store
from transferlab.study.runner import run_study
from transferlab.study.spec import load_study
from transferlab.train.loop import run

CHROMIUM = Path("/usr/bin/chromium")
PLOTS = ("seeds.png", "dev_curves.png", "loss_curves.png", "lr_schedule.png", "expected_max.png")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def study_store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    data = write_sentiment_csv(tmp / "toy", n_train=128, n_dev=40)
    d = tiny_study_dict(data, name="rep", seeds=[0, 1, 2, 3], epochs=6)  # long enough to learn at 3e-3
    d["base"]["task"]["split_dev"] = True  # dev halves: validation for selection, test for the report
    d["lr_search"] = {"grid": [1e-6, 3e-3], "seeds": [0]}
    d["threshold"] = 0.5
    d["report"] = {"tost_margin": 0.05}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        store = Store(tmp / "s.db")
        run_study(load_study(d), store, out=lambda _: None)
    finally:
        torch.set_num_threads(before)
    out = tmp / "report"
    return store, out, write_report(store, out, study="rep")


def test_report_writes_every_table_and_figure(study_store):
    store, out, written = study_store
    for name in PLOTS:
        path = out / name
        assert path in written and path.stat().st_size > 1000
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
    md = (out / "report.md").read_text()
    for section in ("## Conclusions", "## Runs", "## Statistics per cell", "## Against the baseline arm",
                    "## Paired comparison against the baseline arm", "## How many seeds?", "## Prediction churn",
                    "## Learning rates chosen on validation", "## Expected best score over k seeds",
                    "## Expected best score over k seeds, unbiased", "## Paper-style table"):
        assert section in md
    for key, v in store.study_values("rep").items():  # the chosen LRs are shown
        assert re.search(rf"\| rep \| csv \| {v['cell']} \| {v['lr']:g} \| accuracy \|", md), key
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(PLOTS)
    assert not re.search(r"""(src|href)=["'](http|file|//)""", page)  # self-contained


def test_report_statistics_are_those_of_the_stored_runs(study_store):
    store, out, _ = study_store
    by_arm = {c.arm: c for c in cells(store, "rep")}
    assert set(by_arm) == {"adamw", "bertadam"} and all(c.split == "test" for c in by_arm.values())
    md = (out / "report.md").read_text()
    values = {}
    for arm, c in by_arm.items():
        plan = [(seed, rid) for _, rid, _, a, _, seed, _ in store.study_plan("rep", "main") if a == arm]
        assert sorted(s for s, _ in plan) == [0, 1, 2, 3]
        # the LR-search seed 0 is left out by default: 3 of the 4 planned runs are reported
        rows = [store.runs(run_id=rid)[-1] for seed, rid in sorted(plan) if seed != 0]
        v = np.array([r.summary["test"]["accuracy"] for r in rows])
        values[arm] = v
        assert len(v) == 3 and len(c.runs) == 3 and [r.seed for r in c.excluded] == [0]
        np.testing.assert_allclose(c.values("accuracy"), v)
        d = stats.describe(v)
        std = f"{d['std']:.4f}"
        assert f"| csv | {arm} | test | accuracy | 3 | 0 | {d['mean']:.4f} ± {std} |" in md
        assert f"{stats.expected_max(v, 3):.4f}" in md
        assert re.search(rf"\| csv \| {arm} \| test \| accuracy \| 3 \|.*\(t, n < 10\) \|.*\| 1 \(seeds 0\) \|", md)
    assert "the LR-search seeds [0] are left out of every reported cell" in md
    res = stats.compare(values["bertadam"], values["adamw"])
    assert f"| csv | bertadam | adamw | accuracy (test) | {res['diff']:+.4f} |" in md
    # arms share seeds: the paired analysis is chosen and the report says so
    assert "so every comparison is PAIRED" in md
    p = sig.paired(values["bertadam"], values["adamw"])
    assert f"| csv | bertadam | adamw | accuracy (test) | paired, 3 seeds | {p['diff']:+.4f} |" in md
    # the conclusion: "worse"/"better" only with a Holm-adjusted paired t p < 0.05, else "no difference detected"
    line = next(x for x in md.splitlines() if x.startswith("- rep: bertadam vs adamw on csv (accuracy, test, 3 paired"))
    assert ("is better than adamw" in line or "is worse than adamw" in line) == (p["t_p"] < 0.05)
    assert ("no difference detected" in line) == (p["t_p"] >= 0.05)
    header = next(line for line in md.splitlines() if line.startswith("| task | arm | vs | seeds now"))
    assert header.count("|") == 10  # 9 columns: no stray pipes in the power table
    tost = sig.tost(values["bertadam"], values["adamw"], 0.05, paired=True)
    assert f"equivalent within ±0.05 (TOST p {tost['p']:.3f})" in line
    assert values["adamw"].mean() > 0.6  # the runs learned: the statistics are not those of constants


def test_report_with_search_seeds_included(study_store, tmp_path):
    store, _, _ = study_store
    assert all(len(c.runs) == 4 and not c.excluded for c in cells(store, "rep", include_search_seeds=True))
    assert main(["report", str(store.path), "--study", "rep", "-o", str(tmp_path / "o"),
                 "--include-search-seeds"]) == 0
    md = (tmp_path / "o" / "report.md").read_text()
    assert "| csv | adamw | test | accuracy | 4 |" in md and "are left out" not in md


def test_churn_is_that_of_the_stored_test_predictions(study_store):
    store, out, _ = study_store
    md = (out / "report.md").read_text()
    for c in cells(store, "rep"):
        preds = [load_predictions(store.artifact_dir(r.uid), "test") for r in c.finished]
        assert all(p is not None and p.dtype.kind == "i" for p in preds)
        assert f"| csv | {c.arm} | 3 | {sig.churn(preds):.1%} |" in md


def test_plan_seeds_cli_and_bad_input(study_store, capsys):
    store, _, _ = study_store
    assert main(["plan-seeds", str(store.path), "--study", "rep", "--delta", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "seeds needed" in out and re.search(r"csv\s+bertadam\s+adamw\s+paired\s+3\s", out)
    for args, msg in ((["--delta", "0"], "--delta"), (["--delta", "-0.1"], "--delta")):
        assert main(["plan-seeds", str(store.path), "--study", "rep", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1
    assert main(["report", str(store.path), "--study", "rep", "-o", "unused", "--tost-margin", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--tost-margin" in err and len(err.splitlines()) == 1


def test_report_of_plain_runs_and_the_cli(tmp_path, capsys):
    data = write_sentiment_csv(tmp_path / "toy", n_train=64, n_dev=32)
    store = Store(tmp_path / "s.db")
    for seed in (0, 1):
        run(load_spec(tiny_spec_dict(data, epochs=1, save_model=False), {"seed": seed}), store, progress=False)
    assert main(["report", str(tmp_path / "s.db"), "-o", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out.split()
    assert str(tmp_path / "out" / "report.html") in printed
    assert (tmp_path / "out" / "seeds.png").stat().st_size > 1000
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| csv | tiny | dev | accuracy | 2 |" in md  # one cell of two seeds
    assert main(["report", str(tmp_path / "nope.db"), "--study", "x", "-o", str(tmp_path / "o2")]) == 2
    assert not (tmp_path / "nope.db").exists()  # a typo in the store path creates nothing


CHECK = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.type)), true);
window.addEventListener('load', () => {
  const bad = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt);
  document.title = 'CHECK images=' + document.images.length + ' bad=' + bad.join(',') +
                   ' errors=' + window.__errors.join('|') + ' END';
});
</script>"""


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (/usr/bin/chromium)")
def test_html_report_opens_in_headless_chromium(study_store, tmp_path):
    _, out, _ = study_store
    flags = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--window-size=1200,1600", "--virtual-time-budget=5000"]
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", (out / "report.html").as_uri()], check=True,
                   capture_output=True, timeout=180)
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("L"), dtype=float)
    assert pixels.shape == (1600, 1200)
    assert (pixels < 200).mean() > 0.01 and pixels.std() > 10  # text, tables and plots: not a blank page
    # the same page with a probe: every image decodes and no script or resource error is raised
    probe = tmp_path / "probe.html"
    probe.write_text((out / "report.html").read_text().replace("<head>", "<head>" + CHECK, 1))
    dom = subprocess.run([*flags, "--dump-dom", probe.as_uri()], check=True, capture_output=True, text=True,
                         timeout=180).stdout
    title = re.search(r"<title>(CHECK .*? END)</title>", dom)
    assert title, dom[:500]
    assert title.group(1) == f"CHECK images={len(PLOTS)} bad= errors= END"
    # the embedded images are the plot files, byte for byte
    embedded = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", (out / "report.html").read_text())
    assert sorted(base64.b64decode(e) for e in embedded) == sorted((out / n).read_bytes() for n in PLOTS)
    assert all(Image.open(io.BytesIO(base64.b64decode(e))).size[0] > 100 for e in embedded)


def test_plan_seeds_with_one_pilot_seed_is_one_line_and_exit_2(tmp_path, capsys):
    data = write_sentiment_csv(tmp_path / "toy", n_train=32, n_dev=16)
    store = Store(tmp_path / "s.db")
    run_study(load_study(tiny_study_dict(data, name="one", seeds=[0])), store, out=lambda _: None)
    assert main(["plan-seeds", str(store.path), "--study", "one", "--delta", "0.05"]) == 2
    err = capsys.readouterr().err.strip()
    assert "at least 2 pilot seeds" in err and len(err.splitlines()) == 1
    assert main(["plan-seeds", str(store.path), "--study", "nope", "--delta", "0.05"]) == 2
    assert "no finished cells of study 'nope'" in capsys.readouterr().err


def drop_section(md: str, title: str) -> str:
    start = md.index(title)
    end = md.index("\n## ", start + 1) + 1
    return md[:start] + md[end:]


def test_report_of_exported_csv_tables_equals_the_report_of_the_store(study_store, tmp_path):
    """`transferlab report DIR` on a folder of `export --csv` tables: the same report as from the store (the
    findings' CSVs under docs/findings/ are reported this way), less the prediction churn, which needs the runs'
    prediction files; the folder is left as it was."""
    store, out, _ = study_store
    tables = tmp_path / "tables"
    assert main(["export", "--csv", str(tables), "--store", str(store.path)]) == 0
    assert {p.name for p in tables.iterdir()} >= {"runs.csv", "study_plan.csv", "study_values.csv"}
    before = {p.name: p.read_bytes() for p in tables.iterdir()}
    assert main(["report", str(tables), "--study", "rep", "-o", str(tmp_path / "from-csv")]) == 0
    from_csv, from_store = ((d / "report.md").read_text() for d in (tmp_path / "from-csv", out))
    assert "## Prediction churn" in from_store and "## Prediction churn" not in from_csv  # predictions are files
    assert from_csv == drop_section(from_store, "## Prediction churn")
    assert {p.name: p.read_bytes() for p in tables.iterdir()} == before


@pytest.mark.parametrize("case", ["no-runs", "empty", "bad-column", "short-row", "undecodable"])
def test_report_of_a_bad_csv_folder_is_one_line_exit_2(case, study_store, tmp_path, capsys):
    store, _, _ = study_store
    tables = tmp_path / "tables"
    assert main(["export", "--csv", str(tables), "--store", str(store.path)]) == 0
    runs = tables / "runs.csv"
    text = runs.read_text()
    if case == "no-runs":
        runs.unlink()
    elif case == "empty":
        runs.write_text("")
    elif case == "bad-column":
        runs.write_text(text.replace("recipe_hash", "recipe_hush", 1))
    elif case == "short-row":
        runs.write_text(text.splitlines()[0] + "\nabc,def\n")
    else:
        runs.write_bytes(b"\xff\xfe\xfa" + text.encode())
    capsys.readouterr()
    assert main(["report", str(tables), "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and str(tables) in err, err
    assert {"no-runs": "no runs.csv", "empty": "empty", "bad-column": "'recipe_hush'", "short-row": "runs.csv:2",
            "undecodable": "not a CSV table"}[case] in err
    assert not (tmp_path / "r").exists()
