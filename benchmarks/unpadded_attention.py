"""Unpadded attention on the CPU: block by block vs jagged nested tensors, against padded rows (issue 13).

The fused encoder (train/fused.py) with MiniLM, batch 16 per seed of RTE's real training pairs padded to
128 tokens, dropout 0.1, forward + backward only (no optimizer), S seeds; two rotations over 5 batches,
median seconds per step (the first step of each mode left out):

    padded   rows of 128 tokens under a key mask
    block    packed tokens; attention re-pads each sequence into its row (FusedTrainee's CPU path)
    jagged   packed tokens; attention over torch.nested jagged tensors (FusedTrainee's CUDA path)

    PYTHONPATH=src python benchmarks/unpadded_attention.py --rte ../shared/data/glue/RTE --seeds 1
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import torch

from transferlab.models.backbone import load_backbone
from transferlab.models.heads import build_head
from transferlab.models.model import TransferModel
from transferlab.spec import ModelSpec
from transferlab.train.fused import FusedModel, pack_index, pack_offsets

MODES = ("padded", "block", "jagged")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rte", required=True, help="the GLUE RTE folder (train.tsv)")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    s = args.seeds
    backbone = load_backbone(ModelSpec(name="minilm", max_length=128, dropout=0.1))
    fused = FusedModel(TransferModel(backbone, build_head("cls", backbone.hidden_size, backbone.num_layers, 2, 0.1)),
                       seeds=s)
    fused.train()
    with open(Path(args.rte) / "train.tsv", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]

    def batch(first: int) -> dict[str, torch.Tensor]:
        parts = []
        for j in range(s):
            chunk = rows[(first + j) * 16:(first + j + 1) * 16]
            parts.append(backbone.tokenizer([r[1] for r in chunk], [r[2] for r in chunk], truncation=True,
                                            max_length=128, padding="max_length", return_tensors="pt"))
        return {k: torch.stack([p[k] for p in parts]) for k in ("input_ids", "attention_mask", "token_type_ids")}

    batches = [batch(i * s) for i in range(5)]
    mask = torch.cat([b["attention_mask"].flatten() for b in batches])
    print(f"MiniLM, S = {s}, batch 16 per seed, RTE padded to 128: {1 - mask.float().mean():.1%} padding; "
          f"{args.threads} threads")

    def step(b: dict[str, torch.Tensor], mode: str) -> None:
        if mode != "padded":
            index = pack_index(b["attention_mask"])
            b = {**b, "pack_index": index}
            if mode == "jagged":
                b["pack_offsets"] = pack_offsets(b["attention_mask"], index.shape[1])
        fused(b).sum().backward()

    times: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(2):
        for mode in MODES:
            for b in batches:
                t = time.perf_counter()
                step(b, mode)
                times[mode].append(time.perf_counter() - t)
    for mode in MODES:
        med = statistics.median(times[mode][1:])
        print(f"{mode:7s} {med:.3f} s/step  {16 * s / med:.1f} samples/s")


if __name__ == "__main__":
    main()
