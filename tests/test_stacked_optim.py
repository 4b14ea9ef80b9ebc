"""The stacked optimizer path (#22): one pass per parameter where torch's fused kernel can take it, launch counts
of clipping + the optimizer step that do not grow with the number of seeds S, ``optim.state_dtype: bf16`` for
seed-stacked runs (its own recipe field) and its refusal elsewhere, one line, exit 2, before any row."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import tiny_spec_dict, write_sentiment_csv

from transferlab.cli import main
from transferlab.recipes.optim import AdamW, _adam_eager, build_optimizer
from transferlab.spec import OptimSpec, load_spec, run_id, spec_hash
from transferlab.store import Store
from transferlab.train.compute import StackedTrainee
from transferlab.train.loop import run_seeds

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _stacked_params(seeds: int, dtype=torch.float32) -> list[torch.nn.Parameter]:
    """Stacked tensors of a small two-layer shape, each with a leading seed dimension, and gradients."""
    g = torch.Generator().manual_seed(0)
    shapes = [(8, 4), (8,), (3, 8), (3,)]
    params = [torch.nn.Parameter(torch.randn(seeds, *s, generator=g, dtype=dtype)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=dtype)
    return params


@pytest.mark.parametrize("bias_correction", [False, True], ids=["bertadam", "adamw"])
def test_one_pass_fused_update_equals_the_written_out_update(bias_correction):
    """torch's fused kernel with step = inf and rescaled lr/eps/wd is the written-out (eager) update, float64."""
    fused_p = _stacked_params(3, torch.float64)
    eager_p = [torch.nn.Parameter(p.detach().clone()) for p in fused_p]
    fused = AdamW(fused_p, lr=0.05, weight_decay=0.1, bias_correction=bias_correction)
    ms = [torch.zeros_like(p) for p in eager_p]
    vs = [torch.zeros_like(p) for p in eager_p]
    for t in range(1, 5):
        for a, b in zip(fused_p, eager_p):
            a.grad = torch.randn(a.shape, dtype=torch.float64)
            b.grad = a.grad.clone()
        fused.step()
        c1, c2 = (1 - 0.9**t, 1 - 0.999**t) if bias_correction else (1.0, 1.0)
        for p, m, v in zip(eager_p, ms, vs):
            _adam_eager(p.data, p.grad, m, v, torch.empty_like(p), 0.05, 0.9, 0.999, 1e-8, 0.1, c1, c2)
    for a, b in zip(fused_p, eager_p):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert fused.state[fused_p[0]]["step"] == 4


def test_zero_learning_rate_moves_nothing_but_the_moments():
    """A warmup's first step has lr 0: the one-pass update must not divide by it (decay lr * wd is 0 too)."""
    params = _stacked_params(2)
    before = [p.detach().clone() for p in params]
    opt = AdamW(params, lr=0.0, weight_decay=0.01, bias_correction=False)
    opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert all(bool(opt.state[p]["exp_avg"].abs().sum() > 0) for p in params)


@pytest.mark.parametrize("name", ["adamw", "bertadam", "adabelief"])
def test_bf16_states_follow_fp32_states_closely(name):
    """optim.state_dtype: bf16 keeps m and v in bf16 (half the state memory) and moves the weights as fp32
    states do, to within bf16's rounding of the moments."""
    ref, low = _stacked_params(2), _stacked_params(2)
    opts = [build_optimizer([{"params": ps}], OptimSpec(name=name, lr=1e-2, state_dtype=dt), "cpu")
            for ps, dt in ((ref, "fp32"), (low, "bf16"))]
    start = [p.detach().clone() for p in ref]
    for _ in range(5):
        for a, b in zip(ref, low):
            a.grad = torch.randn(a.shape)
            b.grad = a.grad.clone()
        for opt in opts:
            opt.step()
    state = opts[1].state[low[0]]
    assert {t.dtype for k, t in state.items() if k != "step"} == {torch.bfloat16}
    for a, b, s in zip(ref, low, start):
        moved = (a - s).abs().max()
        assert moved > 1e-2 and (a - b).abs().max() < 0.05 * moved  # bf16 moments: ~3 significant digits


def _launches(seeds: int, name: str, max_norm: float | None) -> int:
    """Operators recorded by the profiler (every event, nested ones too) for clipping + one optimizer step."""
    params = _stacked_params(seeds)
    module = torch.nn.Module()
    for i, p in enumerate(params):
        module.register_parameter(f"p{i}", p)
    trainee = StackedTrainee.__new__(StackedTrainee)  # only clip(): its module, seeds and device
    trainee.module, trainee.device = module, torch.device("cpu")
    module.seeds = seeds
    opt = build_optimizer([{"params": params}], OptimSpec(name=name, lr=1e-3, max_grad_norm=max_norm), "cpu")
    trainee.clip(max_norm, opt)
    opt.step()  # states exist: the next step is a steady one
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        trainee.clip(max_norm, opt)
        opt.step()
    return len(prof.events())


