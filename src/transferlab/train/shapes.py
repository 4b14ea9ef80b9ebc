"""Task shapes: what differs between one output per example, per word (tagging) and a span (QA).

A task declares ``kind`` (data/task.py). The loop stays generic: ``encode`` (train/batches.py) hands
token and span splits to their shape; the shape's ``loss`` is the loop's per-row cross entropy
(token logits (B, T, C) against IGNORE-padded (B, T) labels; span scores (B, 2, T) against (B, 2)
start/end positions). Evaluation is three steps, so an engine that runs the model its own way
(several seeds at once) only needs to produce the outputs:

    shape = shape_of(task)                                    # None for sequence tasks
    enc = shape.encode(split, task, tokenizer, max_length)
    outs = outputs(model, enc, batch_size, device)            # (row indices, float outputs) per batch
    preds = shape.decode(outs, enc, task)                     # tags per word / n-best answers per question
    scores = shape.metrics(preds, enc, task)                  # data/tagging.py, data/squad.py
    # shape.evaluate(model, enc, task, batch_size, device) does all three
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from transferlab.data.squad import best_spans, qa_metrics
from transferlab.data.tagging import tag_metrics, tags_of
from transferlab.data.task import IGNORE, Split, Task
from transferlab.errors import DataError
from transferlab.train.batches import SHAPE_ENCODERS, Encoded, collate, eval_batches, pack
from transferlab.train.fast import to_device


def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross entropy per row of the last axis: (B, T, C) tags or (B, 2, T) start/end scores; IGNORE skipped."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)


@torch.no_grad()
def outputs(model, enc: Encoded, batch_size: int, device: torch.device, amp: torch.dtype | None = None):
    """Yield (row indices, float32 numpy outputs) over the eval batches (sorted by length)."""
    was_training = model.training
    model.eval()
    try:
        for index in eval_batches(enc, batch_size):
            batch = to_device(collate(enc, index, False), device)
            batch.pop("labels")
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                out = model(**batch)
            yield index, out.float().cpu().numpy()
    finally:
        model.train(was_training)


def _fast(tokenizer, task: Task):
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"task {task.name}: a {task.kind} task needs a fast tokenizer (word ids, character "
                        f"offsets); {type(tokenizer).__name__} is not one")


def context_windows(tokenizer, questions: list[str], contexts: list[str], max_length: int, stride: int):
    """(question, context) pairs -> windows of at most ``max_length`` tokens, each the question beside
    consecutive context tokens, consecutive windows sharing ``stride`` tokens: what a fast tokenizer's
    ``truncation="only_second", return_overflowing_tokens=True`` returns (tests/test_extractive_qa.py
    checks they are equal), built here because tokenizers 0.23.2 (the GPU image's) returns at most two
    windows there and loses the rest of a long context. Returns (tokenizers Encodings, their example)."""
    backend = tokenizer.backend_tokenizer
    truncation, padding = backend.truncation, backend.padding
    backend.no_truncation()
    backend.no_padding()
    try:
        windows, example = [], []
        pair_extra = backend.num_special_tokens_to_add(True)
        for i, (question, context) in enumerate(zip(questions, contexts)):
            n = len(backend.encode(context, add_special_tokens=False).ids)
            room = max_length - pair_extra - len(backend.encode(question, add_special_tokens=False).ids)
            bounds, start = [], 0
            while True:
                end = min(start + room, n)
                bounds.append((start, end))
                if end >= n:
                    break
                start = end - stride
            cuts = backend.encode_batch([context] * len(bounds), add_special_tokens=False)
            asks = backend.encode_batch([question] * len(bounds), add_special_tokens=False)
            for (start, end), cut, ask in zip(bounds, cuts, asks):
                cut.truncate(end, direction="right")
                cut.truncate(end - start, direction="left")
                windows.append(backend.post_process(ask, cut, add_special_tokens=True))
                example.append(i)
        return windows, np.asarray(example, dtype=np.int64)
    finally:
        if truncation:
            backend.enable_truncation(**truncation)
        if padding:
            backend.enable_padding(**padding)


# ---------------------------------------------------------------- token classification


class TokenShape:
    kind = "token"

    @staticmethod
    def encode(split: Split, task: Task, tokenizer, max_length: int) -> Encoded:
        """Words -> subwords; each word's label on its first subword (``subwords: first``) or on all of
        them (``all``: continuations of a ``B-X`` word get ``I-X``); IGNORE on special tokens."""
        _fast(tokenizer, task)
        every = task.extra.get("subwords", "first") == "all"
        names = task.label_names
        to_inside = [names.index("I-" + n[2:]) if n.startswith("B-") and "I-" + n[2:] in names else i
                     for i, n in enumerate(names)]
        enc = tokenizer(split.words, is_split_into_words=True, truncation=True, max_length=max_length,
                        return_attention_mask=False, return_token_type_ids=True)
        ids = enc["input_ids"]
        width = max(len(x) for x in ids)
        labels = np.full((len(ids), width), IGNORE, dtype=np.int64)
        first = []
        for i in range(len(ids)):
            words, previous, starts = enc.word_ids(i), None, []
            for t, w in enumerate(words):
                if w is None:
                    continue
                gold = split.labels[i, w]
                if w != previous:
                    starts.append(t)
                    labels[i, t] = gold
                elif every and gold >= 0:
                    labels[i, t] = to_inside[gold]
                previous = w
            first.append(np.asarray(starts, dtype=np.int64))
        out = pack(ids, enc.get("token_type_ids"), labels, tokenizer)
        out.token_labels = True
        out.extra = {"first": first, "gold": tags_of(split.labels, names) if split.labelled else None}
        return out

    @staticmethod
    def decode(outs, enc: Encoded, task: Task) -> list[list[str]]:
        """The predicted tag of every word (read at its first subword); words cut off by max_length get none."""
        pred: list[list[str]] = [[] for _ in range(len(enc))]
        for index, logits in outs:
            best = logits.argmax(-1)
            for row, i in enumerate(index):
                pred[i] = [task.label_names[int(t)] for t in best[row, enc.extra["first"][i]]]
        return pred

    @staticmethod
    def metrics(pred: list[list[str]], enc: Encoded, task: Task) -> dict[str, float]:
        return tag_metrics(enc.extra["gold"], pred)

    @classmethod
    def evaluate(cls, model, enc: Encoded, task: Task, batch_size: int, device, amp=None, desc=None) -> dict:
        return cls.metrics(cls.decode(outputs(model, enc, batch_size, device, amp), enc, task), enc, task)


# ---------------------------------------------------------------- extractive QA


class SpanShape:
    kind = "span"

    @staticmethod
    def encode(split: Split, task: Task, tokenizer, max_length: int) -> Encoded:
        """(question, context) -> windows of ``max_length`` tokens over the context, consecutive windows
        sharing ``doc_stride`` tokens (at most what fits beside the question); labels (windows, 2): the answer's first and last token, or (0, 0)
        (the first token, [CLS]) when the window does not hold the whole answer (Devlin et al. 2019)."""
        _fast(tokenizer, task)
        # a question keeps at most half the window (cut at a token end) and the stride fits what is left:
        # the tokenizer itself panics when the stride does not fit beside the question
        limit = max(1, (max_length - 3) // 2)
        spans = tokenizer(split.texts, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        questions = [q if len(o) <= limit else q[: o[limit - 1][1]] for q, o in zip(split.texts, spans)]
        room = max_length - 3 - min(limit, max((len(o) for o in spans), default=0))  # context tokens per window
        if room < 2:
            raise DataError(f"model.max_length: {max_length} leaves no room for the context beside the question")
        stride = min(task.extra.get("doc_stride") or max_length // 3, room - 1)
        windows, example = context_windows(tokenizer, questions, split.text_pairs, max_length, stride)
        labels = np.zeros((len(example), 2), dtype=np.int64)
        chars = []
        for w, i in enumerate(example):
            win = windows[w]
            span = np.array([o if s == 1 else (-1, -1) for o, s in zip(win.offsets, win.sequence_ids)],
                            dtype=np.int64).reshape(-1, 2)
            chars.append(span)
            start, end = split.labels[i]
            inside = np.flatnonzero(span[:, 0] >= 0)
            if len(inside) and span[inside[0], 0] <= start and span[inside[-1], 1] >= end:
                labels[w] = (inside[span[inside, 0] <= start][-1], inside[span[inside, 1] >= end][0])
        out = pack([w.ids for w in windows], [w.type_ids for w in windows], labels, tokenizer)
        out.extra = {"example": example, "chars": chars, "contexts": split.text_pairs, "targets": split.targets}
        return out

    @staticmethod
    def spans(outs, enc: Encoded, task: Task) -> dict[int, list[tuple[float, float, int, int]]]:
        """{question row: [(score, probability, char start, char end), ...]}: the ``n_best`` best spans
        over all of a question's windows, each at most ``max_answer_length`` tokens, best first by score
        (start + end logit); probability: p(start) * p(end), each a softmax over the window's context
        tokens (as Hugging Face's question-answering pipeline reports it)."""
        n_best, max_len = int(task.extra.get("n_best", 20)), int(task.extra.get("max_answer_length", 30))
        cands: dict[int, list[tuple[float, float, int, int]]] = {}
        for index, scores in outs:
            for row, w in enumerate(index):
                chars = enc.extra["chars"][w]
                n = len(chars)
                start, end, context = scores[row, 0, :n], scores[row, 1, :n], chars[:, 0] >= 0
                found = best_spans(start, end, context, n_best, max_len)
                norm = _logsumexp(start[context]) + _logsumexp(end[context]) if context.any() else 0.0
                i = int(enc.extra["example"][w])
                cands.setdefault(i, []).extend((s, float(np.exp(s - norm)), int(chars[a, 0]), int(chars[b, 1]))
                                               for s, a, b in found)
        return {i: sorted(found, key=lambda c: -c[0])[:n_best] for i, found in cands.items()}

    @classmethod
    def decode(cls, outs, enc: Encoded, task: Task) -> dict[str, list[tuple]]:
        """{question id: [(score, answer text), ...]}: :meth:`spans` as text; best first."""
        out = {}
        for i, found in cls.spans(outs, enc, task).items():
            context = enc.extra["contexts"][i]
            out[enc.extra["targets"][i]["id"]] = [(s, context[a:b]) for s, _, a, b in found] or [(0.0, "")]
        return out

    @staticmethod
    def metrics(nbest: dict[str, list[tuple]], enc: Encoded, task: Task) -> dict[str, float]:
        return qa_metrics({qid: answers[0][1] for qid, answers in nbest.items()}, enc.extra["targets"])

    @classmethod
    def evaluate(cls, model, enc: Encoded, task: Task, batch_size: int, device, amp=None, desc=None) -> dict:
        return cls.metrics(cls.decode(outputs(model, enc, batch_size, device, amp), enc, task), enc, task)


def _logsumexp(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    top = x.max()
    return float(top + np.log(np.exp(x - top).sum()))


SHAPES = {"token": TokenShape, "span": SpanShape}
for _kind, _shape in SHAPES.items():  # batches.encode hands these kinds to their shape
    SHAPE_ENCODERS[_kind] = _shape.encode


def shape_of(task: Task):
    """The shape of a token or span task; None for sequence tasks (the loop's own predict/compute)."""
    return SHAPES.get(task.kind)
