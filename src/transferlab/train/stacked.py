"""S copies of one model with their weights stacked along a leading seed dimension.

    stack = StackedModel(model0, seeds=4, device="cuda")       # structure and seed 0 from model0
    stack.load_slot(1, model1); ...                           # the other seeds' weights
    logits = stack(batch)                                     # batch tensors (S, B, ...) -> (S, B, ...)
    stack.copy_slot_to(template, 2)                           # seed 2's weights into a plain model

The backbone is the Hugging Face module itself with each weight-holding leaf (``nn.Linear``,
GPT-2's ``Conv1D``, ``nn.LayerNorm``, ``nn.Embedding``) replaced by a stacked twin: the forward
runs on S*B rows (seed-major), every leaf reshapes its input to (S, B*T, in) and does one batched
matrix product (``baddbmm``), and attention is the library's own SDPA over S*B sequences. So the
code between the leaves is the library's, and torch.func.vmap is not needed there (it fails in the
library's mask creation on data-dependent control flow). For the BERT family the engine calls the
library's embeddings and layer modules itself, in the library's order (``models/backbone.layer_loop``),
instead of the model's forward: the library gathers hidden states through forward hooks that read
a ContextVar, which torch.compile cannot trace, so without this every compiled layer would break
into pieces. The head and the input adapter are small:
they run under ``vmap(functional_call)`` over the seed dimension, or in a loop over seeds where
vmap cannot (the LSTM heads pack sequences by length on the host).

Parameter names are those of a :class:`TransferModel` (``backbone.model.*``, ``head.*``,
``input_adapter.*``), each with a leading seed dimension, so parameter groups (layer-wise LR),
freezing policies and the optimizers work on the stack unchanged: every optimizer here is
element-wise, so a stacked update is S independent updates.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap
from transformers.pytorch_utils import Conv1D

from transferlab.errors import ModelError


class StackError(ModelError):
    """A model the stacked engine cannot hold (a weight outside the supported leaf modules)."""


class _Rows:
    """Shared by the stacked leaves of one model: rows per seed in the current forward."""

    per_seed = 1


class StackedLinear(nn.Module):
    """``nn.Linear`` (weight (out, in)) or GPT-2 ``Conv1D`` (weight (in, out)) for S seeds."""

    def __init__(self, weight: Tensor, bias: Tensor | None, in_first: bool):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias) if bias is not None else None
        self.in_first = in_first

    def forward(self, x: Tensor) -> Tensor:
        s = self.weight.shape[0]
        if s == 1:  # one seed left: the plain layer's kernel (a batched product of one is slower on CPU)
            w = self.weight[0].t() if self.in_first else self.weight[0]
            return F.linear(x, w, None if self.bias is None else self.bias[0])
        lead = x.shape[:-1]
        x3 = x.reshape(s, -1, x.shape[-1])
        w = self.weight if self.in_first else self.weight.transpose(1, 2)
        y = torch.bmm(x3, w) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), x3, w)
        return y.reshape(*lead, y.shape[-1])


class StackedLayerNorm(nn.Module):
    """``nn.LayerNorm`` with per-seed affine weights (S, H). The class name holds "Norm", so the
    parameter groups exclude its weights from weight decay as they do a LayerNorm's."""

    def __init__(self, weight: Tensor, bias: Tensor | None, shape: tuple[int, ...], eps: float):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias) if bias is not None else None
        self.shape, self.eps = shape, eps

    def forward(self, x: Tensor) -> Tensor:
        s = self.weight.shape[0]
        if s == 1:
            return F.layer_norm(x, self.shape, self.weight[0], None if self.bias is None else self.bias[0], self.eps)
        y = F.layer_norm(x.reshape(s, -1, *self.shape), self.shape, None, None, self.eps)
        w = self.weight.reshape(s, 1, *self.shape)
        y = y * w if self.bias is None else torch.addcmul(self.bias.reshape(s, 1, *self.shape), y, w)
        return y.reshape(x.shape)


