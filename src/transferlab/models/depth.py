"""A depth axis: keep only the first k transformer layers of a Hugging Face model (``model.num_layers``).

The layer stack is found through the family's layer schema (``encoder.layer`` in BERT, ``h`` in
GPT-2, ``layers`` in ViT), cut to its first k layers, and ``config.num_hidden_layers`` set to k,
so the model, its hidden states and everything that counts layers agree. Lu et al. (2021) vary
depth this way; randomly initialised models keep the same first k layers for a given seed.
"""

from __future__ import annotations

from torch import nn

from transferlab.errors import ModelError, SpecError


def keep_first_layers(model: nn.Module, k: int | None) -> nn.Module:
    """``model`` (a Hugging Face base model) with only its first ``k`` layers; unchanged when k is None."""
    if k is None:
        return model
    from transferlab.models.schema import SCHEMAS

    model_type = str(model.config.model_type)
    if model_type not in SCHEMAS:
        raise ModelError(f"model.num_layers: no layer schema for model type {model_type!r}, so its layers "
                         f"cannot be found; families with one: {', '.join(SCHEMAS.names())}")
    path = SCHEMAS.get(model_type).layer_prefix.format(i=0).rstrip(".").rpartition(".")[0]
    layers = model.get_submodule(path)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(layers):
        raise SpecError(f"model.num_layers: {k!r} must be an integer in 1..{len(layers)} (the model's layers)")
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent), attr, nn.ModuleList(list(layers)[:k]))
    model.config.num_hidden_layers = k
    return model
