"""The stacked model's own layer loop (train/stacked.py) against the library's forward.

For the BERT family the seed-parallel engine calls the embeddings and layers itself instead of the
model's forward (whose hidden-state hooks break torch.compile's graphs). Each seed's hidden states
must be those its own model computes through Hugging Face's forward, padding included.
"""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from transferlab.models.backbone import load_backbone
from transferlab.models.common import minilm_path
from transferlab.models.heads import build_head
from transferlab.models.model import TransferModel
from transferlab.spec import ModelSpec
from transferlab.train.stacked import StackedModel

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _electra(folder) -> str:
    """A small random ELECTRA (embedding width 16 != hidden 32: the projection is in the loop)."""
    tf.ElectraConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     embedding_size=16, vocab_size=30522).save_pretrained(folder)
    tf.AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    return str(folder)


def _model(name: str, seed: int) -> TransferModel:
    backbone = load_backbone(ModelSpec(name=name, init="random", max_length=16), seed=seed)
    torch.manual_seed(seed)
    return TransferModel(backbone, build_head("mean", backbone.hidden_size, backbone.num_layers, 2, 0.0))


@pytest.mark.parametrize("family", ["tiny-bert", "tiny-roberta", "electra"])
def test_own_layer_loop_reproduces_each_seeds_library_forward(family, tmp_path, float64):
    name = _electra(tmp_path / "electra") if family == "electra" else family
    models = [_model(name, seed) for seed in (0, 1, 2)]
    reference = [_model(name, seed).eval() for seed in (0, 1, 2)]  # untouched copies (the stack keeps models[0])
    stack = StackedModel(models[0], seeds=3)
    for slot in (1, 2):
        stack.load_slot(slot, models[slot])
    stack.eval()
    assert stack.own_loop
    hooked = [m for m in stack.backbone.model.modules()
              if any("output_capturing" in getattr(h, "__qualname__", "") for h in m._forward_hooks.values())]
    assert not hooked  # the stacked copy carries no capture hooks (the template keeps its own)

    torch.manual_seed(0)
    ids = torch.randint(1000, 2000, (3, 4, 9))
    mask = torch.ones(3, 4, 9, dtype=torch.long)
    mask[:, 1, 5:] = 0  # padded rows
    mask[2, 3, 2:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    types = torch.zeros_like(ids)
    types[:, :, 4:] = 1
    flat = {"input_ids": ids.flatten(0, 1), "attention_mask": mask.flatten(0, 1), "token_type_ids": types.flatten(0, 1)}
    stack.rows.per_seed = 4
    use_types = flat["token_type_ids"] if stack.backbone._use_token_types else None
    with torch.no_grad():
        hidden = stack._encode(flat["input_ids"], None, use_types, stack._mask_arg(flat["attention_mask"]),
                               False)
    assert len(hidden) == models[0].num_layers + 1
    for seed, ref in enumerate(reference):
        with torch.no_grad():
            expected, _ = ref.backbone(ids[seed], mask[seed], types[seed])
        for layer, (h, e) in enumerate(zip(hidden, expected)):
            got = h.reshape(3, 4, *h.shape[1:])[seed]
            torch.testing.assert_close(got, e, rtol=1e-10, atol=1e-10, msg=f"{family} seed {seed} hidden {layer}")


def test_backbone_layer_loop_equals_library_forward_and_skips_other_families(float64):
    """``Backbone.use_layer_loop`` (taken by compiled single runs) keeps the function and drops the hooks."""
    model = _model("tiny-bert", 4).eval()
    ids = torch.randint(1000, 2000, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    with torch.no_grad():
        before, _ = model.backbone(ids, mask)
        assert model.backbone.use_layer_loop()
        after, returned_mask = model.backbone(ids, mask)
    assert torch.equal(returned_mask, mask) and len(after) == len(before)
    for b, a in zip(before, after):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert not any("output_capturing" in getattr(h, "__qualname__", "")
                   for m in model.backbone.model.modules() for h in m._forward_hooks.values())
    assert not _model("tiny-gpt2", 0).backbone.use_layer_loop()  # causal family: the library's forward
    with torch.no_grad():  # the library's own forward, called directly, still gathers its hidden states
        direct = model.backbone.model(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(direct) == len(before)
    torch.testing.assert_close(direct[-1], before[-1], rtol=1e-10, atol=1e-10)