class StackedEmbedding(nn.Module):
    """``nn.Embedding`` with per-seed tables (S, V, H): seed s's ids index rows s*V + id of the
    flattened table. Ids of one row (position ids shared by the batch) are broadcast to every row.
    The padding row gets no gradient, as with ``padding_idx``."""

    def __init__(self, weight: Tensor, padding_idx: int | None, rows: _Rows):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.padding_idx, self.rows = padding_idx, rows
        if padding_idx is not None:  # in place after accumulation (an out-of-place fill copied all of (S, V, H))
            self.weight.register_post_accumulate_grad_hook(self._zero_pad_grad)

    def _zero_pad_grad(self, weight: Tensor) -> None:
        if weight.grad is not None:
            weight.grad.select(1, self.padding_idx).zero_()

    def forward(self, ids: Tensor) -> Tensor:
        s, v, h = self.weight.shape
        b = self.rows.per_seed
        if ids.shape[0] == 1 and s * b != 1:  # shared ids (positions): (S, T, H) per seed, then every row
            out = self.weight[:, ids[0]]
            return out.unsqueeze(1).expand(s, b, *out.shape[1:]).reshape(s * b, *out.shape[1:])
        if ids.shape[0] != s * b:
            raise StackError(f"stacked embedding got {ids.shape[0]} rows; expected {s} seeds x {b}")
        offset = torch.arange(s, device=ids.device).repeat_interleave(b) * v
        return F.embedding(ids + offset.view(-1, *[1] * (ids.dim() - 1)), self.weight.reshape(s * v, h))


def _stacked_leaf(module: nn.Module, seeds: int, rows: _Rows, device) -> nn.Module | None:
    """The stacked twin of a weight-holding leaf (weights uninitialised), or None for other modules."""

    def new(t: Tensor | None) -> Tensor | None:
        return None if t is None else torch.empty(seeds, *t.shape, dtype=t.dtype, device=device)

    if isinstance(module, nn.Linear):
        return StackedLinear(new(module.weight), new(module.bias), in_first=False)
    if isinstance(module, Conv1D):
        return StackedLinear(new(module.weight), new(module.bias), in_first=True)
    if isinstance(module, nn.LayerNorm):
        if module.weight is None:
            raise StackError(f"a LayerNorm without affine weights ({module}) is not supported")
        return StackedLayerNorm(new(module.weight), new(module.bias), tuple(module.normalized_shape), module.eps)
    if isinstance(module, nn.Embedding):
        if module.max_norm is not None or module.sparse:
            raise StackError("embeddings with max_norm or sparse gradients are not supported")
        return StackedEmbedding(new(module.weight), module.padding_idx, rows)
    return None


