"""How the model computes, behind the ``Trainee`` protocol the engine calls (train/engine.py).

    trainee = SingleTrainee(model, ...)     # one plain TransferModel (S = 1): every feature
    trainee = StackedTrainee(stack, ...)    # S seeds' weights stacked (train/stacked.py)
    trainee = FusedTrainee(fused, ...)      # the BERT family's fused, unpadded stacked encoder (train/fused.py)

    losses = trainee.backward(batches, accum, loss_hooks)  # forward + loss + backward: (S,) detached losses
    norms = trainee.clip(max_norm)                         # per-seed gradient clipping: (S,) norms
    model = trainee.model_for(slot)                        # a plain model holding seed ``slot``'s weights
    state = trainee.best_state(slot); trainee.restore(slot, state)
    trainee.keep(slots, optimizer)                         # drop finished seeds (weights and optimizer state)

``batches`` holds one collated host batch per active seed, in slot order. Every trainee counts the
token positions it computes and how many of them are real (``tokens``: host-side, no device sync):
the padded-token share ``transferlab bench`` reports.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from transferlab.train.fast import Compiled, compiled, to_device
from transferlab.train.stacked import StackedModel
from transferlab.train.steps import count_parameters, loss_fn


class SingleTrainee:
    """One plain model: S = 1. Loss hooks, fp16 loss scaling and resumable checkpoints work here."""

    kind = "single"

    def __init__(self, model: nn.Module, device: torch.device, amp, regression: bool, compile: bool, scaler=None):
        self.module, self.device, self.amp, self.regression, self.scaler = model, device, amp, regression, scaler
        self.seeds = 1
        if compile and hasattr(model.backbone, "use_layer_loop"):  # not the LSTM baseline
            model.backbone.use_layer_loop()  # BERT family: one unbroken graph (models/backbone.layer_loop)
        self.forward = compiled(model, compile)  # torch.compile with an eager fallback (train/fast.py)
        self.tokens = model.token_counts = [0, 0]  # (real tokens, token positions computed); bench reads them

    @property
    def compiled(self) -> bool:
        return isinstance(self.forward, Compiled) and self.forward.active

    def backward(self, batches: list[dict[str, Tensor]], accum: int, loss_hooks=()) -> Tensor:
        _count(self.tokens, batches[0]["attention_mask"], batches[0]["attention_mask"].numel())
        batch = to_device(batches[0], self.device)  # pinned and non-blocking on CUDA
        labels = batch.pop("labels")
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            logits = self.forward(**batch)
        loss = loss_fn(logits, labels, self.regression)
        for hook in loss_hooks:  # e.g. distillation: mixes the teacher's targets in
            loss = hook.on_loss(batch, labels, logits, loss)
        loss = loss / accum
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        return loss.detach().reshape(1)

    def clip(self, max_norm: float | None, optimizer) -> Tensor:
        if self.scaler:
            self.scaler.unscale_(optimizer)
        params = [p for p in self.module.parameters() if p.grad is not None]
        return torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf")).reshape(1)

    def model_for(self, slot: int) -> nn.Module:
        return self.module

    def checkpoint_layers(self) -> None:
        """train.checkpoint_layers: Hugging Face's activation checkpointing on the model's layers."""
        self.module.backbone.checkpoint_layers()

    def best_state(self, slot: int) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def restore(self, slot: int, state: dict[str, Tensor]) -> nn.Module:
        self.module.load_state_dict(state)
        return self.module

    def keep(self, slots: list[int], optimizer) -> None:
        pass  # one seed: it leaves only when the run ends

    def counts(self) -> tuple[int, int]:
        return count_parameters(self.module)


class StackedTrainee:
    """S seeds in one StackedModel: one forward over S*B rows, the sum of the per-seed losses backward,
    so each seed's parameters get exactly their own run's gradient; clipping by each seed's own norm."""

    kind = "stacked"
    scaler = None  # fp16 loss scaling is shared by all seeds: refused seed-stacked (train/support.py)

    def __init__(self, stack: StackedModel, device: torch.device, amp, regression: bool, compile: bool,
                 pad_ids: list[int]):
        self.module, self.device, self.amp, self.regression = stack, device, amp, regression
        self.compile, self.pad_ids, self.probed = compile, pad_ids, False
        self.tokens = stack.token_counts = [0, 0]  # (real tokens, token positions computed); bench reads them

    @property
    def seeds(self) -> int:
        return self.module.seeds

    @property
    def compiled(self) -> bool:
        return isinstance(self.module.encoder, Compiled) and self.module.encoder.active

    def backward(self, batches: list[dict[str, Tensor]], accum: int, loss_hooks=()) -> Tensor:
        counts = [b["labels"].shape[0] for b in batches]
        host = stack_batches(batches, self.pad_ids)
        padded = not bool(host["attention_mask"].all())  # on the host: no device sync
        host = self.prepare(host, padded)
        batch = to_device(host, self.device)
        labels = batch.pop("labels")
        if not self.probed:
            self.module.probe_vmap(batch)  # eagerly: compiling it too would add an inference graph
            self.probed = True
            if self.compile:
                self.module.compile()
        try:
            return self._backward(batch, padded, labels, counts, accum)
        except Exception as e:  # a compile failure in the first backward: eager from now on
            encoder = self.module.encoder
            if not isinstance(encoder, Compiled) or not encoder.active:
                raise
            encoder.fall_back(e)
            for p in self.module.parameters():
                p.grad = None
            return self._backward(batch, padded, labels, counts, accum)

    def prepare(self, host: dict[str, Tensor], padded: bool) -> dict[str, Tensor]:
        """The host batch as the module takes it (here: as it is); counts its tokens."""
        _count(self.tokens, host["attention_mask"], host["attention_mask"].numel())
        return host

    def _backward(self, batch, padded: bool, labels: Tensor, counts: list[int], accum: int) -> Tensor:
        """The graph dies here: nothing outside keeps it (a seed leaving the stack reshapes the parameters)."""
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            logits = self.module(batch, padded)
        losses = torch.stack([loss_fn(logits[i, :c], labels[i, :c], self.regression)
                              for i, c in enumerate(counts)]) / accum
        losses.sum().backward()
        return losses.detach()

    def clip(self, max_norm: float | None, optimizer) -> Tensor:
        """``clip_grad_norm_`` for each seed on its own: the global norm of the seed's gradients, and its
        gradients scaled by min(1, max_norm / (norm + 1e-6)). Returns the (S,) norms before clipping.

        Launches per call depend on the number of parameter tensors P, never on S: one reduction over the
        seed dimension's rows per stacked gradient, the (P, S) norms reduced once, and (with ``max_norm``)
        one in-place scale per gradient by its seed's coefficient. Without ``max_norm`` nothing is rescaled
        (no pass over the gradients just to multiply them by 1). All on the device: no host sync."""
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros(self.seeds, device=self.device)
        norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])  # (P, S)
        total = torch.linalg.vector_norm(norms, dim=0)
        if max_norm:
            coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
            shaped: dict[tuple, Tensor] = {}  # one coefficient view per (dims, dtype): no cast per gradient
            for g in grads:
                key = (g.dim(), g.dtype)
                if key not in shaped:
                    shaped[key] = coef.to(g.dtype).view(-1, *[1] * (g.dim() - 1))
                g.mul_(shaped[key])
        return total

    def model_for(self, slot: int) -> nn.Module:
        return self.module.copy_slot_to(self.module.model, slot)

    def checkpoint_layers(self) -> None:
        """train.checkpoint_layers: the stacked copy's layers (the library's modules) recompute in the backward."""
        self.module.backbone.checkpoint_layers()

    def best_state(self, slot: int) -> dict[str, Tensor]:
        model = self.model_for(slot)  # on the host: S best states would crowd the GPU
        return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def restore(self, slot: int, state: dict[str, Tensor]) -> nn.Module:
        model = self.model_for(slot)
        model.load_state_dict(state)
        return model

    def keep(self, slots: list[int], optimizer) -> None:
        self.module.keep(slots, optimizer)
        self.pad_ids = [self.pad_ids[i] for i in slots]

    def counts(self) -> tuple[int, int]:
        return self.module.seed_counts()


