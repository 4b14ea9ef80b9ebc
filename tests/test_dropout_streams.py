"""models/dropout_streams.py: each run's own dropout stream (train.dropout_rng: run, issue 24).

The stacked equivalence (slots at dropout 0, 0.1 and 0.3 store what their runs store alone) is in
test_slots.py; the resume of a run's stream from its checkpoint in test_freeze.py. Here: the streams drop what
they should (hidden states, attention probabilities, head) and nothing when evaluating."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transferlab.data.task import Task
from transferlab.errors import SpecError
from transferlab.models import build_model
from transferlab.models.dropout_streams import StreamDropout, dropout_probs, install_streams
from transferlab.spec import HeadSpec, ModelSpec, RunSpec, load_spec
from transferlab.train.validate import check_dropout_rng


def tiny(dropout: float, head_dropout: float = 0.0):
    task = Task(name="t", splits={}, problem="classification", num_labels=2, metrics=("accuracy",),
                main_metric="accuracy", label_names=["a", "b"], modality="text")
    spec = RunSpec(seed=0, model=ModelSpec(name="tiny-bert", dropout=dropout),
                   head=HeadSpec(name="cls", dropout=head_dropout))
    torch.manual_seed(0)
    return build_model(spec, task).double()


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[2:, 9:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def streamed(model, probs=None, seed=7):
    model.backbone.use_layer_loop()
    model.dropout_streams = install_streams({"": model}, [probs or dropout_probs(model)], [seed], torch.device("cpu"),
                                            configs=[model.backbone.config])
    return model


def test_every_dropout_module_draws_from_the_stream_and_evaluation_is_the_plain_function():
    plain, mine = tiny(0.2, 0.2), streamed(tiny(0.2, 0.2))
    assert not any(type(m) is nn.Dropout for m in mine.modules())
    assert sum(isinstance(m, StreamDropout) for m in mine.modules()) == sum(
        isinstance(m, nn.Dropout) for m in plain.modules()) > 0
    plain.eval(), mine.eval()
    with torch.no_grad():
        torch.testing.assert_close(mine(**batch()), plain(**batch()), rtol=1e-10, atol=1e-10)
    mine.train()
    torch.manual_seed(0)
    with torch.no_grad():
        a = mine(**batch())
        torch.manual_seed(0)  # the global generator does not decide the masks
        b = mine(**batch())
    assert not torch.equal(a, b)  # the stream moved on
    again = streamed(tiny(0.2, 0.2)).train()
    with torch.no_grad():
        torch.testing.assert_close(again(**batch()), a, rtol=0, atol=0)  # same seed, same masks


@pytest.mark.parametrize("where", ["attention.self.dropout", "attention.output.dropout", "head."])
def test_each_kind_of_dropout_is_drawn_alone(where):
    """Only the attention probabilities' dropout (drawn by stream_attention), only a hidden-state dropout, only
    the head's: each changes the training output, at the other probabilities 0."""
    model = tiny(0.3, 0.3)
    probs = {k: (p if where in k and (where != "head." or k.startswith("head.")) else 0.0)
             for k, p in dropout_probs(model).items()}
    assert any(probs.values())
    model = streamed(model, probs).train()
    with torch.no_grad():
        assert not torch.equal(model(**batch()), model(**batch()))
    off = streamed(tiny(0.3, 0.3), dict.fromkeys(probs, 0.0)).train()
    with torch.no_grad():
        assert torch.equal(off(**batch()), off(**batch()))


def test_the_stream_flag_is_refused_where_a_draw_would_escape_it():
    base = {"model": {"name": "tiny-bert"}, "train": {"dropout_rng": "run"}}
    check_dropout_rng(load_spec(base))
    cases = [({"model": {"name": "tiny-gpt2"}}, "layer_loop"),
             ({"train": {"dropout_rng": "run", "checkpoint_layers": True}}, "checkpoint_layers"),
             ({"freeze": {"name": "lora"}}, "LoRA"),
             ({"train": {"dropout_rng": "run", "engine": "fused"}}, "engine fused")]
    for over, word in cases:
        with pytest.raises(SpecError, match=f"train.dropout_rng: run: .*{word}"):
            check_dropout_rng(load_spec({**base, **over}))
    with pytest.raises(SpecError, match="dropout_rng"):
        load_spec({"train": {"dropout_rng": "slot"}})
