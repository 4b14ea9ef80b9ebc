"""The LSTM baseline of Lu et al. (2021): the transformer's place taken by stacked LSTMs.

``model.name: lstm`` (3 layers of width 384, MiniLM's hidden size, so the input adapter and the
head are the same layers as with MiniLM) or ``lstm-<width>``; ``model.num_layers`` sets the depth,
``model.dropout`` the dropout between layers (default 0.1). Always randomly initialised and
seeded by the run seed: ``model.init`` must be ``random``. It behaves like a :class:`Backbone`:
every layer's outputs and the mask come back, so every head, the input adapters and the loop work
unchanged. Text inputs go through its own token table with MiniLM's tokenizer. The layers run
left to right over right-padded batches, so a real token never sees padding.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from transferlab.errors import SpecError

NAME = re.compile(r"^lstm(?:-(\d+))?$")
DEFAULT_WIDTH, DEFAULT_LAYERS = 384, 3
VOCAB_SIZE = 30522  # MiniLM's WordPiece vocabulary (its tokenizer reads text for the LSTM)


class LSTMModel(nn.Module):
    """A token table (for text) and ``num_layers`` single-layer LSTMs, dropout between them."""

    def __init__(self, vocab_size: int, hidden: int, num_layers: int, dropout: float):
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, hidden)
        nn.init.normal_(self.embeddings.weight, std=0.02)
        self.layers = nn.ModuleList(nn.LSTM(hidden, hidden, batch_first=True) for _ in range(num_layers))
        self.dropout = nn.Dropout(dropout)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def forward(self, inputs_embeds: Tensor) -> tuple[Tensor, ...]:
        x = self.dropout(inputs_embeds)
        hidden = [x]
        for i, layer in enumerate(self.layers):
            x, _ = layer(x)
            if i < len(self.layers) - 1:
                x = self.dropout(x)
            hidden.append(x)
        return tuple(hidden)


class LSTMBackbone(nn.Module):
    """The :class:`~transferlab.models.backbone.Backbone` interface around :class:`LSTMModel`."""

    family = "lstm"
    _args = frozenset({"inputs_embeds", "input_ids", "attention_mask"})

    def __init__(self, model: LSTMModel, tokenizer, max_length: int):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.hidden_size = model.embeddings.embedding_dim
        self.num_layers = len(model.layers)
        self.max_length = max_length
        self.config = SimpleNamespace(model_type="lstm", hidden_size=self.hidden_size,
                                      num_hidden_layers=self.num_layers, initializer_range=0.02)

    @property
    def pooler(self) -> None:
        return None

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, inputs_embeds: Tensor | None = None,
                ) -> tuple[tuple[Tensor, ...], Tensor]:
        if inputs_embeds is None:
            inputs_embeds = self.model.embeddings(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        return self.model(inputs_embeds), attention_mask


def is_lstm(name: str) -> bool:
    return NAME.match(name) is not None


def load_lstm(spec, seed: int) -> LSTMBackbone:
    """The LSTM baseline named by ``spec.name`` (a ModelSpec), seeded by ``seed``."""
    import transformers as tf

    from transferlab.models.common import minilm_path, seeded

    if spec.init != "random":
        raise SpecError(f"model.init: {spec.name} has no pretrained weights; set model.init: random")
    width = int(NAME.match(spec.name).group(1) or DEFAULT_WIDTH)
    layers = spec.num_layers if spec.num_layers is not None else DEFAULT_LAYERS
    if layers < 1 or width < 1:
        raise SpecError(f"model.num_layers: the LSTM needs at least one layer, got {layers}")
    dropout = 0.1 if spec.dropout is None else spec.dropout
    if not 0.0 <= dropout < 1.0:
        raise SpecError(f"model.dropout: {dropout} is not a probability in [0, 1)")
    try:  # MiniLM's tokenizer, for text tasks; input adapters need none
        tokenizer = tf.AutoTokenizer.from_pretrained(minilm_path())
    except ImportError:
        tokenizer = None
    model = seeded(seed, lambda: LSTMModel(VOCAB_SIZE, width, layers, dropout))
    return LSTMBackbone(model, tokenizer, spec.max_length)
