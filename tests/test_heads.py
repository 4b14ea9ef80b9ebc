"""Every registered head on tiny-bert: it learns, it serves regression, padding changes nothing."""

import pytest
import torch
import torch.nn.functional as F

from transferlab.data.task import Task
from transferlab.errors import DataError, SpecError
from transferlab.models import HEADS, TokenAdapter, VectorAdapter, build_head, build_model
from transferlab.spec import HeadSpec, ModelSpec, RunSpec

B, T = 8, 12


def make_task(problem="classification", modality="text", **kw) -> Task:
    n = 3 if problem == "classification" else 1
    return Task(name="t", splits={}, problem=problem, num_labels=n, metrics=("accuracy",),
                main_metric="accuracy", modality=modality, **kw)


def make_model(head: str, backbone: str = "tiny-bert", problem: str = "classification", seed: int = 0, **options):
    spec = RunSpec(seed=seed, model=ModelSpec(name=backbone), head=HeadSpec(name=head, options=options))
    return build_model(spec, make_task(problem))


def batch(seed: int = 0):
    """Random token ids with [CLS] first, right-padded to T with lengths 3..12."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (B, T), generator=g)
    ids[:, 0] = 101
    lengths = torch.tensor([12, 10, 8, 6, 5, 12, 3, 9])
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    return ids * mask, mask


def train(model, target, loss_fn, steps=40, lr=3e-3) -> list[float]:
    """Adam on everything but the word embeddings (their 1M-element updates dominate CPU time).
    Dropout draws from the global generator: seeded here, so the result does not depend on test order."""
    torch.manual_seed(0)
    ids, mask = batch()
    model.backbone.model.get_input_embeddings().weight.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn(model(ids, mask), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", HEADS.names())
def test_head_learns_classification(name):
    model = make_model(name)
    ids, mask = batch()
    out = model(ids, mask)
    assert out.shape == (B, 3)
    y = torch.randint(0, 3, (B,), generator=torch.Generator().manual_seed(1))
    losses = train(model, y, F.cross_entropy)
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.parametrize("name", HEADS.names())
def test_head_learns_regression(name):
    model = make_model(name, problem="regression")
    y = torch.randn(B, 1, generator=torch.Generator().manual_seed(2))
    losses = train(model, y, F.mse_loss)
    assert model(*batch()).shape == (B, 1)
    assert losses[-1] < 0.6 * losses[0], losses


def _padding_change(model) -> float:
    model.eval()
    ids, mask = batch()
    pad = torch.zeros(B, 7, dtype=torch.long)
    with torch.no_grad():
        a = model(ids, mask)
        b = model(torch.cat([ids, pad], 1), torch.cat([mask, pad], 1))
    return float((a - b).abs().max())


@pytest.mark.parametrize("name", HEADS.names())
def test_head_padding_invariant(name):
    model = make_model(name)
    with torch.no_grad():  # move off the init so the test does not pass by symmetry
        for p in model.head.parameters():
            p.add_(0.3 * torch.randn_like(p))
    assert _padding_change(model) <= 1e-5


@pytest.mark.parametrize("backbone", ["tiny-roberta", "tiny-gpt2"])
@pytest.mark.parametrize("name", ["cls", "concat_pool", "bilstm"])
def test_padding_invariant_other_families(backbone, name):
    assert _padding_change(make_model(name, backbone)) <= 1e-5


# Heads that do not read a fixed position: moving the padding to the left must not change them either.
POSITION_FREE = ["mean", "max", "mean_max", "concat_pool", "attention", "conv1d", "lstm", "bilstm", "layer_mix"]


@pytest.mark.parametrize("name", POSITION_FREE)
def test_pooling_left_or_right_padding(name):
    torch.manual_seed(0)
    head = build_head(name, hidden_size=16, num_layers=2, num_outputs=2, dropout=0.0).eval()
    lengths = torch.tensor([5, 2, 7])
    right = (torch.arange(7)[None] < lengths[:, None]).long()
    hs_right = tuple(torch.randn(3, 7, 16) * right[..., None] for _ in range(3))
    left = right.flip(1)
    hs_left = tuple(
        torch.stack([torch.roll(h[i], int(7 - lengths[i]), 0) for i in range(3)]) for h in hs_right
    )
    with torch.no_grad():
        assert torch.allclose(head(hs_right, right), head(hs_left, left), atol=1e-5)


def test_mean_and_max_ignore_padding_values():
    h = torch.tensor([[[1.0], [3.0], [100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    mean = build_head("mean", 1, 0, 1, 0.0)
    mx = build_head("max", 1, 0, 1, 0.0)
    assert torch.allclose(mean.pool((h,), mask), torch.tensor([[2.0]]))
    assert torch.allclose(mx.pool((h,), mask), torch.tensor([[3.0]]))
    concat = build_head("concat_pool", 1, 0, 1, 0.0)
    assert torch.allclose(concat.pool((h,), mask), torch.tensor([[3.0, 3.0, 2.0]]))  # last real, max, mean


def test_feature_widths():
    widths = {"mean_max": 2 * 32, "concat_pool": 3 * 32, "last_k_cls": 3 * 32, "cls": 32, "bilstm": 32}
    for name, width in widths.items():
        assert build_head(name, 32, 2, 3, 0.1).features == width, name
    assert build_head("last_k_cls", 32, 6, 3, 0.1).features == 4 * 32  # default k = 4
    assert build_head("last_k_cls", 32, 6, 3, 0.1, {"k": 2}).features == 2 * 32
    assert build_head("lstm", 32, 2, 3, 0.1, {"hidden": 8}).features == 8
    assert build_head("conv1d", 32, 2, 3, 0.1, {"channels": 5, "kernel_size": 5}).features == 5


def test_unknown_option_is_a_spec_error():
    with pytest.raises(SpecError, match=r"head\.options\.kernel.*allowed options: k \(default 4\)"):
        make_model("last_k_cls", kernel=3)
    with pytest.raises(SpecError, match=r"head\.options\.k.*allowed options: none"):
        make_model("mean", k=2)


@pytest.mark.parametrize("name,options,field", [
    ("last_k_cls", {"k": 9}, "k"), ("conv1d", {"kernel_size": 0}, "kernel_size"),
    ("layer_mix", {"pool": "max"}, "pool"), ("lstm", {"hidden": "big"}, "hidden"),
])
def test_bad_option_value_is_a_spec_error(name, options, field):
    with pytest.raises(SpecError, match=rf"head\.options\.{field}"):
        build_head(name, 32, 2, 3, 0.1, options)


def test_unknown_head_and_bad_dropout():
    with pytest.raises(SpecError, match=r"head\.name.*unknown head 'nope'"):
        make_model("nope")
    with pytest.raises(SpecError, match=r"head\.dropout"):
        build_head("cls", 32, 2, 3, 1.5)


def test_pooler_head_starts_from_pretrained_pooler():
    model = make_model("pooler", "minilm")
    pooler = model.backbone.pooler.dense
    assert model.head.from_pretrained
    assert torch.equal(model.head.dense.weight, pooler.weight)
    assert model.head.dense.weight.data_ptr() != pooler.weight.data_ptr()  # a copy, not shared
    cls = make_model("cls", "minilm")
    assert not torch.equal(cls.head.dense.weight, pooler.weight)
    gpt = make_model("pooler", "tiny-gpt2")  # no pooler in GPT-2: a new dense layer
    assert not gpt.head.from_pretrained


def test_head_init_is_seeded():
    a, b, c = (make_model("attention", seed=s) for s in (0, 0, 1))
    assert torch.equal(a.head.out.weight, b.head.out.weight)
    assert not torch.equal(a.head.out.weight, c.head.out.weight)


def test_parameter_names():
    names = [n for n, _ in make_model("layer_mix").named_parameters()]
    assert all(n.startswith(("backbone.model.", "head.")) for n in names)
    assert "backbone.model.encoder.layer.0.attention.self.query.weight" in names
    assert "head.weights" in names and "head.out.weight" in names
    assert make_model("mean").num_layers == 2
    keys = make_model("pooler").state_dict().keys()  # every tensor under one name (safetensors refuses aliases)
    assert all(k.startswith(("backbone.model.", "head.")) for k in keys)


def test_vector_and_token_adapters():
    spec = RunSpec(model=ModelSpec(name="tiny-bert"), head=HeadSpec(name="mean"))
    vec = build_model(spec, make_task(modality="vectors", input_dim=5))
    assert isinstance(vec.input_adapter, VectorAdapter)
    w = vec.input_adapter.proj.weight  # (32, 5), orthogonal columns
    assert torch.allclose(w.T @ w, torch.eye(5), atol=1e-5)
    assert vec(inputs=torch.randn(2, 7, 5)).shape == (2, 3)
    assert any(n.startswith("input_adapter.") for n, _ in vec.named_parameters())
    tok = build_model(spec, make_task(modality="tokens", vocab_size=20))
    assert isinstance(tok.input_adapter, TokenAdapter)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    tok.eval()
    with torch.no_grad():
        out = tok(inputs=torch.randint(0, 20, (2, 4)), attention_mask=mask)
    assert out.shape == (2, 3)
    with pytest.raises(DataError, match="input_dim"):
        build_model(spec, make_task(modality="vectors"))
    with pytest.raises(DataError, match=r"\(B, T, 5\)"):
        vec(inputs=torch.randn(2, 7, 4))


def test_every_registered_head_is_documented():
    """docs/methods/heads.md has a table row for every pooling head (``last`` included) and names the
    token and span heads."""
    from pathlib import Path

    from transferlab.models.token_heads import KIND_HEADS

    text = (Path(__file__).resolve().parents[1] / "docs" / "methods" / "heads.md").read_text()
    missing = [h for h in HEADS.primary_names() if f"\n| `{h}` |" not in text]
    assert not missing, f"heads without a row in docs/methods/heads.md: {missing}"
    assert all(f"`{k}`" in text for k in KIND_HEADS.names())
