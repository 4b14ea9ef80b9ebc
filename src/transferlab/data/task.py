"""What a task is: named splits of examples, a problem type, metrics and a baseline.

A task is built by a function registered in ``TASKS`` from a :class:`TaskSpec`:

    @TASKS.register("rte")
    def rte(spec: TaskSpec) -> Task: ...

Text tasks fill ``Split.texts`` (and ``text_pairs``); other modalities fill
``Split.inputs``: an int array (N, T) of token ids for ``modality="tokens"`` or a
float array (N, T, D) of vectors for ``modality="vectors"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from transferlab.registry import Registry

TASKS: Registry = Registry("task")

Problem = Literal["classification", "regression"]
Modality = Literal["text", "tokens", "vectors"]
Kind = Literal["sequence", "token", "span"]  # one output per example / per word / a span of the context
IGNORE = -100  # a label position that is not scored (padding, continuation subwords); torch's ignore_index


@dataclass
class Split:
    labels: np.ndarray  # int64 class ids, or float32 targets for regression; -1 / NaN when unlabelled
    texts: list[str] | None = None
    text_pairs: list[str] | None = None
    inputs: np.ndarray | None = None
    words: list[list[str]] | None = None  # token tasks: the words of each example (labels (N, W), IGNORE-padded)
    targets: list | None = None  # structured gold per example (span tasks: {"id", "answers", "starts"})

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def labelled(self) -> bool:
        if len(self.labels) == 0:
            return False
        if self.labels.dtype.kind == "f":
            return not np.isnan(self.labels).all()
        return bool(((self.labels >= 0) | (self.labels == IGNORE)).all())

    def subset(self, index: np.ndarray) -> Split:
        return Split(
            labels=self.labels[index],
            texts=None if self.texts is None else [self.texts[i] for i in index],
            text_pairs=None if self.text_pairs is None else [self.text_pairs[i] for i in index],
            inputs=None if self.inputs is None else self.inputs[index],
            words=None if self.words is None else [self.words[i] for i in index],
            targets=None if self.targets is None else [self.targets[i] for i in index],
        )


@dataclass
class Task:
    name: str
    splits: dict[str, Split]  # "train", "dev" (model selection), optional "test"
    problem: Problem
    num_labels: int  # 1 for regression
    metrics: tuple[str, ...]  # names understood by transferlab.data.metrics.compute
    main_metric: str
    label_names: list[str] | None = None
    modality: Modality = "text"
    vocab_size: int | None = None  # for modality="tokens"
    input_dim: int | None = None  # for modality="vectors"
    extra: dict = field(default_factory=dict)
    kind: Kind = "sequence"  # how outputs are shaped, trained and scored (train/shapes.py)

    @property
    def num_outputs(self) -> int:
        return 1 if self.problem == "regression" else self.num_labels
