"""Count, on the CPU, what one fused seed-parallel training step of BERT-base moves, per seed, as the GPU runs it
(bf16 autocast, fp32 weights and AdamW states), and predict the GPU step from it (docs/benchmarks.md, issue 22).

    PYTHONPATH=src python benchmarks/cost_model.py                 # this checkout
    PYTHONPATH=<main>/src python benchmarks/cost_model.py          # another checkout, the same count (before/after)

One step of the fused trainee (train/fused.py: FusedTrainee, padded batches, no compile) runs under
``transferlab.bench.WeightBytes`` (imported from this checkout's file, so the same counter measures any checkout):
the bytes read and written by the weight side (parameters, gradients, casts, clipping, optimizer) and by the
element-wise operators on activations, counted operator by operator at a small batch; the FLOPs are bench's
``flops_per_sample``. Element-wise bytes grow with the tokens, so they are scaled from the counted batch to
batch 32 x 128 tokens; weight-side bytes do not depend on the batch.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _counter_class():
    spec = importlib.util.spec_from_file_location("bench_here", HERE.parent / "src" / "transferlab" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_here"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.WeightBytes


def count(seeds: int, batch: int, seq: int, optim: str) -> dict:
    import transformers as tf

    from transferlab.bench import flops_per_sample
    from transferlab.models.backbone import load_backbone
    from transferlab.models.heads import build_head
    from transferlab.models.model import TransferModel
    from transferlab.recipes.optim import build_optimizer
    from transferlab.recipes.param_groups import build_param_groups
    from transferlab.spec import ModelSpec, OptimSpec
    from transferlab.train.compute import FusedTrainee
    from transferlab.train.fused import FusedModel

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bert-base"
        tf.BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                      vocab_size=30522).save_pretrained(folder)
        from transferlab.models.common import minilm_path

        tf.AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
        backbone = load_backbone(ModelSpec(name=str(folder), init="random", max_length=seq))
    torch.manual_seed(0)
    model = TransferModel(backbone, build_head("cls", backbone.hidden_size, backbone.num_layers, 2, 0.1))
    fused = FusedModel(model, seeds)
    trainee = FusedTrainee(fused, torch.device("cpu"), torch.bfloat16, False, False, [0] * seeds, unpad=False)
    spec = OptimSpec(name=optim, lr=2e-5)
    opt = build_optimizer(build_param_groups(fused, spec, fused.num_layers), spec, "cpu")
    fused.train()
    batches = [{"input_ids": torch.randint(1000, 20000, (batch, seq)), "attention_mask": torch.ones(batch, seq,
                dtype=torch.long), "token_type_ids": torch.zeros(batch, seq, dtype=torch.long),
                "labels": torch.randint(0, 2, (batch,))} for _ in range(seeds)]
    counter = None
    for step in range(2):  # the first step makes the optimizer's states; the second is counted
        if step == 1:
            counter = _counter_class()({p.numel() for p in fused.parameters()})
            counter.__enter__()
        trainee.backward(batches, 1)
        trainee.clip(1.0, opt)
        opt.step()
        opt.zero_grad(set_to_none=True)
    counter.__exit__(None, None, None)
    params = sum(p.numel() for p in model.parameters())
    return {"params": params, "weight_bytes": counter.bytes / seeds, "elementwise_bytes": counter.elementwise / seeds,
            "tokens": batch * seq, "flops_per_sample": flops_per_sample(model, 128)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--optim", default="adamw")
    args = ap.parse_args()
    c = count(args.seeds, args.batch, args.seq, args.optim)
    scale = 32 * 128 / c["tokens"]
    flops = 32 * c["flops_per_sample"]
    print(f"BERT-base, {c['params'] / 1e6:.1f}M parameters per seed; counted at S={args.seeds}, batch {args.batch} x "
          f"{args.seq} tokens, optim {args.optim}, bf16 autocast")
    print(f"per seed-step (batch 32 x 128): matmul {flops / 1e12:.2f} TFLOP; weight-side {c['weight_bytes'] / 1e9:.2f} GB"
          f" ({c['weight_bytes'] / c['params']:.1f} B/param); element-wise (eager) "
          f"{c['elementwise_bytes'] * scale / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
