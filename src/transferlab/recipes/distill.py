"""Distillation in a fine-tuning run: ``kd`` (Hinton et al. 2015) and ``pkd`` (Sun et al. 2019).

    distill: {kind: kd, teacher: <run uid | run id | folder>, temperature: 2.0, alpha: 0.5}
    distill: {kind: pkd, teacher: ..., layers: skip, beta: 100.0}

The teacher is a stored run (``models/artifacts.py`` ``load_run_model``; from ``teacher_store`` or the
run's own store) or a folder: a ``transferlab export`` or any ``*ForSequenceClassification`` folder.
It runs frozen, in eval mode, on every training batch of the student (same inputs, so the two must
share the tokenizer: checked), and the loop's loss becomes, through the ``on_loss`` hook:

    kd:   (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
          regression: (1 - alpha) * MSE(student, labels) + alpha * MSE(student, teacher)
    pkd:  kd + beta * sum over (s, t) in layers of mean_batch || h_s / |h_s| - h_t / |h_t| ||^2

where ``h`` is the first position's ([CLS]) hidden state after a layer (``hidden_states[i]``, 0 = the
embeddings). ``layers``: ``skip`` (PKD-Skip: student layer j <- teacher layer j*N/M for j < M),
``last`` (PKD-Last: the teacher's layers N-M+1..N-1) or a mapping ``{student: teacher}``. The top
layer is left to the logits, as in the paper. Student and teacher must have one hidden size.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transferlab.errors import ModelError, SpecError
from transferlab.registry import Registry
from transferlab.spec import SECTION_CHECKS

KINDS = ("none", "kd", "pkd")
LAYER_MAPS: Registry = Registry("pkd layer map")


@LAYER_MAPS.register("skip")
def skip_map(student: int, teacher: int) -> dict[int, int]:
    """PKD-Skip: student layer j learns from teacher layer round(j * N / M), j = 1..M-1."""
    return {j: round(j * teacher / student) for j in range(1, student)}


@LAYER_MAPS.register("last")
def last_map(student: int, teacher: int) -> dict[int, int]:
    """PKD-Last: student layers 1..M-1 learn from the teacher's N-M+1..N-1."""
    return {j: teacher - student + j for j in range(1, student)}


@SECTION_CHECKS.register("DistillSpec")
def check_distill(spec) -> None:
    """Spec-time checks of a DistillSpec (no models needed)."""
    if spec.kind not in KINDS:
        raise SpecError(f"distill.kind: {spec.kind!r} is not allowed; allowed: {', '.join(KINDS)}")
    if spec.kind == "none":
        return
    if not spec.teacher:
        raise SpecError(f"distill.teacher: kind {spec.kind} needs a teacher (a stored run's uid or id, or a folder)")
    if not spec.temperature > 0:
        raise SpecError(f"distill.temperature: {spec.temperature} must be > 0")
    if not 0 <= spec.alpha <= 1:
        raise SpecError(f"distill.alpha: {spec.alpha} must lie in [0, 1]")
    if spec.beta < 0:
        raise SpecError(f"distill.beta: {spec.beta} must be >= 0")
    if isinstance(spec.layers, str):
        LAYER_MAPS.get(spec.layers, field="distill.layers")
    elif isinstance(spec.layers, dict):
        for s, t in spec.layers.items():
            if not (str(s).lstrip("-").isdigit() and str(t).lstrip("-").isdigit()) or int(s) < 0 or int(t) < 0:
                raise SpecError(f"distill.layers: {s!r}: {t!r} is not a student layer: teacher layer pair (ints >= 0)")
    else:
        raise SpecError(f"distill.layers: {spec.layers!r}; expected skip, last or a mapping {{student: teacher}}")


