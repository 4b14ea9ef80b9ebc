"""The pretrained transformer a run fine-tunes: loading it and calling it.

``load_backbone(spec)`` resolves ``spec.name``:

* ``minilm``: the packaged all-MiniLM-L6-v2 (a 6-layer uncased BERT, hidden 384);
* ``tiny-bert``, ``tiny-roberta``, ``tiny-gpt2``, ``tiny-vit``, ``tiny-wav2vec2``: small configs
  (hidden 32, 2 layers, 2 heads, intermediate 64) built in-process for tests. Their "pretrained"
  weights are a fixed stand-in checkpoint (always seed ``TINY_PRETRAINED_SEED``), so only
  ``init: random`` depends on the run's seed, as with a real checkpoint. The text ones use
  MiniLM's tokenizer (vocab 30522, ``[PAD]`` = 0);
* ``antiberty`` (the packaged AntiBERTy, 8 x 512, amino-acid tokenizer) and ``antiberty-text`` (a text
  BERT of its shape with MiniLM's tokenizer, ``init: random`` only): models/antiberty.py;
* otherwise a local folder or a Hugging Face hub id (``AutoConfig``/``AutoModel``/``AutoTokenizer``).

``Backbone.forward`` returns every hidden state (embedding output first) and the attention mask.
"""

from __future__ import annotations

import inspect
import logging
import os
import types
from pathlib import Path
from typing import Any

import torch
import transformers as tf
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from transferlab.errors import ModelError, SpecError
from transferlab.models.common import minilm_path, seeded
from transferlab.models.schema import SCHEMAS, family_of
from transferlab.spec import ModelSpec

log = logging.getLogger(__name__)

TINY_PRETRAINED_SEED = 1234
# Config attributes that hold dropout probabilities, across families (BERT, GPT-2, wav2vec2, DistilBERT...).
_DROPOUT_KEYS = (
    "hidden_dropout_prob", "attention_probs_dropout_prob",  # BERT, RoBERTa, ViT
    "resid_pdrop", "embd_pdrop", "attn_pdrop",  # GPT-2
    "hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout",  # wav2vec2
    "dropout",  # DistilBERT, BART, ...
)


TINY_FAMILIES = {"tiny-bert": "bert", "tiny-roberta": "roberta", "tiny-gpt2": "gpt2", "tiny-vit": "vit",
                 "tiny-wav2vec2": "wav2vec2"}  # alias -> model_type; the config is the family map's ``tiny``
TEXT_FAMILIES = ("bert", "roberta", "gpt2")  # tiny aliases that read text (MiniLM's tokenizer)


def _tiny_config(name: str) -> tuple[tf.PretrainedConfig, bool]:
    """The config of a tiny alias (its FamilyMap's tiny config) and whether it is a text model."""
    model_type = TINY_FAMILIES[name]
    return SCHEMAS.get(model_type).tiny_config(model_type), model_type in TEXT_FAMILIES


TINY_ALIASES = tuple(TINY_FAMILIES)


def _offline(spec: ModelSpec) -> bool:
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return spec.local_files_only or env in ("1", "ON", "YES", "TRUE")


def _set_dropout(config: tf.PretrainedConfig, p: float | None) -> None:
    if p is None:
        return
    if not 0.0 <= p < 1.0:
        raise SpecError(f"model.dropout: {p} is not a probability in [0, 1)")
    for key in _DROPOUT_KEYS:
        if isinstance(getattr(config, key, None), float):
            setattr(config, key, p)


def _not_found(spec: ModelSpec, offline: bool, err: Exception) -> ModelError:
    why = (
        "the Hugging Face hub is offline (HF_HUB_OFFLINE=1 or model.local_files_only: true)"
        if offline
        else "the Hugging Face hub is unreachable or has no such model"
    )
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ModelError(
        f"model.name: {spec.name!r} was not found locally and {why}. "
        f"Download it where the hub is reachable and pass the local folder instead "
        f"(model.name: /path/to/folder), or use an alias (minilm, antiberty, {', '.join(TINY_ALIASES)}). [{first}]"
    )


