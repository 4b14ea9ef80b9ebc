"""docs/findings.md: every study file it names dry-runs under both size profiles, and the row that was run
recomputes from the CSV exported beside it (docs/findings/<study>/runs.csv).

Twice: `transferlab report docs/findings/<folder>` (the report of the exported tables, read back into a store
of its own) must print the row's numbers, and scipy on the CSV (the main-phase runs of each arm at its chosen LR,
the search seeds left out, paired by seed) must give them too."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, needs_shared_data

from transferlab.cli import main
from transferlab.study.spec import load_study

ROOT = Path(__file__).resolve().parents[1]
FINDINGS = ROOT / "docs" / "findings.md"
GLUE = {"rte": "RTE", "mrpc": "MRPC", "sts-b": "STS-B", "stsb": "STS-B", "cola": "CoLA"}


def study_files() -> list[str]:
    return sorted(set(re.findall(r"`(examples/[\w-]+\.yaml)`", FINDINGS.read_text())))


def test_findings_names_a_study_per_claim():
    text = FINDINGS.read_text()
    rows = [line for line in text.splitlines() if re.match(r"\| \([a-g]\) ", line)]
    assert [r[3] for r in rows] == list("abcdefg")
    for row in rows:
        assert re.search(r"`examples/[\w-]+\.yaml`", row), row
        assert "not run" in row or "Holm" in row, row  # a measured row says its adjusted p; the rest say why not
    assert len(study_files()) >= 6


def path_overrides(data: Path, path: str, profile: str) -> list[str]:
    """--set task paths for the profile's GLUE tasks (the study files leave them null: users' folders differ)."""
    study = load_study(ROOT / path, profile=profile)
    out = []
    name = study.base.get("task", {}).get("name")
    if name in GLUE:
        out.append(f"base.task.path={data / 'glue' / GLUE[name]}")
    for arm, flat in study.arms.items():
        if (inter := flat.get("intermediate.task.name")) in GLUE:  # arms are flattened: dotted keys
            out.append(f"arms.{arm}.intermediate.task.path={data / 'glue' / GLUE[inter]}")
    return [x for o in out for x in ("--set", o)]


@needs_shared_data
@pytest.mark.parametrize("profile", ["cpu", "gpu"])
@pytest.mark.parametrize("path", study_files())
def test_every_findings_study_dry_runs_under_both_profiles(path, profile, tmp_path, capsys):
    db = tmp_path / "none.db"
    assert main(["run", str(ROOT / path), "--profile", profile, "--dry-run", "--store", str(db),
                 *path_overrides(SHARED_DATA, path, profile)]) == 0
    out = capsys.readouterr().out
    name = load_study(ROOT / path, profile=profile).study
    assert name.endswith(f"@{profile}") and f"{name}: " in out
    assert re.search(rf"{re.escape(name)}: expected wall time \(rough estimate\): about .+ on the 2-core CPU", out)
    assert not db.exists()


# ------------------------------------------------------------------ the rows that were run

RUN_ROWS = {  # claim -> (stored study, its CSV folder, baseline arm, other arm, main metric on test)
    "a": ("few-sample-rte-bertadam@cpu", "few-sample-rte-bertadam-cpu", "debiased-adam", "bertadam", "spearman"),
    "b": ("reinit-few-sample@cpu", "reinit-few-sample-cpu", "no-reinit", "reinit-top2", "spearman"),
    "c": ("fpt-digits@cpu", "fpt-digits-cpu", "frozen-random", "frozen-pretrained", "accuracy"),
    "e": ("stsb-heads-layer-decay@cpu", "stsb-heads-layer-decay-cpu", "cls layer_decay=1", "mean layer_decay=1",
          "spearman"),
    "g": ("stabilisers-rte@cpu", "stabilisers-rte-cpu", "baseline", "mixout", "spearman"),
}


def row_numbers(claim: str, arms: tuple[str, str]) -> dict:
    """The numbers docs/findings.md states for a claim's CPU run."""
    row = next(line for line in FINDINGS.read_text().splitlines() if line.startswith(f"| ({claim}) "))
    delta, lo, hi = (float(x) for x in re.search(
        r"Δ ([+-][\d.]+), 95% CI \[([+-][\d.]+), ([+-][\d.]+)\]", row).groups())
    p = float(re.search(r"paired t p ([\d.e-]+)", row).group(1))
    holm = float(re.search(r"paired t p [\d.e-]+, Holm ([\d.e-]+)", row).group(1))
    names = "|".join(re.escape(a) for a in arms)
    lrs = {arm: float(lr) for arm, lr in re.findall(rf"({names}) LR ([\d.e-]+)", row)}
    means = {arm: float(m) for arm, m in re.findall(rf"({names}) (-?[01]\.\d{{4}}) ±", row)}
    return {"delta": delta, "ci": (lo, hi), "p": p, "holm": holm, "lrs": lrs, "means": means}


