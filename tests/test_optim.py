"""Optimizers against hand-computed updates and torch.optim.AdamW."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from transferlab.errors import SpecError
from transferlab.recipes.optim import OPTIMIZERS, AdaBelief, AdamW, build_optimizer
from transferlab.spec import OptimSpec

P0 = np.array([0.5, -1.0, 2.0, 0.0])
GRADS = [np.array([0.1, -0.2, 0.3, -0.4]), np.array([-0.3, 0.1, 0.2, 0.05]),
         np.array([0.2, 0.2, -0.1, 0.3]), np.array([0.05, -0.5, 0.4, -0.1])]
LR, B1, B2, EPS = 0.1, 0.9, 0.999, 1e-8


def run_torch(opt_cls, grads=GRADS, **kw) -> list[np.ndarray]:
    """The parameter after each step, feeding the given gradients (float64)."""
    p = torch.nn.Parameter(torch.tensor(P0, dtype=torch.float64))
    opt = opt_cls([p], **kw)
    out = []
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        out.append(p.detach().numpy().copy())
    return out


def hand_adam(bias_correction: bool, wd: float) -> list[np.ndarray]:
    """Written out step by step: decoupled decay, then (bias-corrected or not) Adam."""
    p, m, v, out = P0.copy(), np.zeros(4), np.zeros(4), []
    for t, g in enumerate(GRADS, start=1):
        p = p - LR * wd * p
        m = B1 * m + (1 - B1) * g
        v = B2 * v + (1 - B2) * g * g
        if bias_correction:
            p = p - LR * (m / (1 - B1**t)) / (np.sqrt(v / (1 - B2**t)) + EPS)
        else:
            p = p - LR * m / (np.sqrt(v) + EPS)
        out.append(p)
    return out


def hand_bert_adam(wd: float) -> list[np.ndarray]:
    """BERT's own form: update = m / (sqrt(v) + eps) + wd * p; p -= lr * update."""
    p, m, v, out = P0.copy(), np.zeros(4), np.zeros(4), []
    for g in GRADS:
        m = B1 * m + (1 - B1) * g
        v = B2 * v + (1 - B2) * g * g
        p = p - LR * (m / (np.sqrt(v) + EPS) + wd * p)
        out.append(p)
    return out


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_bertadam_matches_hand_computation(wd):
    got = run_torch(AdamW, lr=LR, betas=(B1, B2), eps=EPS, weight_decay=wd, bias_correction=False)
    for a, b, c in zip(got, hand_bert_adam(wd), hand_adam(False, wd)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
        np.testing.assert_allclose(a, c, rtol=0, atol=1e-12)


def test_bertadam_first_step_is_scaled_by_the_missing_bias_correction():
    # step 1: m = (1-b1) g, v = (1-b2) g^2, so the update is lr * (1-b1)/sqrt(1-b2) * sign(g) (eps aside):
    # about 3.16 times AdamW's lr * sign(g) for betas (0.9, 0.999)
    got = run_torch(AdamW, grads=GRADS[:1], lr=LR, betas=(B1, B2), eps=0.0, bias_correction=False)[0]
    np.testing.assert_allclose(P0 - got, LR * (1 - B1) / math.sqrt(1 - B2) * np.sign(GRADS[0]), atol=1e-12)
    got = run_torch(AdamW, grads=GRADS[:1], lr=LR, betas=(B1, B2), eps=0.0, bias_correction=True)[0]
    np.testing.assert_allclose(P0 - got, LR * np.sign(GRADS[0]), atol=1e-12)


def test_bertadam_and_adamw_differ_exactly_by_the_bias_correction_factors():
    # with eps = 0 and no decay, m and v do not depend on p, so each step's update differs by (1-b1^t)/sqrt(1-b2^t)
    kw = {"lr": LR, "betas": (B1, B2), "eps": 0.0}
    bert = [P0] + run_torch(AdamW, bias_correction=False, **kw)
    torch_adamw = [P0] + run_torch(torch.optim.AdamW, weight_decay=0.0, **kw)
    for t in range(1, len(GRADS) + 1):
        factor = (1 - B1**t) / math.sqrt(1 - B2**t)
        np.testing.assert_allclose(bert[t] - bert[t - 1], factor * (torch_adamw[t] - torch_adamw[t - 1]),
                                   rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_our_adamw_with_bias_correction_matches_hand_computation(wd):
    got = run_torch(AdamW, lr=LR, betas=(B1, B2), eps=EPS, weight_decay=wd, bias_correction=True)
    for a, b in zip(got, hand_adam(True, wd)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_our_adamw_matches_torch_adamw_float32_with_groups():
    torch.manual_seed(0)
    shapes = [(5, 3), (7,), (2, 2, 2)]
    a = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    b = [torch.nn.Parameter(x.detach().clone()) for x in a]

    def groups(ps):
        return [{"params": ps[:2], "lr": 1e-2, "weight_decay": 0.05}, {"params": ps[2:], "lr": 3e-3, "weight_decay": 0.0}]

    ours = AdamW(groups(a), betas=(0.9, 0.98), eps=1e-6)
    ref = torch.optim.AdamW(groups(b), betas=(0.9, 0.98), eps=1e-6, foreach=False)
    for _ in range(6):
        for x, y in zip(a, b):
            g = torch.randn_like(x)
            x.grad, y.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


def hand_adabelief(wd: float, eps: float) -> list[np.ndarray]:
    p, m, s, out = P0.copy(), np.zeros(4), np.zeros(4), []
    for t, g in enumerate(GRADS, start=1):
        p = p - LR * wd * p
        m = B1 * m + (1 - B1) * g
        s = B2 * s + (1 - B2) * (g - m) ** 2 + eps
        p = p - LR * (m / (1 - B1**t)) / (np.sqrt(s / (1 - B2**t)) + eps)
        out.append(p)
    return out


@pytest.mark.parametrize("wd, eps", [(0.0, 1e-16), (0.1, 1e-8)])
def test_adabelief_matches_hand_computation(wd, eps):
    got = run_torch(AdaBelief, lr=LR, betas=(B1, B2), eps=eps, weight_decay=wd)
    for a, b in zip(got, hand_adabelief(wd, eps)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_frozen_parameters_get_no_state_and_do_not_move(name):
    live = torch.nn.Parameter(torch.ones(3))
    frozen = torch.nn.Parameter(torch.ones(3), requires_grad=False)
    groups = [{"params": [live, frozen], "lr": 0.1, "weight_decay": 0.1}]
    opt = build_optimizer(groups, OptimSpec(name=name, lr=0.1, weight_decay=0.1))
    for _ in range(3):
        (live * torch.arange(3.0)).sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert frozen.grad is None
    assert frozen not in opt.state or not opt.state[frozen]
    assert torch.equal(frozen.detach(), torch.ones(3))
    assert live in opt.state and not torch.equal(live.detach(), torch.ones(3))


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_reduces_a_quadratic_and_keeps_group_lrs(name):
    torch.manual_seed(0)
    target = torch.randn(8)
    p = torch.nn.Parameter(torch.zeros(8))
    spec = OptimSpec(name=name, lr=0.1, weight_decay=0.0)
    opt = build_optimizer([{"params": [p], "lr": 0.1, "weight_decay": 0.0, "name": "g"}], spec)
    start = float(((p - target) ** 2).sum().detach())
    for _ in range(50):
        opt.zero_grad()
        ((p - target) ** 2).sum().backward()
        opt.step()
    assert float(((p - target) ** 2).sum().detach()) < 0.5 * start
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["name"] == "g"


@pytest.mark.parametrize("cls, kw", [(AdamW, {"bias_correction": False}), (AdaBelief, {})])
def test_state_dict_round_trip_continues_identically(cls, kw):
    torch.manual_seed(0)
    grads = [torch.randn(4) for _ in range(6)]
    a = torch.nn.Parameter(torch.randn(4))
    opt = cls([a], lr=0.01, weight_decay=0.01, **kw)
    for g in grads[:3]:
        a.grad = g.clone()
        opt.step()
    b = torch.nn.Parameter(a.detach().clone())
    opt_b = cls([b], lr=0.01, weight_decay=0.01, **kw)
    opt_b.load_state_dict(copy.deepcopy(opt.state_dict()))  # load_state_dict shares tensors
    for g in grads[3:]:
        a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        opt_b.step()
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_build_optimizer_picks_torch_adamw_and_sgd_momentum():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer([{"params": [p]}], OptimSpec(name="adamw", lr=1e-3, betas=(0.8, 0.9), eps=1e-6))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"] is True  # fused on the CPU too
    assert opt.param_groups[0]["betas"] == (0.8, 0.9) and opt.param_groups[0]["eps"] == 1e-6
    opt = build_optimizer([{"params": [p]}], OptimSpec(name="sgd"))
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    opt = build_optimizer([{"params": [p]}], OptimSpec(name="bertadam"))
    assert isinstance(opt, AdamW) and opt.defaults["bias_correction"] is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_adamw_is_fused_and_matches_ours():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(64, device="cuda"))
    b = torch.nn.Parameter(a.detach().clone())
    fused = build_optimizer([{"params": [a], "lr": 1e-2, "weight_decay": 0.1}], OptimSpec(name="adamw"), "cuda")
    assert fused.defaults["fused"] is True
    ours = AdamW([{"params": [b], "lr": 1e-2, "weight_decay": 0.1}])
    for _ in range(5):
        g = torch.randn(64, device="cuda")
        a.grad, b.grad = g.clone(), g.clone()
        fused.step()
        ours.step()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kw, field", [({"name": "lamb"}, "optim.name"), ({"betas": (0.9, 1.0)}, "optim.betas"),
                                       ({"eps": -1.0}, "optim.eps"), ({"max_grad_norm": 0.0}, "optim.max_grad_norm")])
def test_bad_spec_raises_spec_error_naming_the_field(kw, field):
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(SpecError, match=field):
        build_optimizer([{"params": [p]}], OptimSpec(**kw))