def resolve_layers(spec, student_layers: int, teacher_layers: int) -> dict[int, int]:
    if isinstance(spec.layers, str):
        pairs = LAYER_MAPS.get(spec.layers, field="distill.layers")(student_layers, teacher_layers)
    else:
        pairs = {int(s): int(t) for s, t in spec.layers.items()}
    for s, t in pairs.items():
        if s > student_layers or t > teacher_layers:
            raise SpecError(f"distill.layers: {s}: {t} is outside the student's 0-{student_layers} or the teacher's "
                            f"0-{teacher_layers} hidden states")
    if not pairs:
        raise SpecError(f"distill.layers: {spec.layers!r} maps no layers for a {student_layers}-layer student; give a "
                        f"mapping such as {{{student_layers}: {teacher_layers}}}")
    return pairs


class Teacher(nn.Module):
    """A frozen model in eval mode: ``teacher(batch)`` -> (logits, all hidden states)."""

    def __init__(self, model: nn.Module, num_outputs: int, problem: str, tokenizer, num_layers: int, hidden: int,
                 name: str):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.num_outputs, self.problem, self.tokenizer, self.name = num_outputs, problem, tokenizer, name
        self.num_layers, self.hidden_size = num_layers, hidden
        self.hf = not hasattr(model, "backbone")
        self._hidden: tuple[Tensor, ...] | None = None
        self.keys = ("input_ids", "attention_mask", "token_type_ids", "inputs")  # TransferModel.forward's
        if self.hf:
            types = getattr(model.config, "type_vocab_size", 0) >= 2
            self.keys = ("input_ids", "attention_mask", *(("token_type_ids",) if types else ()))
        else:
            model.backbone.register_forward_hook(self._keep)

    def _keep(self, module, args, output) -> None:
        self._hidden = output[0]

    def train(self, mode: bool = True) -> Teacher:  # always in eval mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, tuple[Tensor, ...]]:
        kw = {k: v for k, v in batch.items() if k in self.keys}
        if self.hf:
            out = self.model(**kw, output_hidden_states=True, return_dict=True)
            return out.logits, out.hidden_states
        logits = self.model(**kw)
        hidden, self._hidden = self._hidden, None
        return logits, hidden


def load_teacher(spec, store=None) -> Teacher:
    """The teacher named by ``distill.teacher``: a folder, or a stored run."""
    path = Path(spec.teacher).expanduser()
    if path.is_dir():
        return _folder_teacher(path)
    from transferlab.models.artifacts import load_run_model
    from transferlab.store import Store

    if spec.teacher_store is not None:
        if not Path(spec.teacher_store).is_file():
            raise ModelError(f"distill.teacher_store: {spec.teacher_store} does not exist")
        store = Store(spec.teacher_store)
    if store is None:
        raise SpecError("distill.teacher: a run id needs distill.teacher_store (the store that holds it)")
    if spec.teacher.startswith(("/", "./", "../", "~")):
        raise ModelError(f"distill.teacher: folder {spec.teacher} does not exist")
    model, task = load_run_model(store, spec.teacher)
    bb = model.backbone
    return Teacher(model, task.num_outputs, task.problem, bb.tokenizer, bb.num_layers, bb.hidden_size,
                   f"run {spec.teacher}")


def _folder_teacher(path: Path) -> Teacher:
    import transformers as tf

    if (path / "head.json").is_file():
        from transferlab.models.export import load_exported

        model = load_exported(path)
        import json

        meta = json.loads((path / "head.json").read_text())
        problem = "regression" if meta["num_outputs"] == 1 else "classification"
        bb = model.backbone
        return Teacher(model, meta["num_outputs"], problem, bb.tokenizer, bb.num_layers, bb.hidden_size, str(path))
    try:
        model = tf.AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True,
                                                                      dtype=torch.float32)
        tokenizer = tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelError(f"distill.teacher: {path} is not a sequence-classification folder: "
                         f"{str(e).splitlines()[0]}") from None
    c = model.config
    problem = "regression" if c.problem_type == "regression" or c.num_labels == 1 else "classification"
    return Teacher(model, c.num_labels, problem, tokenizer, c.num_hidden_layers, c.hidden_size, str(path))


