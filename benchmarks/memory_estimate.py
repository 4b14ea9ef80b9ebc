"""What S BERT-base seeds on the fused encoder need in memory, estimated on the CPU (issue 13, acceptance 6).

Measured: the bytes autograd keeps for the backward (``saved_tensors_hooks``: every saved tensor's
storage counted once) in one training forward of the fused encoder, S = 2 seeds of BERT-base's shape
(random weights), ``--batch`` x ``--seq`` tokens per seed, bf16 autocast as on the GPU, dropout on.
Per seed: that / S, scaled linearly to the GPU batch (activations grow with the batch). Added: the
weights, gradients and AdamW's two moments in fp32 (16 bytes a parameter). Not counted: the
allocator's fragmentation and the transient buffers of one kernel, so a real peak is higher; the GPU
figure comes from ``torch.cuda.max_memory_allocated`` in ``transferlab bench`` (benchmarks/gpu_check.sh).

    python benchmarks/memory_estimate.py [--batch 4] [--seq 128] [--gpu-batch 32] [--seeds 20]
"""

from __future__ import annotations

import argparse

import torch
import transformers as tf

from transferlab.models.backbone import Backbone
from transferlab.models.heads import build_head
from transferlab.models.model import TransferModel
from transferlab.train.fused import FusedModel, pack_index


def saved_bytes(fused: FusedModel, batch: dict[str, torch.Tensor]) -> int:
    storages: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        fused(batch).float().sum()
    return sum(storages.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--gpu-batch", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=20)
    args = ap.parse_args()
    torch.manual_seed(0)
    config = tf.BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    model = TransferModel(Backbone(tf.BertModel(config), None, args.seq), build_head("cls", 768, 12, 2, 0.1))
    params = sum(p.numel() for p in model.parameters())
    fused = FusedModel(model, seeds=2)
    fused.load_slot(1, model)
    fused.train()
    s = 2
    ids = torch.randint(1000, 2000, (s, args.batch, args.seq))
    mask = torch.ones_like(ids)
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    padded = saved_bytes(fused, batch) / s
    fused.checkpoint = True
    kept = saved_bytes(fused, batch) / s
    fused.checkpoint = False
    mask[:, :, args.seq // 2:] = 0  # half the tokens padding: what unpadding saves
    unpadded = saved_bytes(fused, {**batch, "pack_index": pack_index(mask)}) / s
    scale = args.gpu_batch / args.batch
    static = 16 * params  # fp32 weights, gradients, AdamW's two moments
    gib = 2**30
    print(f"BERT-base shape, {params / 1e6:.1f}M parameters; measured on the CPU at {args.batch} x {args.seq} "
          f"tokens per seed, bf16 autocast, S = {s}")
    print(f"saved activations per seed: {padded / gib:.3f} GiB (all tokens real), {unpadded / gib:.3f} GiB "
          f"(half of them padding, unpadded)")
    per_seed = static + padded * scale
    print(f"ESTIMATE per seed at batch {args.gpu_batch} x {args.seq}: {static / gib:.2f} GiB weights+grads+AdamW "
          f"+ {padded * scale / gib:.2f} GiB activations = {per_seed / gib:.2f} GiB")
    print(f"ESTIMATE for {args.seeds} seeds: {args.seeds * per_seed / gib:.1f} GiB (80 GB = 74.5 GiB; "
          f"fits: {args.seeds * per_seed < 80e9})")
    layer = (padded - kept) / config.num_hidden_layers * scale  # one layer's activations, recomputed in backward
    ckpt = static + kept * scale
    print(f"with checkpoint = True: {kept / gib:.3f} GiB saved per seed at {args.batch} x {args.seq}; ESTIMATE "
          f"{args.seeds} seeds: {args.seeds * ckpt / gib:.1f} GiB + one layer recomputed for all seeds "
          f"{args.seeds * layer / gib:.1f} GiB = {args.seeds * (ckpt + layer) / gib:.1f} GiB "
          f"(fits: {args.seeds * (ckpt + layer) < 80e9})")


if __name__ == "__main__":
    main()