class FusedTrainee(StackedTrainee):
    """The BERT family's fused stacked encoder (train/fused.py; S >= 1): every projection one batched
    product for all seeds, attention by SDPA over the S*B sequences, and with ``unpad`` the batch packed
    to each seed's real tokens before the embeddings (the index is built here, on the host).

    Unpadded attention: on CUDA over jagged nested tensors (``pack_offsets``: torch's varlen flash /
    memory-efficient kernels, no flash-attn package needed), falling back to block by block if the
    device refuses them; on the CPU block by block, which measured faster there than torch.nested's
    per-sequence math (docs/benchmarks.md)."""

    kind = "fused"
    jagged_on = ("cuda",)  # device types whose unpadded attention runs jagged

    def __init__(self, fused, device: torch.device, amp, regression: bool, compile: bool, pad_ids: list[int],
                 unpad: bool = True):
        from transferlab.train.fused import flash_varlen_available, say_once

        super().__init__(fused, device, amp, regression, compile, pad_ids)
        self.unpad = unpad
        self.jagged = unpad and device.type in self.jagged_on
        self.jagged_ok = False  # set after the first step that ran jagged
        if unpad and not self.jagged:
            why = "is installed (not needed)" if flash_varlen_available() else "is absent"
            say_once(f"flash-attn {why}: on the CPU unpadded attention runs block by block (one padded row per "
                     "sequence)")

    @property
    def compiled(self) -> bool:
        return self.module.compiled

    def checkpoint_layers(self) -> None:
        """train.checkpoint_layers: each fused layer recomputed in the backward (train/fused.py)."""
        self.module.checkpoint = True

    def prepare(self, host: dict[str, Tensor], padded: bool) -> dict[str, Tensor]:
        from transferlab.train.fused import pack_index, pack_offsets, pack_seqlens

        mask = host["attention_mask"]
        if not (self.unpad and padded):
            _count(self.tokens, mask, mask.numel())
            return host
        index = pack_index(mask)
        _count(self.tokens, mask, index.numel())
        if self.jagged:  # offsets and their shortest/longest segment on the host: no .item() in the step
            offsets = pack_offsets(mask, index.shape[1])
            return {**host, "pack_index": index, "pack_offsets": offsets, "pack_seqlens": pack_seqlens(offsets)}
        return {**host, "pack_index": index}

    def backward(self, batches: list[dict[str, Tensor]], accum: int, loss_hooks=()) -> Tensor:
        """The first jagged step may find the device without a nested-tensor attention kernel: block by block
        from then on (said once), the step redone from scratch (the vmap probe too)."""
        if self.jagged_ok or not self.jagged:
            return super().backward(batches, accum, loss_hooks)
        from transferlab.train.fused import say_once

        try:
            out = super().backward(batches, accum, loss_hooks)
        except RuntimeError as e:
            if isinstance(e, torch.OutOfMemoryError):  # memory, not the kernel: the loop names the ways out
                raise
            say_once(f"jagged attention failed on {self.device} ({str(e).splitlines()[0][:120]}): unpadded attention "
                     "runs block by block")
            self.jagged, self.probed = False, False
            self.module.vmap_head = self.module.vmap_adapter = True  # the probe blamed vmap for it
            for p in self.module.parameters():
                p.grad = None
            return super().backward(batches, accum, loss_hooks)
        self.jagged_ok = True
        return out


def _count(tokens: list[int], mask: Tensor, computed: int) -> None:
    tokens[0] += int(mask.sum())  # a host tensor: no device sync
    tokens[1] += int(computed)


def stack_batches(batches: list[dict[str, Tensor]], pads: list[int]) -> dict[str, Tensor]:
    """Per-seed collated batches -> one batch of (S, B, ...) tensors: widths padded (ids with the pad
    id, masks and segments with 0), missing rows filled with copies of the seed's first row."""
    rows = max(b["labels"].shape[0] for b in batches)
    out = {}
    for key in batches[0]:
        parts = [b[key] for b in batches]
        if key != "labels" and parts[0].dim() >= 2:
            width = max(p.shape[1] for p in parts)
            fills = [pad if key in ("input_ids", "inputs") else 0 for pad in pads]
            parts = [p if p.shape[1] == width else torch.cat(
                [p, p.new_full((p.shape[0], width - p.shape[1], *p.shape[2:]), fill)], 1)
                for p, fill in zip(parts, fills)]
        parts = [p if p.shape[0] == rows else torch.cat([p, p[:1].expand(rows - p.shape[0], *p.shape[1:])])
                 for p in parts]
        out[key] = torch.stack(parts)
    return out
