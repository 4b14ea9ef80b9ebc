"""One epoch of MiniLM fine-tuning on RTE: transferlab's loop against Hugging Face Trainer.

Both sides, in this one process and on the same model, data and settings: all-MiniLM-L6-v2
with its pooler and a linear classifier (what AutoModelForSequenceClassification builds; our
``pooler`` head), real RTE lengths truncated at 128 with dynamic padding, batch 32, AdamW at
2e-5 with weight decay 0.01, 10% warmup then linear decay, gradient clipping at 1.0, fp32 on
the CPU, one epoch, then one evaluation on dev. The clock runs from loading the model to the
dev accuracy, so tokenisation, training and evaluation count on both sides.

    python benchmarks/bench_rte_cpu.py --data /path/to/glue/RTE [--repeats 1] [--max-train N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch


def ours(data: Path, max_train: int | None, store_dir: Path, model: str) -> tuple[float, int, float]:
    from transferlab.spec import load_spec
    from transferlab.store import Store
    from transferlab.train.loop import run

    spec = load_spec({
        "name": "bench-ours", "seed": 0,
        "model": {"name": model, "max_length": 128},
        "task": {"name": "rte", "path": str(data), "max_train_samples": max_train},
        "head": {"name": "pooler", "dropout": 0.1},
        "optim": {"name": "adamw", "lr": 2e-5, "weight_decay": 0.01, "max_grad_norm": 1.0},
        "schedule": {"name": "linear", "warmup_ratio": 0.1},
        "train": {"epochs": 1, "batch_size": 32, "num_evals": 1, "save_model": False, "device": "cpu",
                  "log_every": 10},
    })
    start = time.perf_counter()
    result = run(spec, Store(store_dir / "bench.db"), force=True, progress=False)
    seconds = time.perf_counter() - start
    n_train = max_train or 2490
    return seconds, n_train, result.dev["accuracy"]


def trainer(data: Path, max_train: int | None, out_dir: Path, model_name: str) -> tuple[float, int, float]:
    import transformers as tf

    from transferlab.data.build import build_task
    from transferlab.models.backbone import minilm_path
    from transferlab.spec import TaskSpec

    task = build_task(TaskSpec(name="rte", path=str(data), max_train_samples=max_train), seed=0)
    start = time.perf_counter()
    path = str(minilm_path()) if model_name == "minilm" else model_name
    tokenizer = tf.AutoTokenizer.from_pretrained(path)
    tf.set_seed(0)
    model = tf.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)

    def dataset(split) -> list[dict]:  # a plain list of examples: Trainer takes any sized dataset
        enc = tokenizer(split.texts, split.text_pairs, truncation=True, max_length=128)
        return [{**{k: v[i] for k, v in enc.items()}, "labels": int(y)} for i, y in enumerate(split.labels)]

    train, dev = dataset(task.splits["train"]), dataset(task.splits["dev"])
    args = tf.TrainingArguments(
        output_dir=str(out_dir / "trainer"), per_device_train_batch_size=32, per_device_eval_batch_size=64,
        learning_rate=2e-5, weight_decay=0.01, num_train_epochs=1, warmup_steps=0.1, lr_scheduler_type="linear",
        max_grad_norm=1.0, eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none",
        use_cpu=True, seed=0, disable_tqdm=True,
    )

    def accuracy(pred) -> dict[str, float]:
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    t = tf.Trainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                   data_collator=tf.DataCollatorWithPadding(tokenizer), compute_metrics=accuracy)
    t.train()
    acc = t.evaluate()["eval_accuracy"]
    return time.perf_counter() - start, len(train), acc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="a GLUE-layout RTE folder (train.tsv, dev.tsv)")
    p.add_argument("--repeats", type=int, default=1, help="alternate the two sides this many times")
    p.add_argument("--max-train", type=int, default=None, help="first N training examples (default: all 2490)")
    p.add_argument("--model", default="minilm", help="the packaged MiniLM (default) or a folder holding it")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()
    from transferlab.cli import quiet_libraries

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name, fn in (("transferlab", ours), ("hf-trainer", trainer)):
                seconds, n, acc = fn(args.data, args.max_train, Path(tmp), args.model)
                rows.append((name, r, seconds, n / seconds, acc))
                print(f"{name:12s} repeat {r}: {seconds:7.1f} s  {n / seconds:6.2f} samples/s  dev accuracy {acc:.4f}",
                      flush=True)
    mean = {k: np.mean([row[3] for row in rows if row[0] == k]) for k in ("transferlab", "hf-trainer")}
    print(f"\nsamples/s: transferlab {mean['transferlab']:.2f}, hf-trainer {mean['hf-trainer']:.2f}, "
          f"ratio {mean['transferlab'] / mean['hf-trainer']:.2f}x")


if __name__ == "__main__":
    main()
