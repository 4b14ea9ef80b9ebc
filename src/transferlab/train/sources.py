"""The batch source of one single-task run (a ``BatchSource`` of train/engine.py).

    source = TaskSource(encoded_train, seed=0, batch_size=32, bucket=False, regression=False)
    batch = source.next()        # a collated host batch (with labels); a new shuffled epoch when one ends
    state = source.state(); source.load(state)   # resumable checkpoints: the epoch and position in it

Each seed's batches come from its own shuffled epochs (``epoch_batches`` with its seed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transferlab.train.batches import Encoded, collate, epoch_batches


class TaskSource:
    def __init__(self, data: Encoded, seed: int, batch_size: int, bucket: bool, regression: bool,
                 shard: Callable | None = None):
        self.data, self.seed, self.batch_size, self.bucket, self.regression = data, seed, batch_size, bucket, regression
        self.shard = shard  # data parallel: this process's share of each global batch (train/distributed.py)
        self.epoch = 0
        self.pos = 0  # micro-batches consumed in the current epoch
        self.micro: Any = iter(())
        self.samples = 0  # training examples consumed

    def epoch_batches(self) -> int:
        return -(-len(self.data) // self.batch_size)

    def next(self) -> dict:
        index = next(self.micro, None)
        if index is None:
            self.micro = iter(epoch_batches(self.data, self.batch_size, self.seed, self.epoch, self.bucket))
            self.epoch, self.pos = self.epoch + 1, 0
            index = next(self.micro)
        self.pos += 1
        self.samples += len(index)
        return collate(self.data, index if self.shard is None else self.shard(index), self.regression)

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load(self, state: dict[str, Any]) -> None:
        """After a checkpoint: the rest of the epoch the checkpoint was in."""
        self.epoch, self.pos = state["epoch"], state["pos"]
        if self.epoch:
            self.micro = iter(epoch_batches(self.data, self.batch_size, self.seed, self.epoch - 1,
                                            self.bucket)[self.pos:])

    def where(self, step: int) -> str:
        return ""