def per_seed(folder: Path, study: str, arm: str, lr: float, metric: str) -> dict[int, float]:
    """Test metric per seed of the arm's (cell's: an arm at one grid value) main runs at its chosen LR, by the
    study's plan (study_plan.csv: the search seeds' runs are another phase; a run reused from another study
    keeps that study's name)."""
    with (folder / "study_plan.csv").open(newline="", encoding="utf-8") as f:
        planned = {r["run_id"] for r in csv.DictReader(f)
                   if r["study"] == study and r["phase"] == "main" and r["cell"] == arm and float(r["lr"]) == lr}
    out = {}
    with (folder / "runs.csv").open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if r["run_id"] in planned and r["status"] == "finished":
                assert json.loads(r["spec"])["optim"]["lr"] == lr
                out[int(r["seed"])] = json.loads(r["summary"])["test"][metric]
    assert len(out) == len(planned), (arm, sorted(planned))
    return out


@pytest.mark.parametrize("claim", sorted(RUN_ROWS))
def test_the_csv_of_a_run_row_recomputes_its_numbers(claim):
    from scipy import stats

    study, folder, base, other, metric = RUN_ROWS[claim]
    row = row_numbers(claim, (other, base))
    assert set(row["lrs"]) == set(row["means"]) == {other, base}
    a = per_seed(ROOT / "docs" / "findings" / folder, study, other, row["lrs"][other], metric)
    b = per_seed(ROOT / "docs" / "findings" / folder, study, base, row["lrs"][base], metric)
    assert sorted(a) == sorted(b) and len(a) >= 2
    seeds = sorted(a)
    d = np.array([a[s] - b[s] for s in seeds])
    assert round(float(d.mean()), 4) == row["delta"]
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    assert (round(float(d.mean() - half), 4), round(float(d.mean() + half), 4)) == row["ci"]
    p = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue
    assert f"{p:.1e}" == f"{row['p']:.1e}"
    assert round(float(np.mean(list(a.values()))), 4) == row["means"][other]
    assert round(float(np.mean(list(b.values()))), 4) == row["means"][base]


@pytest.mark.parametrize("claim", sorted(RUN_ROWS))
def test_report_on_the_exported_csv_prints_the_rows_numbers(claim, tmp_path, capsys):
    study, folder, base, other, metric = RUN_ROWS[claim]
    row = row_numbers(claim, (other, base))
    assert main(["report", str(ROOT / "docs" / "findings" / folder), "--study", study, "-o", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    paired = md[md.index("## Paired comparison against the baseline arm"):]
    cells = [c.strip() for c in next(line for line in paired.splitlines()
                                     if line.startswith("| ") and f"| {other} | {base} |" in line).split("|")[1:-1]]
    assert cells[3] == f"{metric} (test)" and cells[4].startswith("paired")
    assert float(cells[5]) == row["delta"]
    assert cells[6] == f"[{row['ci'][0]:+.4f}, {row['ci'][1]:+.4f}]"
    assert f"{float(cells[7]):.1e}" == f"{row['p']:.1e}" and f"{float(cells[8]):.1e}" == f"{row['holm']:.1e}"
    for arm in (other, base):  # the per-cell table's mean on test
        line = next(li for li in md.splitlines() if re.match(rf"\| [^|]+ \| {re.escape(arm)} \| test \| {metric} \|", li))
        assert float(line.split("|")[7].split("±")[0]) == row["means"][arm], line
    lrs = md[md.index("## Learning rates chosen on validation"):]
    lrs = lrs[:lrs.index("\n## ", 3)]
    lr_rows = {arm: float(lr) for arm, lr in re.findall(r"\| [^|]+ \| [^|]+ \| ([^|]+?) \| ([\d.e-]+) \| ", lrs)}
    assert {arm: lr_rows[arm] for arm in (other, base)} == row["lrs"]