def _load_tokenizer(source: str | Path, spec: ModelSpec, offline: bool):
    try:
        tok = tf.AutoTokenizer.from_pretrained(
            source, revision=spec.revision, local_files_only=offline, trust_remote_code=spec.trust_remote_code
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("no tokenizer for %s (%s); text inputs will not work with it", source, e)
        return None
    if tok.pad_token is None and tok.eos_token is not None:  # GPT-2 style: pad with EOS (masked anyway)
        tok.pad_token = tok.eos_token
    return tok


def load_backbone(spec: ModelSpec, seed: int = 0, check_length: bool = True) -> Backbone:
    """Load (or build, for ``init: random`` and tiny aliases) the base model and its tokenizer.

    ``lstm`` / ``lstm-<width>`` is the LSTM baseline (models/lstm.py); ``spec.num_layers`` keeps the
    first k layers (models/depth.py). ``check_length``: check ``spec.max_length`` against the position
    table (text tasks only: vector and token tasks do not tokenise, so they never use it)."""
    from transferlab.models.depth import keep_first_layers
    from transferlab.models.lstm import is_lstm, load_lstm

    if is_lstm(spec.name):
        return load_lstm(spec, seed)
    if spec.name in TINY_ALIASES or spec.name == "antiberty-text":
        model, tokenizer = _from_alias(spec, seed)
    else:
        model, tokenizer = _from_weights(spec, seed)
    return Backbone(keep_first_layers(model, spec.num_layers), tokenizer, spec.max_length, check_length)


def _from_alias(spec: ModelSpec, seed: int):
    """A tiny alias or ``antiberty-text``: built from its config (tiny ones pretrained-like from a fixed seed)."""
    if spec.name in TINY_ALIASES:
        config, text = _tiny_config(spec.name)
        _set_dropout(config, spec.dropout)
        init_seed = seed if spec.init == "random" else TINY_PRETRAINED_SEED
        model = seeded(init_seed, lambda: tf.AutoModel.from_config(config))
        return model, tf.AutoTokenizer.from_pretrained(minilm_path()) if text else None
    from transferlab.models.antiberty import check_init, text_shape_config

    check_init(spec.name, spec.init)
    config = text_shape_config()
    _set_dropout(config, spec.dropout)
    model = seeded(seed, lambda: tf.AutoModel.from_config(config))
    return model, tf.AutoTokenizer.from_pretrained(minilm_path())


def _weights_source(spec: ModelSpec) -> str | Path:
    """Where ``model.name`` points: a bundled folder, a local save_pretrained folder or a hub id."""
    if spec.name == "minilm":
        source: str | Path = minilm_path()
    elif spec.name == "antiberty":
        from transferlab.models.antiberty import antiberty_folder

        source = antiberty_folder()
    elif Path(spec.name).expanduser().is_dir():
        source = Path(spec.name).expanduser()
    elif spec.name.startswith(("/", "./", "../", "~")):
        raise ModelError(f"model.name: folder {spec.name} does not exist")
    else:
        source = spec.name
    if isinstance(source, Path) and not (source / "config.json").is_file():
        raise ModelError(f"model.name: folder {source} has no config.json; expected a save_pretrained folder")
    return source


def _from_weights(spec: ModelSpec, seed: int):
    """A folder or hub model: its config, its weights (or random ones for ``init: random``), its tokenizer."""
    offline = _offline(spec)
    source = _weights_source(spec)
    kw: dict[str, Any] = {
        "revision": spec.revision, "local_files_only": offline, "trust_remote_code": spec.trust_remote_code
    }
    try:
        config = tf.AutoConfig.from_pretrained(source, **kw)
    except OSError as e:  # huggingface_hub's HTTP and offline errors are OSErrors too
        raise _not_found(spec, offline, e) from None
    except ValueError as e:  # e.g. an unknown model_type, or remote code not trusted
        raise ModelError(f"model.name: {spec.name!r} cannot be loaded: {e}") from None
    _set_dropout(config, spec.dropout)
    auto = _model_class(config)
    try:
        if spec.init == "random":
            model = seeded(seed, lambda: model_from_config(config, trust_remote_code=spec.trust_remote_code))
        else:
            model = auto.from_pretrained(source, config=config, dtype=torch.float32, **kw)
    except OSError as e:
        raise _not_found(spec, offline, e) from None
    except ValueError as e:
        raise ModelError(f"model.name: {spec.name!r} cannot be loaded as a base model: {e}") from None
    if spec.name == "antiberty":
        from transferlab.models.antiberty import antibody_tokenizer

        return model, antibody_tokenizer(Path(source))
    return model, _load_tokenizer(source, spec, offline)


def _model_class(config: tf.PretrainedConfig):
    """The class that loads the encoder: the family's ``model_class`` (T5: ``T5EncoderModel``, not the
    encoder-decoder ``AutoModel`` builds), else ``AutoModel``."""
    from transferlab.models.schema import SCHEMAS

    family = SCHEMAS.get(str(config.model_type)) if str(config.model_type) in SCHEMAS else None
    return getattr(tf, family.model_class) if family is not None and family.model_class else tf.AutoModel


def model_from_config(config: tf.PretrainedConfig, trust_remote_code: bool = False) -> tf.PreTrainedModel:
    """A randomly initialised encoder of ``config`` (of the family's ``model_class`` where it has one)."""
    auto = _model_class(config)
    if auto is tf.AutoModel:
        return tf.AutoModel.from_config(config, trust_remote_code=trust_remote_code)
    return auto._from_config(config)


def _max_positions(config: tf.PretrainedConfig) -> int | None:
    """Input tokens the learned position table covers (the family map knows the offset); None without one."""
    from transferlab.models.schema import SCHEMAS

    if str(config.model_type) in SCHEMAS:
        return SCHEMAS.get(str(config.model_type)).max_positions(config)
    n = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return None if n is None else int(n)


class Backbone(nn.Module):
    """A Hugging Face base model that returns all hidden states.

    Holds ``model`` (the HF base model), ``tokenizer`` (None for vision/audio), ``config``,
    ``hidden_size``, ``num_layers``, ``family`` (``config.model_type``), ``pooler`` (the HF pooler
    module, or None) and ``max_length`` (tokens per input, checked against the position table).
    """

    def __init__(self, model: tf.PreTrainedModel, tokenizer: Any | None, max_length: int = 512,
                 check_length: bool = True):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config
        self.hidden_size = int(self.config.hidden_size)
        self.num_layers = int(self.config.num_hidden_layers)
        self.family = str(self.config.model_type)
        limit = _max_positions(self.config)
        if check_length and limit is not None and max_length > limit:
            raise SpecError(f"model.max_length: {max_length} exceeds the {limit} positions {self.family} has")
        self.max_length = max_length
        self._args = set(inspect.signature(model.forward).parameters)
        # BERT segment ids only for models with a segment table; GPT-2 would add *word* embeddings for them.
        self._use_token_types = getattr(self.config, "type_vocab_size", 0) >= 2
        names = getattr(tokenizer, "model_input_names", None)
        if names and "token_type_ids" in names and not self._use_token_types:  # e.g. tiny-roberta's test tokenizer
            tokenizer.model_input_names = [n for n in names if n != "token_type_ids"]
            tokenizer.init_kwargs["model_input_names"] = tokenizer.model_input_names  # kept by save_pretrained

    def use_layer_loop(self) -> bool:
        """For the BERT family: from now on compute hidden states with :func:`layer_loop` (the
        library's modules in its order, no hidden-state hooks) instead of the model's forward, so
        torch.compile traces the encoder as one graph. Same function; returns whether it applies."""
        family = family_of(self.family)
        if family is None or not family.layer_loop:
            return False
        drop_output_capture_hooks(self.model)
        self.__dict__["layer_loop"] = True
        return True

    def checkpoint_layers(self) -> None:
        """Recompute each layer in the backward (RNG state kept, so dropout masks and results are unchanged)."""
        checkpoint_model_layers(self.model, f"the {self.family} model ({type(self.model).__name__})")

    def padding_mask(self, mask: Tensor) -> Tensor:
        """The (B, 1, 1, T) padding mask the layers take: boolean for SDPA, additive otherwise."""
        m = mask[:, None, None, :]
        if self.config._attn_implementation == "sdpa":
            return m.bool()
        dtype = self.model.dtype
        return (1.0 - m.to(dtype)) * torch.finfo(dtype).min

    @property
    def pooler(self) -> nn.Module | None:
        """The HF pooler (a property, so its weights are not registered twice in the state dict)."""
        return getattr(self.model, "pooler", None)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        **native: Tensor,
    ) -> tuple[tuple[Tensor, ...], Tensor]:
        """All hidden states (num_layers + 1, each (B, T, H)) and the (B, T) attention mask.

        Text models take ``input_ids`` or ``inputs_embeds``; vision/audio models take their native
        inputs as keywords (``pixel_values=``, ``input_values=``) and get an all-ones mask.
        """
        if self.__dict__.get("layer_loop") and not native:  # a 4-D mask is used as given; None: nothing padded
            types = token_type_ids if self._use_token_types else None
            mask = attention_mask if attention_mask is None or attention_mask.dim() == 4 else \
                self.padding_mask(attention_mask)
            hidden = layer_loop(self.model, input_ids, inputs_embeds, types, mask)
            if attention_mask is None:
                attention_mask = torch.ones(hidden[-1].shape[:2], dtype=torch.long, device=hidden[-1].device)
            return hidden, attention_mask
        kw: dict[str, Any] = dict(native)
        if input_ids is not None or inputs_embeds is not None:
            ref = input_ids if input_ids is not None else inputs_embeds
            if attention_mask is None:
                attention_mask = torch.ones(ref.shape[:2], dtype=torch.long, device=ref.device)
            kw.update(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask)
            if token_type_ids is not None and self._use_token_types:
                kw["token_type_ids"] = token_type_ids
        if "use_cache" in self._args:
            kw["use_cache"] = False
        out = self.model(**kw, output_hidden_states=True, return_dict=True)
        hidden = tuple(out.hidden_states)
        if attention_mask is None:
            last = hidden[-1]
            attention_mask = torch.ones(last.shape[:2], dtype=torch.long, device=last.device)
        return hidden, attention_mask


