"""Backbones: aliases build, MiniLM loads offline, random init is seeded, bad ids fail clearly."""

import pytest
import torch

from transferlab.errors import ModelError, SpecError
from transferlab.models import TINY_ALIASES, load_backbone
from transferlab.spec import ModelSpec

QUERY = "encoder.layer.0.attention.self.query.weight"


@pytest.mark.parametrize("name", TINY_ALIASES)
def test_tiny_aliases_build(name):
    bb = load_backbone(ModelSpec(name=name))
    assert (bb.hidden_size, bb.num_layers) == (32, 2)
    assert bb.family == name.removeprefix("tiny-")
    if name == "tiny-vit":
        hidden, mask = bb(pixel_values=torch.randn(2, 3, 32, 32))
        assert len(hidden) == 3 and hidden[-1].shape == (2, 65, 32) and mask.shape == (2, 65)
    elif name == "tiny-wav2vec2":
        hidden, mask = bb(input_values=torch.randn(2, 1600))
        assert bb.tokenizer is None and hidden[-1].shape[-1] == 32
    else:
        enc = bb.tokenizer(["a short one", "a somewhat longer sentence here"], ["and a pair"] * 2,
                           padding=True, return_tensors="pt")
        hidden, mask = bb(**enc)
        assert len(hidden) == 3
        assert all(h.shape == (*enc["input_ids"].shape, 32) for h in hidden)
        assert torch.equal(mask, enc["attention_mask"])


def test_text_backbone_inputs_embeds_and_default_mask():
    bb = load_backbone(ModelSpec(name="tiny-bert"))
    hidden, mask = bb(inputs_embeds=torch.randn(2, 5, 32))
    assert len(hidden) == 3 and torch.equal(mask, torch.ones(2, 5, dtype=torch.long))


def test_minilm_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bb = load_backbone(ModelSpec(name="minilm"))
    assert (bb.family, bb.hidden_size, bb.num_layers) == ("bert", 384, 6)
    assert bb.pooler is not None
    enc = bb.tokenizer(["Transfer learning is useful.", "Hello"], padding=True, return_tensors="pt")
    bb.eval()
    with torch.no_grad():
        hidden, _ = bb(**enc)
    assert len(hidden) == 7 and all(h.shape[-1] == 384 for h in hidden)
    # pretrained, not random: a checkpoint's query weights are far from N(0, 0.02)
    assert bb.model.state_dict()[QUERY].std() > 0.03


def test_random_init_differs_and_is_seeded():
    weights = {}
    for key, init, seed in [("pre", "pretrained", 0), ("r0", "random", 0), ("r0b", "random", 0), ("r1", "random", 1)]:
        weights[key] = load_backbone(ModelSpec(name="minilm", init=init), seed=seed).model.state_dict()[QUERY]
    assert not torch.equal(weights["pre"], weights["r0"])
    assert torch.equal(weights["r0"], weights["r0b"])
    assert not torch.equal(weights["r0"], weights["r1"])
    assert abs(weights["r0"].std().item() - 0.02) < 0.005  # config.initializer_range


def test_tiny_pretrained_is_a_fixed_checkpoint():
    a = load_backbone(ModelSpec(name="tiny-bert"), seed=0).model.state_dict()[QUERY]
    b = load_backbone(ModelSpec(name="tiny-bert"), seed=5).model.state_dict()[QUERY]
    c = load_backbone(ModelSpec(name="tiny-bert", init="random"), seed=5).model.state_dict()[QUERY]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_dropout_override():
    bert = load_backbone(ModelSpec(name="tiny-bert", dropout=0.0)).config
    assert bert.hidden_dropout_prob == 0.0 and bert.attention_probs_dropout_prob == 0.0
    gpt = load_backbone(ModelSpec(name="tiny-gpt2", dropout=0.2)).config
    assert gpt.resid_pdrop == gpt.attn_pdrop == gpt.embd_pdrop == 0.2
    assert load_backbone(ModelSpec(name="tiny-bert")).config.hidden_dropout_prob == 0.1
    with pytest.raises(SpecError, match="model.dropout"):
        load_backbone(ModelSpec(name="tiny-bert", dropout=1.0))


def test_unknown_id_offline_is_a_model_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as err:
        load_backbone(ModelSpec(name="no-such-org/no-such-model"))
    msg = str(err.value)
    assert "not found locally" in msg and "offline" in msg and "hub" in msg
    assert "model.name: /path/to/folder" in msg


def test_missing_folder_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_backbone(ModelSpec(name=str(tmp_path / "nope")))
    with pytest.raises(ModelError, match="no config.json"):
        load_backbone(ModelSpec(name=str(tmp_path)))


def test_local_folder_round_trip(tmp_path):
    bb = load_backbone(ModelSpec(name="tiny-roberta"))
    bb.model.save_pretrained(tmp_path)
    bb.tokenizer.save_pretrained(tmp_path)
    again = load_backbone(ModelSpec(name=str(tmp_path), local_files_only=True))
    assert again.family == "roberta" and again.tokenizer is not None
    enc = bb.tokenizer(["one pair", "two"], ["of texts", "three"], padding=True, return_tensors="pt")
    assert "token_type_ids" not in enc  # RoBERTa has no segment table; BERT's segment ids are dropped
    bb.eval(), again.eval()
    with torch.no_grad():
        assert torch.allclose(bb(**enc)[0][-1], again(**enc)[0][-1], atol=1e-6)


def test_max_length_checked_against_positions():
    with pytest.raises(SpecError, match=r"model\.max_length: 600 exceeds the 512"):
        load_backbone(ModelSpec(name="tiny-roberta", max_length=600))
    bb = load_backbone(ModelSpec(name="tiny-roberta", max_length=512))
    ids = torch.randint(1000, 30000, (1, 512))
    assert bb(ids)[0][-1].shape == (1, 512, 32)  # the longest input fits RoBERTa's offset positions
