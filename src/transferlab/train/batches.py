"""Turning a split into batches: tokenise once, pad per batch (dynamic padding).

Token ids are kept as one flat int32 array plus offsets, so a batch is a gather and a
pad, with no per-example Python work beyond the batch's own rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from transferlab.data.task import Split, Task
from transferlab.errors import DataError


@dataclass
class Encoded:
    """A split as model inputs. Text: ragged token ids; other modalities: a dense array."""

    labels: np.ndarray
    lengths: np.ndarray  # tokens per example
    ids: np.ndarray | None = None  # flat token ids of all examples (text)
    types: np.ndarray | None = None  # flat token type ids (text pairs)
    offsets: np.ndarray | None = None  # example i is ids[offsets[i]:offsets[i+1]]
    inputs: np.ndarray | None = None  # (N, T) token ids or (N, T, D) vectors
    pad_id: int = 0
    padded_inputs: bool = False  # token inputs right-padded with pad_id (ListOps, proteins): cropped per batch
    token_labels: bool = False  # labels (N, T) per token, IGNORE-padded (token tasks): cropped per batch
    extra: dict = field(default_factory=dict)  # what a task shape needs to decode (train/shapes.py)

    def __len__(self) -> int:
        return len(self.labels)


# task kind -> encode function of its shape; filled by train/shapes.py (imported by train/__init__.py)
SHAPE_ENCODERS: dict = {}


def encode(split: Split, task: Task, tokenizer, max_length: int) -> Encoded:
    if task.modality != "text":
        if split.inputs is None:
            raise DataError(f"task {task.name}: a {task.modality} split has no inputs")
        n, t = split.inputs.shape[:2]
        pad = task.extra.get("pad_id")
        if pad is not None and task.modality == "tokens":
            lengths = (split.inputs != pad).sum(1)
            return Encoded(labels=split.labels, lengths=lengths, inputs=split.inputs, pad_id=pad, padded_inputs=True)
        return Encoded(labels=split.labels, lengths=np.full(n, t), inputs=split.inputs)
    if tokenizer is None:
        raise DataError(f"task {task.name} is a text task but the backbone has no tokenizer")
    if task.kind != "sequence":  # tagging, extractive QA: words and windows (train/shapes.py registers them)
        return SHAPE_ENCODERS[task.kind](split, task, tokenizer, max_length)
    enc = tokenizer(
        split.texts, split.text_pairs, truncation=True, max_length=max_length,
        return_attention_mask=False, return_token_type_ids=True,
    )
    return pack(enc["input_ids"], enc.get("token_type_ids"), split.labels, tokenizer)


def pack(ids: list[list[int]], types: list[list[int]] | None, labels: np.ndarray, tokenizer) -> Encoded:
    """Ragged token ids (and segment ids) of a tokenizer's output as one flat array plus offsets."""
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((t for x in ids for t in x), dtype=np.int64, count=int(offsets[-1]))
    flat_types = None if types is None else np.fromiter((t for x in types for t in x), dtype=np.int64,
                                                        count=int(offsets[-1]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return Encoded(labels=labels, lengths=lengths, ids=flat, types=flat_types, offsets=offsets, pad_id=pad)


def collate(enc: Encoded, index: np.ndarray, regression: bool) -> dict[str, torch.Tensor]:
    """The batch of rows ``index``, padded to its longest row."""
    dtype = torch.float32 if regression else torch.long
    labels = torch.as_tensor(enc.labels[index], dtype=dtype)
    if enc.token_labels:
        labels = labels[:, : int(enc.lengths[index].max())]
    if enc.inputs is not None:
        if enc.padded_inputs:
            x = torch.as_tensor(enc.inputs[index, : int(enc.lengths[index].max())])
            mask = (x != enc.pad_id).long()
        else:
            x = torch.as_tensor(enc.inputs[index])
            mask = torch.ones(x.shape[:2], dtype=torch.long)
        return {"inputs": x, "attention_mask": mask, "labels": labels}
    lengths = enc.lengths[index]
    width = int(lengths.max())
    ids = np.full((len(index), width), enc.pad_id, dtype=np.int64)
    types = np.zeros((len(index), width), dtype=np.int64)
    mask = np.arange(width)[None, :] < lengths[:, None]
    starts = enc.offsets[index]
    gather = (starts[:, None] + np.arange(width)[None, :])[mask]
    ids[mask] = enc.ids[gather]
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask.astype(np.int64))}
    if enc.types is not None:
        types[mask] = enc.types[gather]
        batch["token_type_ids"] = torch.from_numpy(types)
    batch["labels"] = labels
    return batch


def epoch_batches(enc: Encoded, batch_size: int, seed: int, epoch: int, bucket: bool = False) -> list[np.ndarray]:
    """The shuffled batches of one epoch; the order depends only on (seed, epoch).

    With ``bucket``, rows are sorted by length inside chunks of 50 batches and the
    batches shuffled (Hugging Face's ``group_by_length`` idea): less padding, same
    randomness across chunks.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(enc))
    if bucket:
        chunk = batch_size * 50
        parts = [order[i : i + chunk] for i in range(0, len(order), chunk)]
        order = np.concatenate([p[np.argsort(-enc.lengths[p], kind="stable")] for p in parts])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if bucket:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def eval_batches(enc: Encoded, batch_size: int) -> list[np.ndarray]:
    """Rows sorted by length (least padding); predictions are put back in order by the caller."""
    order = np.argsort(enc.lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