@pytest.mark.parametrize("name", ["adamw", "bertadam", "adabelief"])
@pytest.mark.parametrize("max_norm", [1.0, None], ids=["clip", "no-clip"])
def test_clip_and_step_launch_the_same_operators_for_2_and_8_seeds(name, max_norm):
    counts = {s: _launches(s, name, max_norm) for s in (2, 8)}
    assert counts[2] == counts[8] > 0, counts


def test_clip_scales_each_seed_by_its_own_norm_and_skips_the_pass_without_a_limit():
    params = _stacked_params(3)
    module = torch.nn.Module()
    for i, p in enumerate(params):
        module.register_parameter(f"p{i}", p)
    trainee = StackedTrainee.__new__(StackedTrainee)
    trainee.module, trainee.device, module.seeds = module, torch.device("cpu"), 3
    before = [p.grad.clone() for p in params]
    norms = trainee.clip(None, None)
    want = torch.stack([torch.cat([g[s].flatten() for g in before]).norm() for s in range(3)])
    torch.testing.assert_close(norms, want)
    assert all(torch.equal(p.grad, g) for p, g in zip(params, before))
    trainee.clip(1.0, None)
    after = torch.stack([torch.cat([p.grad[s].flatten() for p in params]).norm() for s in range(3)])
    torch.testing.assert_close(after, torch.clamp(want, max=1.0), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------- optim.state_dtype as a recipe field


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_sentiment_csv(tmp_path_factory.mktemp("sopt") / "toy", n_train=40, n_dev=16)


def _spec_dict(data, **optim) -> dict:
    d = tiny_spec_dict(data, epochs=1, batch_size=16, num_evals=1, log_every=1)
    d["model"].update(init="random", max_length=16)
    d["train"].update(max_steps=3, device="cpu")
    d["optim"].update(optim)
    return d


def test_state_dtype_is_a_recipe_field_fp32_keeps_old_run_ids(data):
    plain = load_spec(_spec_dict(data))
    fp32 = load_spec(_spec_dict(data, state_dtype="fp32"))
    bf16 = load_spec(_spec_dict(data, state_dtype="bf16"))
    assert spec_hash(plain) == spec_hash(fp32) and run_id(plain) == run_id(fp32)
    assert spec_hash(bf16) != spec_hash(fp32) and run_id(bf16) != run_id(fp32)


def test_bf16_states_train_seed_stacked(data, tmp_path):
    specs = [load_spec(_spec_dict(data, name="bertadam", lr=3e-3, state_dtype="bf16"), {"seed": s}) for s in (0, 1)]
    seen = []

    class Look:
        seed_stacked = True

        def on_train_start(self, model, optimizer, total):
            seen.append(optimizer)

    results = run_seeds(specs, Store(tmp_path / "b.db"), progress=False, hooks=[Look()])
    assert [r.status for r in results] == ["finished", "finished"]
    states = [s for s in seen[0].state.values() if "exp_avg" in s]
    assert states and all(s["exp_avg"].dtype == torch.bfloat16 == s["exp_avg_sq"].dtype for s in states)
    assert states[0]["exp_avg"].shape[0] == 2  # the stacked (S, ...) moments


@pytest.mark.parametrize("optim, words", [({"state_dtype": "bf16"}, ["single engine"]),
                                          ({"state_dtype": "bf16", "name": "sgd"}, ["'sgd'", "state_dtype"])],
                         ids=["single-run", "sgd"])
def test_bf16_states_refused_one_line_exit_2_before_any_row(optim, words, data, tmp_path, capsys):
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(yaml.safe_dump(_spec_dict(data, **optim)))
    store = tmp_path / "r.db"
    assert main(["run", str(spec_file), "--store", str(store)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.state_dtype" in err[0] and all(w in err[0] for w in words), err
    assert not store.exists() or Store(store).runs() == []


def test_bf16_states_refused_in_a_study_whose_seeds_run_alone(data, tmp_path, capsys):
    base = _spec_dict(data, state_dtype="bf16")
    study = {"study": "s", "base": base, "seeds": [0, 1], "arms": {"a": {"optim.lr": 3e-3}}}
    spec_file = tmp_path / "study.yaml"
    spec_file.write_text(yaml.safe_dump(study))
    store = tmp_path / "r.db"
    assert main(["run", str(spec_file), "--store", str(store), "--seed-parallel", "off"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.state_dtype" in err[0], err
    assert not store.exists() or Store(store).runs() == []
