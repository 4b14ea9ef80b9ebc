"""The demo is a study with a baseline arm: its printout and report answer "does pretraining help?" with a
paired test and a sentence, and name the store and the commands that go on from it."""

import re

import numpy as np
import pytest

from transferlab.cli import main
from transferlab.demo import BASELINE, STUDY, demo, next_commands, study_dict
from transferlab.report import cells
from transferlab.report import significance as sig
from transferlab.report import stats
from transferlab.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _check_answer(out, lines: list[str], printed: str) -> str:
    """The demo's sentence is the report's, and it says "better" exactly when the Holm-adjusted paired t
    test of the stored per-seed test accuracies is significant."""
    store = Store(out / "demo.db", create=False)
    by_arm = {c.arm: c for c in cells(store, STUDY)}
    assert set(by_arm) == {"pretrained", BASELINE} and store.study_spec(STUDY)["baseline"] == BASELINE
    x, y = (np.array([r.summary["test"]["accuracy"] for r in sorted(by_arm[a].finished, key=lambda r: r.seed)])
            for a in ("pretrained", BASELINE))
    p = sig.paired(x, y)
    (line,) = [x for x in lines if x.startswith(f"{STUDY}: pretrained vs {BASELINE} on digits (accuracy, test, ")]
    assert f"paired t p {sig._p_text(p['t_p'])}" in line and f"Δ {p['diff']:+.4f}" in line
    significant = stats.holm([p["t_p"]])[0] < 0.05  # one comparison: Holm leaves p as it is
    assert ("pretrained is better than random-init" in line) == (significant and p["diff"] > 0)
    assert ("no difference detected" in line) == (not significant)
    assert "Does pretraining help? " + line in printed
    md = (out / "report" / "report.md").read_text()
    assert f"- {line}" in md and md.index("## Conclusions") < md.index("## Figures") < md.index("## Runs")
    return line


def test_demo_answers_its_question_and_names_its_store(tmp_path, capsys, monkeypatch):
    """The machinery on a tiny model (the real demo's MiniLM is the slow test below)."""
    monkeypatch.chdir(tmp_path)
    lines = demo(tmp_path / "demo_out", seeds=2, progress=False, train_samples=32, epochs=1, model="tiny-bert")
    printed = capsys.readouterr().out
    _check_answer(tmp_path / "demo_out", lines, printed)
    assert f"store:  {tmp_path / 'demo_out' / 'demo.db'}" in printed
    assert f"report: {tmp_path / 'demo_out' / 'report' / 'report.html'}" in printed
    for cmd in next_commands(tmp_path / "demo_out"):  # the printed next commands work as printed
        assert f"  {cmd}" in printed
    assert main(["runs", "--store", str(tmp_path / "demo_out" / "demo.db")]) == 0
    listed = capsys.readouterr().out
    assert len(re.findall(r"\bdigits\b.*\bfinished\b", listed)) == 4
    assert main(["report", str(tmp_path / "demo_out" / "demo.db"), "--study", "demo", "-o", "rep2"]) == 0
    assert (tmp_path / "rep2" / "report.html").is_file()
    # rerun: every run is reused, the answer is the same
    again = demo(tmp_path / "demo_out", seeds=2, progress=False, train_samples=32, epochs=1, model="tiny-bert")
    assert again == lines and len(Store(tmp_path / "demo_out" / "demo.db", create=False).runs()) == 4


def test_demo_study_shape_and_bad_sizes(capsys):
    d = study_dict(3)
    assert d["baseline"] == "random-init" and d["seeds"] == [0, 1, 2]
    assert d["arms"] == {"pretrained": {"model.init": "pretrained"}, "random-init": {"model.init": "random"}}
    assert d["base"]["model"]["name"] == "minilm" and "max_train_samples" not in d["base"]["task"]
    assert study_dict(2, train_samples=100, epochs=1)["base"]["task"]["max_train_samples"] == 100
    for args in (["--seeds", "0"], ["--epochs", "0"], ["--train-samples", "-5"]):
        assert main(["demo", "-o", "never", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert args[0] in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_real_demo_reduced_answers_with_a_paired_test(tmp_path, capsys):
    """The demo's own MiniLM study on 300 training images, 1 epoch, 3 seeds: the sentence states the answer."""
    lines = demo(tmp_path / "demo_out", seeds=3, progress=False, train_samples=300, epochs=1)
    _check_answer(tmp_path / "demo_out", lines, capsys.readouterr().out)
