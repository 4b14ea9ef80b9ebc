"""Intermediate-task transfer (issue 16): phase A stored, phase B starts from it (backbone and, when the
labels match, head); a head that cannot be carried is one line, exit 2; the study axis expands."""

from __future__ import annotations

import random

import pytest
import yaml
from conftest import write_sentiment_csv

from transferlab.cli import main
from transferlab.spec import load_spec, run_id
from transferlab.store import Store
from transferlab.study.expand import expand
from transferlab.study.spec import load_study
from transferlab.train.intermediate import intermediate_run_id
from transferlab.train.loop import run

pytestmark = pytest.mark.usefixtures("one_thread")


def as_tsv(src, dst):
    dst.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev"):
        (dst / f"{split}.tsv").write_text((src / f"{split}.csv").read_text().replace(",", "\t"))
    return dst


def three_class(folder):
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for split, n in (("train", 60), ("dev", 30)):
        rows = ["text,label"] + [f"{' '.join(rng.sample(['a', 'b', 'c', 'd', 'e'], 3))},{i % 3}" for i in range(n)]
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return folder


def spec_dict(tmp_path, b_task, **inter):
    a = write_sentiment_csv(tmp_path / "a", n_train=128, n_dev=64)
    return {"name": "stilts", "model": {"name": "tiny-bert", "max_length": 16}, "head": {"name": "cls"},
            "task": b_task(a), "optim": {"lr": 3e-3},
            "intermediate": {"task": {"name": "csv", "path": str(a)}, "steps": 60, **inter},
            "train": {"max_steps": 1, "batch_size": 16, "num_evals": 1, "log_every": 1}}


def test_phase_b_starts_from_phase_a_with_its_head(tmp_path):
    store = Store(tmp_path / "s.db")
    # phase B: the same data as TSV, 1 step at a negligible LR: it scores what phase A left
    spec = spec_dict(tmp_path, lambda a: {"name": "tsv", "path": str(as_tsv(a, tmp_path / "b"))})
    spec["optim"]["lr"] = 1e-12
    spec["intermediate"]["lr"] = 3e-3
    result = run(load_spec(spec), store, progress=False)
    runs = {r.name: r for r in store.runs()}
    assert set(runs) == {"stilts", "stilts [intermediate csv]"}  # both phases stored
    phase_a = runs["stilts [intermediate csv]"]
    assert phase_a.run_id == intermediate_run_id(load_spec(spec)) and phase_a.summary["steps"] == 60
    assert phase_a.summary["dev"]["accuracy"] > 0.75  # phase A learnt the task
    assert result.dev["accuracy"] == pytest.approx(phase_a.summary["dev"]["accuracy"])  # backbone + head carried
    # without the intermediate phase the same B run is at chance level
    alone = dict(spec)
    alone.pop("intermediate")
    assert run(load_spec(alone), store, progress=False).dev["accuracy"] < 0.7


def test_carrying_a_head_over_different_labels_is_one_line_exit_2(tmp_path, capsys):
    spec = spec_dict(tmp_path, lambda a: {"name": "csv", "path": str(three_class(tmp_path / "b"))}, head="carry")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    db = tmp_path / "s.db"
    assert main(["run", str(path), "--store", str(db), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "intermediate.head: carry needs the same labels" in err and len(err.splitlines()) == 1
    assert not Store(db).runs() or all(r.name != "stilts [intermediate csv]" for r in Store(db).runs())
    # auto: a new head for the three-class task, the backbone still carried
    spec["intermediate"]["head"] = "auto"
    spec["intermediate"]["steps"] = 3
    assert run(load_spec(spec), Store(db), progress=False).status == "finished"


def test_study_axis_none_or_a_task(tmp_path):
    study = load_study({"study": "stilts", "base": {"model": {"name": "tiny-bert"}, "task": {"name": "rte"}},
                        "seeds": [0, 1], "grid": {"intermediate": ["none", {"task": {"name": "mrpc"}, "steps": 300}]}})
    planned = expand(study)
    assert len(planned) == 4 and len({p.run_id for p in planned}) == 4
    cells = sorted({p.cell for p in planned})
    assert cells == ["base intermediate=mrpc/300", "base intermediate=none"]
    none = [p for p in planned if p.cell == "base intermediate=none"]
    assert all(p.spec.intermediate is None for p in none)
    plain = load_spec({"name": "base", "model": {"name": "tiny-bert"}, "task": {"name": "rte"}})
    assert none[0].run_id == run_id(plain)  # "none" is the run without the axis: same id as before the axis


def test_seed_parallel_engine_leaves_intermediate_and_multitask_runs_to_the_loop():
    from transferlab.train.support import unsupported

    base = {"model": {"name": "tiny-bert"}, "task": {"name": "rte"}}
    inter = [load_spec({**base, "seed": s, "intermediate": {"task": {"name": "mrpc"}, "steps": 5}}) for s in (0, 1)]
    assert "intermediate" in unsupported(inter)
    multi = [load_spec({**base, "seed": s, "multitask": {"tasks": [{"name": "rte"}, {"name": "mrpc"}]}}) for s in (0, 1)]
    assert "multitask" in unsupported(multi)
    assert unsupported([load_spec({**base, "seed": s}) for s in (0, 1)]) is None


@pytest.mark.parametrize("executor", ["inline", "processes"])
def test_a_study_with_an_intermediate_axis_runs_both_phases_in_its_workers(executor, tmp_path):
    """Workers record to the driver's claims: phase A is claimed with phase B, trained once per seed,
    stored as a run of its own and reused when only phase B is left; phase B equals a direct run."""
    import sqlite3

    a = write_sentiment_csv(tmp_path / "a", n_train=64, n_dev=32)
    base = {"model": {"name": "tiny-bert", "max_length": 16}, "head": {"name": "cls"},
            "task": {"name": "csv", "path": str(a)}, "optim": {"lr": 3e-3},
            "train": {"max_steps": 3, "batch_size": 16, "num_evals": 1, "log_every": 1, "save_model": False}}
    inter = {"task": {"name": "csv", "path": str(a)}, "steps": 4}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"study": "st", "base": base, "seeds": [0, 1],
                                    "grid": {"intermediate": ["none", inter]}}))
    db = tmp_path / "s.db"
    argv = ["run", str(path), "--store", str(db), "--executor", executor, "--workers", "2", "--threads", "1",
            "--quiet"]
    assert main(argv) == 0
    runs = Store(db).runs()
    phase_a = [r for r in runs if r.name.endswith("[intermediate csv]")]
    assert len(runs) == 6 and all(r.status == "finished" for r in runs)
    assert sorted(r.seed for r in phase_a) == [0, 1] and all(r.summary["steps"] == 4 for r in phase_a)
    b = next(r for r in runs if r.seed == 0 and r.spec.get("intermediate") and not r.name.endswith("]"))
    direct = run(load_spec({**base, "name": b.name, "seed": 0, "intermediate": inter}), Store(tmp_path / "d.db"),
                 progress=False)
    assert direct.dev == pytest.approx(b.summary["dev"], abs=1e-6)
    with sqlite3.connect(db) as con:  # phase B gone: the rerun trains it again from the stored phase A
        con.execute("DELETE FROM runs WHERE uid=?", (b.uid,))
    assert main(argv) == 0
    again = Store(db).runs()
    assert len(again) == 6 and sorted(r.uid for r in again if r.name.endswith("]")) == sorted(r.uid for r in phase_a)
