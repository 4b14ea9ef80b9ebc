"""The seed-stacked path of the one engine (train/loop.py) against sequential runs, in float64 on CPU.

S seeds trained together must store what S sequential ``run`` calls store: the same curve (loss,
LR, gradient norm per step), evaluations, summary and final weights, to a relative 1e-8. Dropout
is 0 (with dropout the masks come from a different random stream: statistically, not bitwise,
equivalent). Every head, BERTAdam and AdamW, layer-wise LR decay and freezing are covered.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_spec_dict, write_sentiment_csv
from safetensors.torch import load_file

from transferlab.models.heads import HEADS
from transferlab.spec import load_spec, run_id
from transferlab.store import Store
from transferlab.train.loop import Unsupported, run, run_seeds
from transferlab.train.support import unsupported

RTOL = 1e-8


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_sentiment_csv(tmp_path_factory.mktemp("par") / "toy", n_train=40, n_dev=16)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def specs(data, seeds=(0, 1, 2), **over):
    d = tiny_spec_dict(data, epochs=1, batch_size=16, num_evals=2, log_every=1)
    d["model"].update(init="random", dropout=0.0, max_length=16)
    d["head"]["dropout"] = 0.0
    d["train"].update(max_steps=4, device="cpu")  # the equivalence is a CPU float64 property
    overrides = {k: v for k, v in over.items()}
    return [load_spec(d, {**overrides, "seed": s}) for s in seeds]


def close(a, b, what):
    assert (a is None) == (b is None), what
    if a is None:
        return
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            close(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{what}[{i}]")
    elif isinstance(a, float) and not isinstance(b, str):
        assert math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-12) or (math.isnan(a) and math.isnan(b)), (what, a, b)
    else:
        assert a == b, (what, a, b)


def assert_same_runs(seq: Store, par: Store, rids: list[str], weights: bool = True):
    for rid in rids:
        (a,), (b,) = seq.runs(run_id=rid), par.runs(run_id=rid)
        assert (a.status, a.spec, a.seed, a.name) == (b.status, b.spec, b.seed, b.name)
        assert (a.n_params, a.n_trainable) == (b.n_params, b.n_trainable)
        close(seq.curve(a.uid), par.curve(b.uid), f"{rid} curve")
        close(seq.evals(a.uid), par.evals(b.uid), f"{rid} evals")
        # the same record but for the engine that ran it and the time it took
        skip = ("engine", "samples_per_s")
        close({k: v for k, v in a.summary.items() if k not in skip},
              {k: v for k, v in b.summary.items() if k not in skip}, f"{rid} summary")
        assert a.summary.engine.kind == "single" and b.summary.engine.kind in ("stacked", "fused")
        assert a.error == b.error and a.error_step == b.error_step
        assert b.provenance["engine"]["kind"] in ("stacked", "fused") and b.provenance["engine"]["seeds"] >= 1
        if weights and a.status == "finished":
            wa = load_file(str(seq.artifact_dir(a.uid) / "model.safetensors"))
            wb = load_file(str(par.artifact_dir(b.uid) / "model.safetensors"))
            assert wa.keys() == wb.keys()
            for k in wa:
                torch.testing.assert_close(wb[k], wa[k], rtol=RTOL, atol=1e-12, msg=f"{rid} {k}")


def check(data, tmp_path, seeds=(0, 1, 2), **over):
    runs = specs(data, seeds, **over)
    seq, par = Store(tmp_path / "seq.db"), Store(tmp_path / "par.db")
    for spec in runs:
        run(spec, seq, progress=False)
    results = run_seeds(runs, par, progress=False)
    assert [r.run_id for r in results] == [r.run_id for r in (seq.runs(run_id=r.run_id)[0] for r in results)]
    assert_same_runs(seq, par, [r.run_id for r in results])
    return seq, par, results


OPTIM = {"bertadam": {"optim.name": "bertadam"}, "adamw": {"optim.name": "adamw"}}


@pytest.mark.parametrize("head", sorted(HEADS.names()))
def test_every_head_matches_sequential_runs(head, data, tmp_path, float64):
    # alternate the optimizer and layer-wise decay over the heads: every head, both optimizers, decay on and off
    i = sorted(HEADS.names()).index(head)
    over = {"head.name": head, "optim.name": ("bertadam", "adamw")[i % 2], "optim.layer_decay": (1.0, 0.8)[i // 2 % 2]}
    _, par, results = check(data, tmp_path, **over)
    assert all(r.status == "finished" for r in results)
    first, last = par.curve(results[0].uid)[0], par.curve(results[0].uid)[-1]
    assert first[1] != last[1]  # it trained


@pytest.mark.parametrize("optim", ["bertadam", "adamw"])
def test_layer_decay_and_freezing_match(optim, data, tmp_path, float64):
    for policy, extra in [("backbone_for_steps", {"freeze.steps": 2}), ("gradual", {"freeze.options": {"every_steps": 1}}),
                          ("bitfit", {}), ("fpt", {}), ("linear_probe", {})]:
        sub = tmp_path / policy
        sub.mkdir()
        _, _, results = check(data, sub, **{"optim.name": optim, "optim.layer_decay": 0.7, "freeze.name": policy,
                                                **extra})
        assert all(r.status == "finished" for r in results)


@pytest.mark.parametrize("over", [
    {"model.name": "tiny-roberta", "head.name": "mean", "train.length_bucketing": True, "train.grad_accum": 2},
    {"model.name": "tiny-gpt2", "head.name": "last", "optim.name": "bertadam", "optim.max_grad_norm": None},
    {"task.problem": "regression", "head.name": "cls", "optim.layer_decay": 0.5, "optim.head_lr": 1e-2},
    {"task": {"name": "bit_xor", "options": {"num_train": 40, "num_dev": 16, "num_test": 16, "length": 4}},
     "head.name": "last", "train.batch_size": 8},
    {"task": {"name": "digits", "options": {"patch_size": 4}}, "task.max_train_samples": 48, "task.max_eval_samples": 16,
     "head.name": "mean", "input_adapter.positions": "new", "model.name": "tiny-gpt2"},
], ids=["roberta-bucketing-accum", "gpt2-last-noclip", "regression-headlr", "bit_xor-vectors", "digits-gpt2-positions"])
def test_families_tasks_and_inputs_match(over, data, tmp_path, float64):
    _, _, results = check(data, tmp_path, seeds=(3, 5), **over)
    assert all(r.status == "finished" for r in results)


def test_seeds_stop_early_at_their_own_steps(data, tmp_path, float64):
    over = {"train.max_steps": 10, "train.num_evals": 10, "train.early_stopping_patience": 2, "optim.lr": 1e-3,
            "task.problem": "regression"}
    _, _, results = check(data, tmp_path, seeds=(0, 1, 2, 3), **over)
    steps = [r.steps for r in results]
    assert len(set(steps)) >= 3 and max(steps) == 10 and min(steps) < 10  # they left the stack one by one


def test_a_diverged_seed_leaves_the_others_untouched(data, tmp_path, float64):
    over = {"train.max_steps": 12, "train.num_evals": 4, "train.divergence_factor": 1.1, "optim.lr": 1e-2}
    _, par, results = check(data, tmp_path, seeds=(0, 1, 4), **over)
    assert [r.status for r in results] == ["diverged", "finished", "diverged"]
    assert "loss exploded at step 3" in par.runs(run_id=results[0].run_id)[0].error
    assert results[1].steps == 12


def test_study_executor_uses_the_engine_transparently(tmp_path, float64):
    """Acceptance 2: a 2-arm x 8-seed study stores the same results with and without the engine."""
    from conftest import tiny_study_dict

    from transferlab.study.runner import run_study
    from transferlab.study.spec import load_study

    d = tiny_study_dict(write_sentiment_csv(tmp_path / "toy", n_train=64, n_dev=32), seeds=range(8))
    d["base"]["model"]["dropout"] = 0.0
    d["base"]["head"]["dropout"] = 0.0
    d["base"]["train"]["device"] = "cpu"
    study = load_study(d)
    stores = {mode: Store(tmp_path / f"{mode}.db") for mode in ("off", "on")}
    for mode, store in stores.items():
        result = run_study(study, store, seed_parallel=mode, out=lambda line: None)
        assert (result.executed, result.failed) == (16, 0)
    off, on = stores["off"], stores["on"]
    rids = sorted(r.run_id for r in off.runs(study=study.study))
    assert len(rids) == 16 and rids == sorted(r.run_id for r in on.runs(study=study.study))
    assert all(r.provenance["engine"]["kind"] == "single" and "group_seeds" not in r.provenance for r in off.runs())
    # one group: both arms' 8 seeds as 16 slots, seed-major (issue 24)
    assert {tuple(r.provenance["group_seeds"]) for r in on.runs()} == {tuple(s for s in range(8) for _ in "ab")}
    assert_same_runs(off, on, rids, weights=False)


def test_groups_and_refusals(data, tmp_path):
    from transferlab.study.jobs import Job
    from transferlab.study.seed_groups import seed_groups

    runs = specs(data, seeds=(0, 1, 2)) + specs(data, seeds=(0, 1), **{"optim.name": "bertadam"})
    jobs = [Job(i, s, "st", str(tmp_path / "s.db")) for i, s in enumerate(runs)]
    # AdamW and BERTAdam arms are slots of one group (issue 24: bias correction per slot), seed-major as planned
    assert [[j.index for j in g] for g in seed_groups(jobs, "on")] == [[0, 1, 2, 3, 4]]
    assert [[j.index for j in g] for g in seed_groups(jobs, "off")] == [[i] for i in range(5)]
    assert [[j.index for j in g] for g in seed_groups(jobs, "auto")] == [[i] for i in range(5)]  # auto: CUDA only
    # what the engine refuses, it says why; such groups run one by one
    assert unsupported(runs) is None
    assert unsupported(specs(data, seeds=(0,)) + specs(data, seeds=(1,), **{"head.name": "mean"})).startswith(
        "head.name: the runs differ")
    assert "share a seed" in unsupported(specs(data, seeds=(1, 1)))
    assert "lora" in unsupported(specs(data, seeds=(0, 1), **{"freeze.name": "lora"}))
    assert "vit family" in unsupported(specs(data, seeds=(0, 1), **{"model.name": "tiny-vit"}))
    lstm = specs(data, seeds=(0, 1), **{"model.name": "lstm", "model.init": "random"})
    assert "lstm family" in unsupported(lstm)
    lstm_jobs = [Job(i, s, "st", "x") for i, s in enumerate(lstm)]
    with pytest.raises(Unsupported, match="lstm family does not declare 'stackable'"):
        seed_groups(lstm_jobs, "on")  # asked for explicitly: refused, naming the part and the flag
    assert [[j.index for j in g] for g in seed_groups(lstm_jobs, "auto")] == [[0], [1]]
    assert "seed_stacked" in unsupported(specs(data, seeds=(0, 1), **{"freeze.name": "lora"}))  # the flag is named
    with pytest.raises(Unsupported, match="distill"):
        run_seeds(specs(data, seeds=(0, 1), **{"distill.kind": "kd", "distill.teacher": str(tmp_path)}),
                  Store(tmp_path / "s.db"))


def test_unpadded_batches_match(tmp_path, float64):
    """Batches without padding take the no-mask path (SDPA's fastest kernel on CUDA)."""
    from transferlab.bench import make_data
    from transferlab.models.backbone import load_backbone
    from transferlab.spec import ModelSpec

    tok = load_backbone(ModelSpec(name="tiny-bert")).tokenizer
    data = make_data(tmp_path / "same_length", tok, 40, 12)
    _, _, results = check(data, tmp_path, seeds=(0, 2), **{"model.max_length": 12, "head.name": "mean_max"})
    assert all(r.status == "finished" for r in results)


@pytest.mark.slow
def test_compiled_runs_match_eager(data, tmp_path, recwarn):
    """train.compile: the single run and the engine compile (no eager fallback) and train as eager does."""
    eager = specs(data, seeds=(0, 1))
    fast = specs(data, seeds=(0, 1), **{"train.compile": True})
    stores = {name: Store(tmp_path / f"{name}.db") for name in ("eager", "compiled")}
    from torch._dynamo.utils import counters

    for name, runs in (("eager", eager), ("compiled", fast)):
        counters.clear()
        run(runs[0], stores[name], progress=False)
        run_seeds(runs, stores[name], progress=False, force=True)
    # the single run's model and the engine's encoder (our layer loop, no hidden-state hooks) trace unbroken
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] >= 2
    assert not [w for w in recwarn if "torch.compile failed" in str(w.message)]
    for a, b in zip(eager, fast):
        ca = [r.uid for r in stores["eager"].runs(run_id=run_id(a))]
        cb = [r.uid for r in stores["compiled"].runs(run_id=run_id(b))]
        assert len(ca) == len(cb) == (2 if a.seed == 0 else 1)  # seed 0: the single run, then seed-parallel
        for ua, ub in zip(ca, cb):
            la = [row[1] for row in stores["eager"].curve(ua)]
            lb = [row[1] for row in stores["compiled"].curve(ub)]
            assert lb == pytest.approx(la, rel=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fp32_matches_sequential_runs(data, tmp_path):
    """On a GPU in fp32 (TF32 off): the stacked kernels against the plain ones, to float32 rounding."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    runs = specs(data, seeds=(0, 1, 2), **{"train.device": "cuda", "train.precision": "fp32", "head.name": "mean"})
    seq, par = Store(tmp_path / "seq.db"), Store(tmp_path / "par.db")
    for spec in runs:
        run(spec, seq, progress=False)
    results = run_seeds(runs, par, progress=False)
    assert [r.status for r in results] == ["finished"] * 3
    for r in results:
        a = [row[1] for row in seq.curve(seq.runs(run_id=r.run_id)[0].uid)]
        b = [row[1] for row in par.curve(r.uid)]
        assert b == pytest.approx(a, rel=1e-4)