def _stack_params(module: nn.Module, seeds: int, device) -> None:
    """Replace every parameter of ``module`` (a head or an adapter) by an uninitialised (S, ...) one."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None:
                sub._parameters[name] = nn.Parameter(torch.empty(seeds, *p.shape, dtype=p.dtype, device=device))


class StackedModel(nn.Module):
    """``seeds`` copies of ``model`` (a TransferModel): see the module docstring.

    ``template`` (``model`` itself, moved to ``device``) stays a plain model: the head and adapter
    run through it by ``functional_call``, and evaluation loads one seed's weights into it.
    """

    def __init__(self, model: nn.Module, seeds: int, device: torch.device | str = "cpu"):
        super().__init__()
        self.seeds = seeds
        self.rows = _Rows()
        hf = model.backbone.model
        tokenizer = model.backbone.tokenizer
        stacked = copy.deepcopy(model, memo={id(tokenizer): tokenizer}).to("meta")  # structure; weights replaced
        self.backbone = stacked.backbone
        for name, module in list(self.backbone.model.named_modules()):
            twin = _stacked_leaf(module, seeds, self.rows, device)
            if twin is None:
                continue
            parent, _, attr = name.rpartition(".")
            setattr(self.backbone.model.get_submodule(parent), attr, twin)
        for name, buf in hf.named_buffers():  # buffers (position ids...) are shared: the template's
            owner, _, attr = name.rpartition(".")
            self.backbone.model.get_submodule(owner)._buffers[attr] = buf.to(device)
        leftover = [n for n, p in self.backbone.named_parameters() if p.device.type == "meta"]
        if leftover:
            raise StackError(f"parameter {leftover[0]} is not in a Linear, Conv1D, LayerNorm or Embedding module; "
                             "the seed-parallel engine cannot stack it")
        self.head = stacked.head
        _stack_params(self.head, seeds, device)
        self.input_adapter = stacked.input_adapter
        if self.input_adapter is not None:
            _stack_params(self.input_adapter, seeds, device)
        self.template = [model.to(device)]  # in a list: not a submodule (its parameters are not the stack's)
        self.num_layers = model.num_layers
        self.family = model.backbone.family
        self.vmap_head = self.vmap_adapter = True
        self.streams = None  # models/dropout_streams.DropoutStreams under train.dropout_rng: run (train/loop.py)
        # BERT family: the stacked copy's hidden states come from models/backbone.layer_loop (no capture hooks)
        self.own_loop = self.backbone.use_layer_loop()
        self.__dict__["encoder"] = self._encode  # the call with the FLOPs (compile()); not a submodule
        self.load_slot(0, model)
        with torch.no_grad():  # every slot starts as seed 0 (not uninitialised memory) until its own load_slot
            for p in self.parameters():
                p[1:] = p[:1]

    # ------------------------------------------------------------------ weights in and out
    @property
    def model(self) -> nn.Module:
        """The plain template model (for evaluation and saving, after :meth:`copy_slot_to`)."""
        return self.template[0]

    @torch.no_grad()
    def load_slot(self, slot: int, model: nn.Module) -> None:
        """Copy ``model``'s weights (a TransferModel of the same recipe) into seed ``slot``."""
        theirs = dict(model.named_parameters())
        mine = dict(self.named_parameters())
        if set(theirs) != set(mine):
            missing = min(set(theirs) ^ set(mine))
            raise StackError(f"seed models differ in their parameters ({missing})")
        for name, p in mine.items():
            p[slot].copy_(theirs[name])
        for name, buf in model.backbone.model.named_buffers():
            if not torch.equal(buf.cpu(), self.model.backbone.model.get_buffer(name).cpu()):
                raise StackError(f"seed models differ in buffer {name}; the engine shares buffers across seeds")

    @torch.no_grad()
    def copy_slot_to(self, model: nn.Module, slot: int) -> nn.Module:
        """Seed ``slot``'s weights into ``model`` (default: the template); returns it."""
        mine = dict(self.named_parameters())
        for name, p in model.named_parameters():
            p.copy_(mine[name][slot])
        return model

    @torch.no_grad()
    def keep(self, slots: list[int], optimizer: torch.optim.Optimizer | None = None) -> None:
        """Drop every seed not in ``slots`` from the weights and the optimizer state (a finished seed
        stops updating and stops costing compute)."""
        index = torch.tensor(slots, device=next(self.parameters()).device)
        for p in self.parameters():
            if optimizer is not None:
                state = optimizer.state.get(p, {})
                for key, value in state.items():
                    if torch.is_tensor(value) and value.shape == p.shape:
                        state[key] = value.index_select(0, index)
            p.data = p.data.index_select(0, index)
            if p.grad is not None:
                p.grad = None
        if self.streams is not None:
            self.streams.keep(slots)
        self.seeds = len(slots)

    def compile(self) -> None:
        """torch.compile the encoder call (train/fast.py: eager when compiling fails). For the BERT
        family that is our layer loop, which traces as one graph (no hidden-state hooks, see
        ``models/backbone.layer_loop``). The head and adapter stay eager: dynamo cannot trace dropout under vmap
        with dynamic shapes, and they are small."""
        from transferlab.train.fast import Compiled

        self.__dict__["encoder"] = Compiled(self._encode)

    def seed_counts(self) -> tuple[int, int]:
        """(parameters, trainable parameters) of one seed's model, as ``count_parameters`` gives them."""
        total = sum(p[0].numel() for p in self.parameters())
        trainable = sum(p[0].numel() for p in self.parameters() if p.requires_grad)
        return total, trainable

    # ------------------------------------------------------------------ forward
    def _per_seed(self, module: nn.Module, use_vmap: bool, *args):
        """``module`` (template head/adapter) with each seed's weights on each seed's inputs (dim 0)."""
        prefix = "head." if module is self.model.head else "input_adapter."
        params = {n[len(prefix):]: p for n, p in self.named_parameters() if n.startswith(prefix)}
        if use_vmap:
            return vmap(lambda p, *a: functional_call(module, p, a), randomness="different")(params, *args)
        outs = []
        try:
            for s in range(self.seeds):
                if self.streams is not None:
                    self.streams.slot = s  # the head's dropout draws from slot s's stream
                picked = [tuple(x[s] for x in a) if isinstance(a, tuple) else a[s] for a in args]
                outs.append(functional_call(module, {n: p[s] for n, p in params.items()}, tuple(picked)))
        finally:
            if self.streams is not None:
                self.streams.slot = None
        return torch.stack(outs)

    def probe_vmap(self, batch: dict[str, Tensor]) -> None:
        """Decide once whether the head and adapter run under vmap (else a loop over seeds)."""
        was = self.training
        self.eval()
        try:
            for attr in ("vmap_head", "vmap_adapter"):
                try:
                    with torch.no_grad():
                        self(batch)
                    return
                except Exception:  # noqa: BLE001 - any failure under vmap: that part loops over seeds instead
                    setattr(self, attr, False)
            with torch.no_grad():
                self(batch)  # a failure now is not vmap's: let it surface
        finally:
            self.train(was)

    def _mask_arg(self, mask: Tensor) -> Tensor:
        """A 4-D padding mask for the layer loop's (bidirectional) families (no mask building, no host
        sync inside the library), else the 2-D mask (causal families build their own)."""
        return self.model.backbone.padding_mask(mask) if self.own_loop else mask

    def forward(self, batch: dict[str, Tensor], padded: bool = True) -> Tensor:
        """``batch``: the collated inputs of every seed, each (S, B, ...). Returns logits (S, B, ...).
        ``padded=False`` promises that no position is padding (the caller checked on the host): the
        library then gets no mask, so SDPA may pick its fastest kernel."""
        mask = batch["attention_mask"]
        s, b = mask.shape[:2]
        if self.model.training != self.training:  # the template runs the head: same dropout mode
            self.model.train(self.training)
        self.rows.per_seed = b
        flat = {k: v.reshape(s * b, *v.shape[2:]) for k, v in batch.items()}
        mask_arg = self._mask_arg(flat["attention_mask"])
        if "inputs" in batch:
            embeds = self._per_seed(self.model.input_adapter, self.vmap_adapter, batch["inputs"])
            hidden = self.encoder(None, embeds.reshape(s * b, *embeds.shape[2:]), None, mask_arg, True)
        else:  # without a mask when nothing is padded
            types = flat["token_type_ids"] if "token_type_ids" in flat and self.backbone._use_token_types else None
            hidden = self.encoder(flat["input_ids"], None, types, mask_arg if padded else None, False)
        hidden = tuple(h.reshape(s, b, *h.shape[1:]) for h in hidden)
        return self._per_seed(self.model.head, self.vmap_head, hidden, mask)

    def _encode(self, input_ids: Tensor | None, inputs_embeds: Tensor | None, token_type_ids: Tensor | None,
                mask: Tensor | None, adapter: bool) -> tuple[Tensor, ...]:
        """All hidden states of the S*B rows: Backbone.forward (the layer loop for the BERT family), or
        for other families the library's forward called without a mask when nothing is padded."""
        if adapter:
            from transferlab.models.adapters import feed_embeds

            return feed_embeds(self.backbone, inputs_embeds, mask)[0]
        if self.own_loop:
            return self.backbone(input_ids, mask, token_type_ids)[0]
        kw = {"input_ids": input_ids, "inputs_embeds": None, "attention_mask": mask, "output_hidden_states": True,
              "return_dict": True}  # the keywords Backbone.forward passes
        if token_type_ids is not None:
            kw["token_type_ids"] = token_type_ids
        if "use_cache" in self.backbone._args:
            kw["use_cache"] = False
        return self.backbone.model(**kw).hidden_states

