"""The stabilisers side-by-side example (examples/stabilisers_rte.yaml) expands as shipped (dry run)."""

from pathlib import Path

from transferlab.cli import main
from transferlab.spec import load_spec, to_dict
from transferlab.study.expand import cell_defs, expand
from transferlab.study.spec import load_study

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "stabilisers_rte.yaml"


def test_stabilisers_example_dry_run(tmp_path, capsys):
    assert main(["run", str(EXAMPLE), "--dry-run", "--store", str(tmp_path / "none.db")]) == 0
    out = capsys.readouterr().out
    # 7 arms x 3 LRs x 2 search seeds first; then 7 cells x 10 seeds at the chosen LRs
    assert "stabilisers-rte: 42 of 42 runs to do; then 7 cells x 10 seeds" in out
    study = load_study(EXAMPLE)
    assert len(study.seeds) >= 10 and study.baseline == "baseline" and study.report.tost_margin == 0.01
    assert not set(study.seeds) & set(study.lr_search.seeds)  # no reported seed is a search seed
    planned = expand(study, {(c.task, c.cell): 5e-5 for c in cell_defs(study)})
    assert len(planned) == 70  # 7 cells x 10 seeds
    by_arm = {p.arm: load_spec(to_dict(p.spec)) for p in planned}  # each spec loads and checks again
    assert [s.name for s in by_arm["mixout"].stabilisers] == ["mixout"]
    assert by_arm["mixout"].stabilisers[0].options == {"p": 0.1}
    assert by_arm["reinit2"].init.reinit_layers == 2 and not by_arm["reinit2"].stabilisers
    assert {s.name for a in ("l2sp", "child-tuning-d", "r3f", "ema") for s in by_arm[a].stabilisers} == \
        {"l2sp", "child_tuning_d", "r3f", "ema"}
    assert all(s.task.few_sample == 1000 and s.model.name == "minilm" for s in by_arm.values())