# ---------------------------------------------------------------------------- our own layer loop

def layer_loop(hf: nn.Module, input_ids: Tensor | None, inputs_embeds: Tensor | None, token_type_ids: Tensor | None,
               mask: Tensor | None) -> tuple[Tensor, ...]:
    """What ``BertModel.forward`` (and RoBERTa's, ELECTRA's) computes for ``output_hidden_states``,
    module for module and in its order (dropout draws the same masks): embeddings, ELECTRA's
    projection, then each layer with the prepared 4-D ``mask`` (None: no padding); hidden state 0
    is layer 0's input. The pooler is not run (heads that use it call it themselves).

    Written here because transformers 5 gathers hidden states through forward hooks that read a
    ContextVar, which torch.compile cannot trace: through the library's forward a compiled BERT
    broke into several graphs (tests/test_parallel.py::test_compiled_runs_match_eager)."""
    x = hf.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, inputs_embeds=inputs_embeds)
    if getattr(hf, "embeddings_project", None) is not None:
        x = hf.embeddings_project(x)
    hidden = [x]
    for layer in hf.encoder.layer:
        out = layer(x, mask)
        x = out[0] if isinstance(out, tuple) else out
        hidden.append(x)
    return tuple(hidden)


def checkpoint_model_layers(model: nn.Module, what: str) -> None:
    """train.checkpoint_layers on a Hugging Face model (a base model, or one with a head: MLM pretraining).

    Detected, not assumed (the floor is transformers 5.17): Hugging Face's ``activation_checkpointing_enable``
    (5.18 on), else its older name ``gradient_checkpointing_enable`` (5.17; a deprecated alias later), else
    our own ``torch.utils.checkpoint`` around each module of the family's layer stack (:func:`checkpoint_each`)."""
    kwargs = {"use_reentrant": False}
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ModelError(f"train.checkpoint_layers: {what} does not support activation checkpointing; "
                         "set it to false")
    if callable(getattr(model, "activation_checkpointing_enable", None)):
        model.activation_checkpointing_enable(kwargs)
    elif callable(getattr(model, "gradient_checkpointing_enable", None)):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        family = family_of(str(model.config.model_type))
        if family is None:
            raise ModelError(f"train.checkpoint_layers: this transformers has no activation checkpointing and "
                             f"{what} has no layer schema to recompute by; set it to false")
        checkpoint_each(getattr(model, "base_model", model).get_submodule(family.layer_stack()))


