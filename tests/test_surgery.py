"""Surgery: a fine-tuned run evaluated under transplants and re-inits, stored as runs of kind 'surgery'."""

import pytest
from conftest import SHARED_DATA, needs_shared_data, tiny_spec_dict

from transferlab.cli import main
from transferlab.errors import UserError
from transferlab.spec import load_spec
from transferlab.store import Store
from transferlab.surgery import parse_surgery
from transferlab.train.loop import run

XAVIER = "init layers=5 scheme=xavier_uniform"
PUT_BACK = "transplant source=self layers=5"


@needs_shared_data
def test_surgery_on_minilm_fine_tuned_on_rte(tmp_path, capsys):
    """Acceptance 6: layer 6 (index 5) with Xavier weights changes dev accuracy; its own weights put back
    (after the Xavier surgery) change nothing, exactly; the CLI prints the table; each surgery is a stored run."""
    spec = load_spec({
        "name": "rte-minilm", "model": {"name": "minilm", "max_length": 64},
        "task": {"name": "rte", "path": str(SHARED_DATA / "glue" / "RTE"), "max_train_samples": 32,
                 "max_eval_samples": 48},
        "optim": {"lr": 1e-4},
        "train": {"max_steps": 2, "batch_size": 16, "eval_batch_size": 64, "num_evals": 1, "restore_best": False},
    })
    store = Store(tmp_path / "s.db")
    trained = run(spec, store, progress=False)
    assert trained.status == "finished"
    rc = main(["surgery", trained.uid, "--store", str(store.path), "--batch-size", "64",
               "-s", XAVIER, "-s", f"{XAVIER} + {PUT_BACK}"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.strip().splitlines()
    assert lines[0].split() == ["surgery", "accuracy", "delta", "accuracy", "changed"]
    assert [line.split("  ")[0] for line in lines[2:]] == ["none", XAVIER, f"{XAVIER} + {PUT_BACK}"]

    rows = {r.name: r for r in store.runs(kind="surgery")}
    assert len(rows) == 3 and all(r.status == "finished" for r in rows.values())
    base = rows["none"].summary
    assert base["metrics"] == trained.dev and base["n_examples"] == 48
    xavier = rows[XAVIER].summary
    assert xavier["metrics"]["accuracy"] != base["metrics"]["accuracy"] and xavier["changed_predictions"] > 0
    back = rows[f"{XAVIER} + {PUT_BACK}"].summary  # Xavier weights, then the layer's own weights put back
    assert back["metrics"] == base["metrics"] and back["delta"] == 0.0 and back["changed_predictions"] == 0
    assert xavier["base_run"] == trained.uid and xavier["reports"][0]["init"]["rules"][0]["scheme"] == "xavier_uniform"
    moved = back["reports"][1]["transplant"]
    assert moved["source"] == "self" and moved["layers"] == [[5, 5]]


def test_surgery_errors_and_steps_on_a_tiny_run(tmp_path, toy_task_dir, capsys):
    store = Store(tmp_path / "s.db")
    trained = run(load_spec(tiny_spec_dict(toy_task_dir, max_steps=2, num_evals=1)), store, progress=False)
    args = ["surgery", trained.uid, "--store", str(store.path)]
    assert main([*args, "-s", "transplant source=self layers=0 heads=0<-1", "-s", "init modules=pooler"]) == 0
    out = capsys.readouterr().out
    assert "heads=0<-1" in out and "init modules=pooler" in out
    surgeries = store.runs(kind="surgery")
    assert len(surgeries) == 3 and surgeries[-1].spec["surgery"]["base_run"] == trained.uid
    assert main(["runs", "--store", str(store.path)]) == 0 and "init modules=pooler" in capsys.readouterr().out

    for surgery, message in [
        ("init layers=9", "layer 9 does not exist; bert has layers 0-1"),
        ("reinit layers=1", "each step starts with one of init, transplant"),
        ("init layers=0 heads=5", "head 5 does not exist; bert has heads 0-1"),
        ("transplant source=self layers=0 colour=red", "unknown key 'colour'"),
        ("init patterns=nothing*", "matches no parameter"),
        ("transplant source=/no/such/folder layers=0", "folder /no/such/folder does not exist"),
        ("transplant run=nope layers=0", "no run 'nope'"),
    ]:
        assert main([*args, "-s", surgery]) == 2, surgery
        assert message in capsys.readouterr().err, surgery
    assert main([*args, "--split", "test", "-s", "init layers=0"]) == 2
    assert "no labelled split 'test'; labelled splits: train, dev" in capsys.readouterr().err
    assert main(["surgery", surgeries[0].uid, "--store", str(store.path), "-s", "init layers=0"]) == 2
    assert "surgery needs a finished training run" in capsys.readouterr().err


def test_parse_surgery_steps():
    steps = parse_surgery("init layers=top:2 roles=q,k scheme=uniform a=0.1 + transplant source=minilm layers=5<-0")
    (op1, rule), (op2, step) = steps
    assert op1 == "init" and rule.select == {"layers": "top:2", "roles": ["q", "k"]} and rule.options == {"a": 0.1}
    assert op2 == "transplant" and step.source == "minilm" and step.layers == "5<-0"
    with pytest.raises(UserError, match="'layers' is not key=value"):
        parse_surgery("init layers")
