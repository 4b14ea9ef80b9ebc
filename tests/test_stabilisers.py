"""Stabilisers: the defining property of each (against a hand computation on fixed inputs), the spec
checks, and a short learning run of each through the training loop."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_spec_dict, write_sentiment_csv
from torch import nn

from transferlab.cli import main
from transferlab.errors import ModelError, SpecError
from transferlab.recipes import stabilisers as st
from transferlab.recipes.hooks import Hook
from transferlab.spec import StabiliserSpec, load_spec
from transferlab.store import Store
from transferlab.train.loop import run

pytestmark = pytest.mark.usefixtures("one_thread")


class HF(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.lin = nn.Linear(6, 6)

    def get_input_embeddings(self):
        return self.emb


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = HF()
        self.family = "toy"


class Toy(nn.Module):
    """backbone.* (pretrained: Embedding + Linear) and a new head, like a TransferModel."""

    def __init__(self):
        super().__init__()
        self.backbone = Backbone()
        self.head = nn.Linear(6, 3)
        self.input_adapter = None

    def forward(self, input_ids):
        h = torch.tanh(self.backbone.model.lin(self.backbone.model.emb(input_ids))).mean(1)
        return self.head(h)


def toy_data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 11, (n, 5), generator=g)
    return x, x[:, 0] % 3


def train_steps(model, hooks, steps=5, lr=0.05, wd=0.0):
    x, y = toy_data()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    for h in hooks:
        h.on_train_start(model, opt, steps)
    losses = []
    for step in range(steps):
        for h in hooks:
            h.on_step_start(step)
        logits = model(input_ids=x)
        loss = F.cross_entropy(logits, y)
        for h in hooks:
            if hasattr(h, "on_loss"):
                loss = h.on_loss({"input_ids": x}, y, logits, loss)
        loss.backward()
        for h in hooks:
            h.on_before_optimizer_step(model, step)
        opt.step()
        opt.zero_grad()
        for h in hooks:
            h.on_after_optimizer_step(model, step)  # the engine's convention: the update's index, from 0
        losses.append(float(loss.detach()))
    return losses


def test_mixout_expectation_is_the_weight_and_its_gradient_is_the_chain_rule():
    torch.manual_seed(0)
    w, w0, p = torch.randn(2), torch.randn(2), 0.3
    expectation = torch.zeros(2)
    for bits in itertools.product([0.0, 1.0], repeat=2):  # every mask, weighted by its probability
        mask = torch.tensor(bits)
        prob = float(torch.prod(torch.where(mask == 1, p, 1 - p)))
        expectation += prob * st.mixout(w, w0, mask, p)
    torch.testing.assert_close(expectation, w)
    # the hook: during the step the weights are the mix; at eval (after the step) the raw weights, whose
    # expectation over masks the mix is; the gradient is that of mixout w.r.t. the raw weight
    model = Toy()
    hook = st.Mixout(p=0.5)
    hook.seed(0, "cpu")
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    hook.on_train_start(model, opt, 1)
    (name, weight), = hook.params.items()
    assert name == "backbone.model.lin.weight"  # Linear weights of the backbone only: not the head
    raw, pre = weight.detach().clone(), hook.anchor[name]
    hook.on_step_start(0)
    mask = hook.masks[name]
    torch.testing.assert_close(weight.detach(), st.mixout(raw, pre, mask, 0.5))
    x, y = toy_data()
    F.cross_entropy(model(input_ids=x), y).backward()
    g_mixed = weight.grad.clone()
    hook.on_before_optimizer_step(model, 0)
    torch.testing.assert_close(weight.detach(), raw)
    w_leaf = raw.clone().requires_grad_(True)
    st.mixout(w_leaf, pre, mask, 0.5).backward(g_mixed)
    torch.testing.assert_close(weight.grad, w_leaf.grad)


def test_l2sp_gradient_is_strength_times_the_distance_to_the_pretrained_weights():
    model = Toy()
    hook = st.L2SP(strength=0.3)
    hook.on_train_start(model, None, 1)
    w0 = {n: p.detach().clone() for n, p in hook.params.items()}
    assert set(w0) == {"backbone.model.emb.weight", "backbone.model.lin.weight", "backbone.model.lin.bias"}
    with torch.no_grad():
        for p in hook.params.values():
            p.add_(torch.randn_like(p))
    penalty = hook.on_loss({}, None, None, torch.zeros(()))
    penalty.backward()
    for n, p in hook.params.items():
        torch.testing.assert_close(p.grad, 0.3 * (p.detach() - w0[n]))
    assert model.head.weight.grad is None


def test_child_tuning_d_mask_is_the_top_fisher_share_and_only_it_moves():
    torch.manual_seed(0)
    model = Toy()
    x, y = toy_data()
    batches = [({"input_ids": x[:12]}, y[:12]), ({"input_ids": x[12:]}, y[12:])]
    hook = st.ChildTuningD(batches=lambda: iter(batches), loss=F.cross_entropy, reserve_p=0.25)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = train_steps(model, [hook], steps=6)
    # the Fisher scores by hand: squared gradients of each batch's loss, summed
    ref = Toy()
    ref.load_state_dict({k: v for k, v in before.items()})
    fisher = {n: torch.zeros_like(p) for n, p in ref.named_parameters() if n.startswith("backbone.")}
    for inputs, labels in batches:
        ref.zero_grad()
        F.cross_entropy(ref(**inputs), labels).backward()
        for n in fisher:
            fisher[n] += dict(ref.named_parameters())[n].grad ** 2
    for n, f in fisher.items():
        torch.testing.assert_close(hook.scores[n], f)
    flat = torch.cat([f.flatten() for f in fisher.values()])
    k = round(0.25 * flat.numel())
    assert sum(int(m.sum()) for m in hook.masks.values()) == k
    threshold = torch.sort(flat, descending=True).values[k - 1]
    for n, p in model.named_parameters():
        moved = (p.detach() != before[n])
        if n.startswith("backbone."):
            assert torch.equal(hook.masks[n].bool(), fisher[n] >= threshold)
            assert not moved[hook.masks[n] == 0].any()  # outside the child network nothing moves (wd 0)
            assert moved[(hook.masks[n] == 1) & (fisher[n] > 0)].all()
        else:
            assert moved.all()  # the head trains as usual
    assert losses[-1] < losses[0]


def test_child_tuning_f_masks_gradients_with_bernoulli_and_rescales():
    model = Toy()
    hook = st.ChildTuningF(reserve_p=0.4)
    hook.seed(0, "cpu")
    hook.on_train_start(model, None, 1)
    x, y = toy_data()
    F.cross_entropy(model(input_ids=x), y).backward()
    grads = {n: p.grad.clone() for n, p in hook.params.items()}
    hook.on_before_optimizer_step(model, 0)
    kept, total = 0, 0
    for n, p in hook.params.items():
        nz = p.grad != 0
        torch.testing.assert_close(p.grad[nz], grads[n][nz] / 0.4)
        kept += int((nz & (grads[n] != 0)).sum())
        total += int((grads[n] != 0).sum())
    assert 0.3 < kept / total < 0.5  # about reserve_p of the gradient entries survive


def test_r3f_adds_lambda_times_the_symmetric_kl_of_noised_embeddings():
    logits, noised = torch.randn(4, 3), torch.randn(4, 3)
    p, q = logits.softmax(-1), noised.softmax(-1)
    hand = ((p * (p / q).log()).sum(-1) + (q * (q / p).log()).sum(-1)).mean()
    torch.testing.assert_close(st.symmetric_kl(logits, noised), hand)
    torch.testing.assert_close(st.symmetric_kl(logits, logits), torch.tensor(0.0))
    model = Toy()
    x, y = toy_data(8)
    for kind in ("normal", "uniform"):
        hook = st.R3F(noise=kind, eps=0.5, **{"lambda": 2.0})
        hook.seed(3, "cpu")
        hook.on_train_start(model, None, 1)
        logits = model(input_ids=x)
        out = hook.on_loss({"input_ids": x}, y, logits, torch.tensor(1.0))
        g = torch.Generator().manual_seed(3)  # the same noise by hand
        emb = model.backbone.model.emb(x)
        noise = st.embedding_noise(emb.shape, kind, 0.5, "cpu", emb.dtype, g)
        if kind == "uniform":
            assert noise.abs().max() <= 0.5
        h = torch.tanh(model.backbone.model.lin(emb + noise)).mean(1)
        torch.testing.assert_close(out, 1.0 + 2.0 * st.symmetric_kl(logits, model.head(h)))


def test_r3f_refuses_a_backbone_without_token_embeddings():
    model = Toy()
    model.backbone.model.get_input_embeddings = lambda: None
    with pytest.raises(ModelError, match="r3f needs a text backbone"):
        st.R3F().on_train_start(model, None, 1)


def test_ema_and_swa_average_as_by_hand_and_evaluation_uses_the_average():
    torch.manual_seed(0)
    model = Toy()
    ema, swa = st.EMA(decay=0.8), st.SWA(start=0.5, every=1)
    seen = []

    class Record(st.Stabiliser):
        def on_after_optimizer_step(self, model, step):
            seen.append([p.detach().clone() for p in model.parameters()])

    w_init = [p.detach().clone() for p in model.parameters()]
    train_steps(model, [Record(), ema, swa], steps=4)
    hand = w_init
    for w in seen:
        hand = [0.8 * a + 0.2 * b for a, b in zip(hand, w)]
    for a, b in zip(ema.avg, hand):
        torch.testing.assert_close(a, b)
    mean = [torch.stack(ws).mean(0) for ws in zip(*seen[1:])]  # steps 2, 3, 4 (start = 0.5 of 4 steps)
    assert swa.n == 3
    for a, b in zip(swa.avg, mean):
        torch.testing.assert_close(a, b)
    raw = [p.detach().clone() for p in model.parameters()]
    ema.on_eval_start(model)
    for p, a in zip(model.parameters(), hand):
        torch.testing.assert_close(p.detach(), a)
    ema.on_eval_end(model)
    for p, r in zip(model.parameters(), raw):
        assert torch.equal(p.detach(), r)
    ema.on_train_end(model)  # training over: the average is put in place before the final evaluations
    for p, a in zip(model.parameters(), hand):
        torch.testing.assert_close(p.detach(), a)


def test_spec_checks_are_one_line(tmp_path, capsys):
    with pytest.raises(SpecError, match="unknown stabiliser 'dropconnect'; known: .*mixout"):
        StabiliserSpec("dropconnect")
    for p in (1.0, -0.1, 1.5):
        with pytest.raises(SpecError, match=r"mixout\]\.options\.p: .* must lie in \[0, 1\)"):
            StabiliserSpec("mixout", {"p": p})
    with pytest.raises(SpecError, match="unknown option for 'l2sp'; allowed: strength"):
        StabiliserSpec("l2sp", {"alpha": 1})
    with pytest.raises(SpecError, match="noise"):
        StabiliserSpec("r3f", {"noise": "laplace"})
    with pytest.raises(SpecError, match="r3f does not support regression"):
        st.check_compatible([StabiliserSpec("r3f")], "regression", "none")
    with pytest.raises(SpecError, match="mixout does not run with freeze.name 'lora'"):
        st.check_compatible([StabiliserSpec("mixout")], "classification", "lora")
    assert not any(st.STABILISERS.supports(n, "seed_stacked") for n in st.STABILISERS.names())
    data = write_sentiment_csv(tmp_path / "toy", n_train=16, n_dev=8)
    path = tmp_path / "spec.yaml"
    import yaml

    for bad, msg in (([{"name": "mixout", "options": {"p": 1.0}}], "must lie in [0, 1)"),
                     ([{"name": "nope"}], "known:"),
                     ([{"name": "mixout"}], "does not run with freeze.name 'bitfit'")):
        path.write_text(yaml.safe_dump({**tiny_spec_dict(data), "stabilisers": bad, "freeze": {"name": "bitfit"}}))
        assert main(["run", str(path), "--store", str(tmp_path / "s.db"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1


def test_no_stabilisers_keeps_the_run_id():
    from transferlab.spec import run_id

    spec = load_spec({"name": "x"})
    assert run_id(spec) != run_id(load_spec({"name": "x", "stabilisers": [{"name": "ema"}]}))
    import json

    from transferlab.spec import spec_hash, to_dict

    # every section and field added since (stabilisers, multitask, intermediate, train.engine,
    # train.checkpoint_layers, optim.state_dtype, train.dropout_rng) left out
    data = {k: v for k, v in to_dict(spec).items()
            if k not in ("seed", "name", "stabilisers", "multitask", "intermediate")}
    del data["train"]["engine"], data["train"]["checkpoint_layers"], data["optim"]["state_dtype"]
    del data["train"]["dropout_rng"]
    import hashlib

    old = hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert spec_hash(spec) == old  # the hash of the recipe as before the section existed


@pytest.mark.parametrize("name, options", [
    # the tiny model is random-init, so its "pretrained" anchor is noise: L2-SP only at a small strength
    ("mixout", {"p": 0.1}), ("l2sp", {"strength": 1e-4}), ("child_tuning_d", {"reserve_p": 0.5}),
    ("child_tuning_f", {"reserve_p": 0.8}), ("r3f", {"eps": 1e-3}), ("ema", {"decay": 0.9}), ("swa", {"start": 0.5})])
def test_each_stabiliser_learns_through_the_loop(tmp_path, name, options):
    data = write_sentiment_csv(tmp_path / "toy", n_train=128, n_dev=40)
    d = tiny_spec_dict(data, epochs=6, num_evals=2, log_every=2, save_model=False)
    d["model"]["max_length"] = 16
    d["stabilisers"] = [{"name": name, "options": options}]
    store = Store(tmp_path / "s.db")
    result = run(load_spec(d), store, progress=False)
    assert result.status == "finished"
    curve = np.array(store.curve(result.uid), dtype=float)
    assert curve[-3:, 1].mean() < 0.85 * curve[:3, 1].mean()  # the training loss falls
    assert result.dev["accuracy"] > 0.6  # above chance (0.5) on the toy task


def test_seed_parallel_grouping_leaves_stabilised_recipes_sequential(tmp_path):
    from transferlab.study.jobs import Job
    from transferlab.study.seed_groups import seed_groups
    from transferlab.train.support import Unsupported

    data = write_sentiment_csv(tmp_path / "toy", n_train=16, n_dev=8)
    plain = [Job(i, load_spec(tiny_spec_dict(data), {"seed": i}), "s", str(tmp_path / "s.db"))
             for i in range(3)]
    assert [len(g) for g in seed_groups(plain, mode="on")] == [3]  # the engine would take these together
    d = {**tiny_spec_dict(data), "stabilisers": [{"name": "ema"}]}
    stabilised = [Job(i, load_spec(d, {"seed": i}), "s", str(tmp_path / "s.db")) for i in range(3)]
    with pytest.raises(Unsupported, match="'ema' does not declare 'seed_stacked'"):
        seed_groups(stabilised, mode="on")  # asked for explicitly: refused, naming the flag
    assert [len(g) for g in seed_groups(stabilised, mode="auto")] == [1, 1, 1]  # seed_stacked=False: one by one


class Trajectory(Hook):
    """Records the trainable weights at the start and after every optimizer step (names in order)."""

    def on_train_start(self, model, optimizer, total_steps):
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.steps = [[p.detach().clone() for p in model.parameters() if p.requires_grad]]

    def on_after_optimizer_step(self, model, step):
        self.steps.append([p.detach().clone() for p in model.parameters() if p.requires_grad])


@pytest.mark.parametrize("name, options", [("ema", {"decay": 0.8}), ("swa", {"start": 0.5, "every": 2})])
def test_ema_and_swa_change_the_stored_and_evaluated_weights(tmp_path, name, options):
    """Through the loop: training is the baseline's (same curve), but the stored model and the dev metric
    are those of the average, computed here by hand from the weights after every step."""
    from transferlab.data.build import build_task
    from transferlab.models.artifacts import load_run_model
    from transferlab.train.batches import encode
    from transferlab.train.evaluate import evaluate

    data = write_sentiment_csv(tmp_path / "toy", n_train=64, n_dev=40)
    base = tiny_spec_dict(data, epochs=1, num_evals=1, log_every=1)  # 4 steps of 16
    base["model"]["max_length"] = 16
    store = Store(tmp_path / "s.db")
    plain, traj = Trajectory(), Trajectory()
    baseline = run(load_spec(base), store, progress=False, hooks=[plain])
    averaged = run(load_spec({**base, "stabilisers": [{"name": name, "options": options}]}), store,
                   progress=False, hooks=[traj])
    assert baseline.status == averaged.status == "finished"
    steps = traj.steps
    assert len(steps) == 5 and all(torch.equal(a, b) for a, b in zip(plain.steps[-1], steps[-1]))  # same training
    if name == "ema":
        hand = [w.clone() for w in steps[0]]
        for ws in steps[1:]:
            hand = [0.8 * h + 0.2 * w for h, w in zip(hand, ws)]
    else:  # start 0.5 of 4 steps: the weights after steps 2 and 4 (every 2), equally weighted
        hand = [(a + b) / 2 for a, b in zip(steps[2], steps[4])]
    stored, task = load_run_model(store, averaged.uid)
    plain_model, _ = load_run_model(store, baseline.uid)
    state, plain_state = dict(stored.named_parameters()), dict(plain_model.named_parameters())
    bad = [n for n, h in zip(traj.names, hand) if not torch.allclose(state[n], h, atol=1e-6)]
    assert not bad, f"stored weights are not the {name} average: {bad[:3]}"
    assert any(not torch.allclose(state[n], plain_state[n]) for n in traj.names)  # not the baseline's weights
    dev = encode(build_task(load_spec(base).task).splits["dev"], task, stored.backbone.tokenizer, 16)
    assert evaluate(stored, dev, task, 16, torch.device("cpu")) == pytest.approx(averaged.dev)
    texts = build_task(load_spec(base).task).splits["dev"].texts[:8]
    with torch.no_grad():  # the evaluated model is not the baseline's: its outputs differ
        enc = stored.backbone.tokenizer(texts, padding=True, return_tensors="pt")
        assert not torch.allclose(stored.eval()(**enc), plain_model.eval()(**enc), atol=1e-4)
    assert store.curve(averaged.uid) == store.curve(baseline.uid)  # the average does not change training
