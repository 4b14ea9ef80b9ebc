"""The issue-16 examples expand (dry run: nothing is written) into the runs they describe."""

from __future__ import annotations

from pathlib import Path

import pytest

from transferlab.cli import main
from transferlab.study.expand import expand
from transferlab.study.spec import load_study

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("name,runs,check", [
    ("ner_conll", 6, lambda p: p.spec.head.name == "token" and p.spec.task.options["subwords"] in ("first", "all")),
    ("squad", 9, lambda p: p.spec.head.name == "span" and p.spec.task.few_sample in (256, 1024, 4096)),
    ("multitask_glue", 9, lambda p: [t.name for t in p.spec.multitask.tasks] == ["rte", "mrpc", "sts-b"]),
    ("stilts_rte", 10, lambda p: (p.arm == "rte-alone") == (p.spec.intermediate is None)),
])
def test_example_dry_run(name, runs, check, tmp_path, capsys):
    path = EXAMPLES / f"{name}.yaml"
    db = tmp_path / "s.db"
    assert main(["run", str(path), "--store", str(db), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{runs} of {runs} runs to do" in out and not db.exists()
    planned = expand(load_study(path))
    assert len(planned) == runs and all(check(p) for p in planned)


def test_stilts_example_carries_mrpc_for_700_steps():
    planned = expand(load_study(EXAMPLES / "stilts_rte.yaml"))
    inter = {p.spec.intermediate.task.name: p.spec.intermediate.steps for p in planned if p.spec.intermediate}
    assert inter == {"mrpc": 700} and sorted({p.seed for p in planned}) == [0, 1, 2, 3, 4]
