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
    family = _family(model, "model.num_layers")
    if not family.reorderable:  # ALBERT: one shared layer run num_hidden_layers times; run it k times
        n = int(model.config.num_hidden_layers)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
            raise SpecError(f"model.num_layers: {k!r} must be an integer in 1..{n} (the model's layers)")
        model.config.num_hidden_layers = k
        return model
    n = len(_layer_stack(model, "model.num_layers")[1])
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise SpecError(f"model.num_layers: {k!r} must be an integer in 1..{n} (the model's layers)")
    keep_layers(model, list(range(k)), field="model.num_layers")
    return model


def keep_layers(model: nn.Module, layers: list[int], field: str = "layers") -> None:
    """Keep only ``layers`` (in this order) of a Hugging Face model (a base model, or one with a head
    such as BertForMaskedLM), in place, config included; ``field`` names the option in errors."""
    base, stack = _layer_stack(model, field)
    path = _stack_path(base)
    if not layers or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(stack) for i in layers):
        raise SpecError(f"{field}: {layers} must list layer indices in 0-{len(stack) - 1} (the model's layers)")
    parent, _, name = path.rpartition(".")
    (base.get_submodule(parent) if parent else base).register_module(name, nn.ModuleList([stack[i] for i in layers]))
    base.config.num_hidden_layers = len(layers)
    for i, layer in enumerate(base.get_submodule(path)):  # attention modules that know their index
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = i


def _stack_path(base: nn.Module) -> str:
    from transferlab.models.schema import SCHEMAS

    return SCHEMAS.get(str(base.config.model_type)).layer_stack()


def _family(model: nn.Module, field: str):
    from transferlab.models.schema import SCHEMAS

    model_type = str(getattr(model, "base_model", model).config.model_type)
    if model_type not in SCHEMAS:
        raise ModelError(f"{field}: no layer schema for model type {model_type!r}, so its layers "
                         f"cannot be found; supported model types: {', '.join(SCHEMAS.names())}")
    return SCHEMAS.get(model_type)


def _layer_stack(model: nn.Module, field: str) -> tuple[nn.Module, nn.ModuleList]:
    """The base model and its layer list, found through the family's layer schema."""
    family = _family(model, field)
    base = getattr(model, "base_model", model)
    if not family.reorderable:
        raise ModelError(f"{field}: {family.name} layers share their weights, so they cannot be cut or "
                         "reordered; use model.num_layers to run the first k")
    return base, base.get_submodule(_stack_path(base))