def recomputed_forward(self: nn.Module, *args, **kwargs):
    """A layer's forward, recomputed in the backward while it trains with gradients on (bound to the layer
    by :func:`checkpoint_each`; a bound method, so a deep copy of the model binds it to the copied layer)."""
    forward = type(self).forward.__get__(self)
    if not (self.training and torch.is_grad_enabled()):
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def checkpoint_each(layers: nn.Module) -> None:
    """Our own activation checkpointing (where the installed transformers has none): each module of
    ``layers`` (a ModuleList) runs :func:`recomputed_forward`; ``torch.utils.checkpoint`` keeps the RNG
    state, so dropout masks and gradients are unchanged."""
    for layer in layers:
        layer.forward = types.MethodType(recomputed_forward, layer)


def drop_output_capture_hooks(model: nn.Module) -> None:
    """Remove transformers' output-capturing forward hooks (installed once a forward asked for hidden
    states) from ``model``'s modules. They only append to a collector, so removing them changes no
    computation; :func:`layer_loop` gathers the states. A later direct call of the library's forward
    that asks for hidden states installs them again (and gets its states)."""
    for module in model.modules():
        for key, hook in list(module._forward_hooks.items()):
            if "output_capturing" in getattr(hook, "__qualname__", ""):
                del module._forward_hooks[key]
    model._output_capturing_hooks_installed = False


def model_type_of(spec: ModelSpec) -> str:
    """The backbone's ``config.model_type`` without loading weights ("lstm" for the LSTM baseline,
    "unknown" when the config cannot be read)."""
    from transferlab.models.lstm import is_lstm

    if is_lstm(spec.name):
        return "lstm"
    if spec.name in ("minilm", "antiberty", "antiberty-text"):
        return "bert"
    if spec.name in TINY_ALIASES:
        return TINY_FAMILIES[spec.name]
    try:
        return str(tf.AutoConfig.from_pretrained(spec.name, revision=spec.revision,
                                                 trust_remote_code=spec.trust_remote_code).model_type)
    except (OSError, ValueError):
        return "unknown"