def _same_vocab(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return len(a) == len(b) and a.get_vocab() == b.get_vocab()


class Distiller:
    """The loop hook: runs the teacher on each batch and mixes its targets into the loss (``on_loss``).
    Capabilities (read by train/support.py and train/multitask.py): one teacher for one plain student."""

    seed_stacked: ClassVar[bool] = False  # the teacher's targets are computed for one seed's batch
    multitask: ClassVar[bool] = False  # one teacher, one task head

    def __init__(self, spec, teacher: Teacher, student, task):
        self.spec, self.teacher = spec, teacher
        self.regression = task.problem == "regression"
        self.per_token = getattr(task, "kind", "sequence") == "token"  # soft targets on labelled words only
        if teacher.num_outputs != task.num_outputs or (teacher.problem == "regression") != self.regression:
            raise ModelError(f"distill.teacher: {teacher.name} has {teacher.num_outputs} outputs ({teacher.problem}); "
                             f"the task {task.name} needs {task.num_outputs} ({task.problem})")
        if task.modality == "text" and not _same_vocab(teacher.tokenizer, student.backbone.tokenizer):
            raise ModelError(f"distill.teacher: {teacher.name} has another tokenizer than the student; the teacher "
                             f"reads the student's input ids, so both need the same vocabulary")
        self.pairs: dict[int, int] = {}
        if spec.kind == "pkd":
            self.pairs = resolve_layers(spec, student.num_layers, teacher.num_layers)
            if teacher.hidden_size != student.backbone.hidden_size:
                raise ModelError(f"distill: pkd matches hidden states directly, but the student's hidden size is "
                                 f"{student.backbone.hidden_size} and the teacher's {teacher.hidden_size}")
            student.backbone.register_forward_hook(self._keep)
        self._hidden: tuple[Tensor, ...] | None = None

    def _keep(self, module, args, output) -> None:
        if module.training:
            self._hidden = output[0]

    def on_train_start(self, model, optimizer, total_steps: int) -> None:
        self.teacher.to(next(model.parameters()).device)

    def on_loss(self, batch: dict[str, Tensor], labels: Tensor, logits: Tensor, loss: Tensor) -> Tensor:
        t_logits, t_hidden = self.teacher(batch)
        if self.per_token:  # token tasks: (B, T, C) -> the (N, C) positions that carry a label
            keep = labels != -100
            logits, t_logits = logits[keep], t_logits[keep]
        return distill_loss(self.spec, loss, logits, t_logits.float(), self.regression,
                            self._take_hidden(), t_hidden, self.pairs)

    def _take_hidden(self):
        hidden, self._hidden = self._hidden, None
        return hidden


def distill_loss(spec, hard: Tensor, logits: Tensor, t_logits: Tensor, regression: bool,
                 s_hidden=None, t_hidden=None, pairs: dict[int, int] | None = None) -> Tensor:
    """The mixed loss of the module doc, from the hard loss and both models' outputs."""
    if regression:
        soft = F.mse_loss(logits.squeeze(-1).float(), t_logits.squeeze(-1))
    else:
        t = spec.temperature
        soft = F.kl_div(F.log_softmax(logits.float() / t, -1), F.log_softmax(t_logits / t, -1), log_target=True,
                        reduction="batchmean") * t * t
    total = (1 - spec.alpha) * hard + spec.alpha * soft
    if pairs:
        total = total + spec.beta * patient_loss(s_hidden, t_hidden, pairs)
    return total


def patient_loss(s_hidden, t_hidden, pairs: dict[int, int]) -> Tensor:
    """Sum over layer pairs of the batch mean of || h_s/|h_s| - h_t/|h_t| ||^2 at the first position."""
    terms = [(F.normalize(s_hidden[s][:, 0].float(), dim=-1) - F.normalize(t_hidden[t][:, 0].float(), dim=-1))
             .pow(2).sum(-1).mean() for s, t in pairs.items()]
    return torch.stack(terms).sum()


def build_distiller(spec, model, task, store=None) -> Distiller | None:
    """The hook for ``spec.distill`` (None for kind none)."""
    d = getattr(spec, "distill", None)
    if d is None or d.kind == "none":
        return None
    with torch.random.fork_rng(devices=[]):  # loading (random init, then weights) must not move the run's RNG
        teacher = load_teacher(d, store)
    return Distiller(d, teacher, model, task)
