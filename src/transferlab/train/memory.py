"""How many slots (runs) of a stacked group fit in memory: an estimate per slot and the device's memory.

    per_slot = slot_bytes(spec)          # bytes one slot needs (None: the model's config cannot be read)
    fits = max_slots(spec)               # slots that fit in 90% of the free device memory (host RAM on the CPU)

Per slot: the weights, gradients and Adam's two moments in fp32 (16 bytes a parameter, parameters counted
from the config), plus the activations autograd keeps, by Korthikanti et al. (2022, eq. 2):
``s b h (34 + 5 a s / h)`` bytes per layer in 16-bit (twice in fp32), for batch b, length s, hidden h, a
heads; with ``train.checkpoint_layers`` only each layer's input (2 s b h bytes) plus one layer recomputed.
For BERT-base at 32 x 128 in bf16 that is 3.4 GiB, against 3.37 GiB measured on an H100 at S = 20
(docs/benchmarks.md; benchmarks/memory_estimate.py measures the activations on the CPU). It leaves out the
allocator's fragmentation and a kernel's transient buffers, hence the 10% margin.
"""

from __future__ import annotations

import os

from transferlab.spec import RunSpec

MARGIN = 0.9  # share of the free memory the slots may take


def _config(spec: RunSpec):
    import transformers as tf

    from transferlab.models import backbone as bb

    try:
        if spec.model.name in bb.TINY_ALIASES:
            return bb._tiny_config(spec.model.name)[0]
        if spec.model.name == "antiberty-text":
            from transferlab.models.antiberty import text_shape_config

            return text_shape_config()
        return tf.AutoConfig.from_pretrained(bb._weights_source(spec.model), revision=spec.model.revision,
                                             local_files_only=True)
    except Exception:  # noqa: BLE001 - an LSTM, a hub id not cached here: no estimate
        return None


def slot_bytes(spec: RunSpec, device_type: str = "cuda") -> int | None:
    """Bytes one slot of ``spec`` needs in training (see the module docstring); None without a config."""
    config = _config(spec)
    h = getattr(config, "hidden_size", None)
    if not isinstance(h, int):
        return None
    layers = spec.model.num_layers or config.num_hidden_layers
    ffn = getattr(config, "intermediate_size", None) or 4 * h
    heads = getattr(config, "num_attention_heads", 1)
    vocab, positions = getattr(config, "vocab_size", 0), getattr(config, "max_position_embeddings", 0)
    params = (vocab + positions + 2) * h + layers * (4 * h * h + 2 * h * ffn + 9 * h) + h * h
    b, s = spec.train.batch_size, spec.model.max_length
    half = spec.train.precision in ("bf16", "fp16") or (spec.train.precision == "auto" and device_type == "cuda")
    layer = s * b * h * (34 + 5 * heads * s / h) * (1 if half else 2)
    acts = (2 * s * b * h * layers + layer) if spec.train.checkpoint_layers else layer * layers
    return int(16 * params + acts)


def device_memory(spec: RunSpec) -> tuple[str, int]:
    """(device type, free bytes): the CUDA device's free memory, else the host's physical memory."""
    import torch

    device = spec.train.device
    if (device.startswith("cuda") or device == "auto") and torch.cuda.is_available():
        return "cuda", int(torch.cuda.mem_get_info()[0])
    try:
        return "cpu", int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return "cpu", 0


def max_slots(spec: RunSpec) -> int | None:
    """Slots of ``spec`` that fit in the device's free memory; None when either is unknown."""
    kind, free = device_memory(spec)
    per = slot_bytes(spec, kind)
    if not per or not free:
        return None
    return max(1, int(MARGIN * free // per))
