"""Distillation (recipes/distill.py): the loss formulas, layer maps, and kd/pkd runs from a stored or exported teacher."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_spec_dict, write_sentiment_csv

from transferlab.errors import ModelError, SpecError
from transferlab.recipes.distill import Distiller, distill_loss, last_map, patient_loss, skip_map
from transferlab.spec import DistillSpec, load_spec
from transferlab.store import Store
from transferlab.train.loop import run


def test_kd_loss_is_the_mix_of_hard_and_tempered_soft_targets():
    torch.manual_seed(0)
    s, t, hard = torch.randn(8, 3), torch.randn(8, 3), torch.tensor(0.7)
    spec = DistillSpec(kind="kd", teacher="x", temperature=3.0, alpha=0.4)
    p_t = F.softmax(t / 3, -1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / 3, -1))).sum(-1).mean()
    want = 0.6 * hard + 0.4 * 9.0 * kl
    assert torch.allclose(distill_loss(spec, hard, s, t, regression=False), want, atol=1e-6)
    assert torch.allclose(distill_loss(spec, hard, t, t, regression=False), 0.6 * hard)  # same logits: no KL
    zero = DistillSpec(kind="kd", teacher="x", alpha=0.0)
    assert torch.equal(distill_loss(zero, hard, s, t, regression=False), hard)
    reg = distill_loss(spec, hard, s[:, :1], t[:, :1], regression=True)  # regression: MSE to the teacher
    assert torch.allclose(reg, 0.6 * hard + 0.4 * F.mse_loss(s[:, 0], t[:, 0]))


def test_patient_loss_compares_normalised_first_position_states():
    a = torch.zeros(4, 5, 8)
    a[:, 0, 0] = 3.0
    b = torch.zeros(4, 5, 8)
    b[:, 0, 0] = 0.5  # same direction, another length: no loss
    c = torch.zeros(4, 5, 8)
    c[:, 0, 1] = 2.0  # orthogonal unit vectors: |u - v|^2 = 2
    c[:, 1:] = 99.0  # other positions do not count
    hs, ht = (a, a), (b, c)
    assert patient_loss(hs, ht, {1: 0}) == 0
    assert torch.allclose(patient_loss(hs, ht, {1: 1}), torch.tensor(2.0))
    assert torch.allclose(patient_loss(hs, ht, {0: 1, 1: 1}), torch.tensor(4.0))  # summed over pairs


def test_pkd_layer_maps_follow_sun_et_al():
    assert skip_map(6, 12) == {1: 2, 2: 4, 3: 6, 4: 8, 5: 10}
    assert last_map(6, 12) == {1: 7, 2: 8, 3: 9, 4: 10, 5: 11}
    assert skip_map(2, 6) == {1: 3} and last_map(2, 6) == {1: 5}


@pytest.mark.parametrize("section, needle", [
    ({"kind": "kdd", "teacher": "x"}, "distill.kind"),
    ({"kind": "kd"}, "distill.teacher"),
    ({"kind": "kd", "teacher": "x", "alpha": 1.5}, "distill.alpha"),
    ({"kind": "pkd", "teacher": "x", "layers": "middle"}, "distill.layers"),
    ({"kind": "pkd", "teacher": "x", "layers": {"a": 1}}, "distill.layers"),
    ({"kind": "kd", "teacher": "x", "temprature": 2}, "unknown key 'temprature'"),
])
def test_bad_distill_sections_name_the_field(toy_task_dir, section, needle):
    with pytest.raises(SpecError, match=needle):
        load_spec({**tiny_spec_dict(toy_task_dir), "distill": section})


def _teacher(folder, store, flip: bool = False) -> str:
    """A tiny-bert fine-tuned on the toy task (labels flipped with ``flip``); returns its uid."""
    if flip:
        for split in ("train", "dev"):
            path = folder / f"{split}.csv"
            rows = path.read_text().splitlines()
            path.write_text("\n".join([rows[0]] + [f"{r[:-1]}{1 - int(r[-1])}" for r in rows[1:]]) + "\n")
    result = run(load_spec({**tiny_spec_dict(folder, epochs=6), "name": "teacher"}), store, progress=False)
    assert result.dev["accuracy"] >= 0.8
    return result.uid


def _student(data, **distill):
    spec = tiny_spec_dict(data, epochs=6)
    spec["model"] = {"name": "tiny-bert", "init": "random", "max_length": 32}
    return load_spec({**spec, "name": "student", "distill": distill})


def test_kd_student_learns_from_the_teacher_alone(tmp_path):
    """alpha = 1: the hard labels do not enter the loss; the student follows whichever teacher it has."""
    data = write_sentiment_csv(tmp_path / "toy")
    store = Store(tmp_path / "s.db")
    good = _teacher(data, store)
    flipped = _teacher(write_sentiment_csv(tmp_path / "flipped"), store, flip=True)
    follows = run(_student(data, kind="kd", teacher=good, alpha=1.0), store, progress=False)
    opposes = run(_student(data, kind="kd", teacher=flipped, alpha=1.0), store, progress=False)
    assert follows.dev["accuracy"] >= 0.8  # learnt from the teacher's soft targets only
    assert opposes.dev["accuracy"] <= 0.2  # the flipped teacher's labels, not the data's


def test_pkd_from_a_stored_run_equals_pkd_from_its_export(tmp_path):
    from transferlab.models.artifacts import load_run_model
    from transferlab.models.export import export_model

    data = write_sentiment_csv(tmp_path / "toy")
    store = Store(tmp_path / "s.db")
    uid = _teacher(data, store)
    folder = export_model(*load_run_model(store, uid), tmp_path / "teacher")
    common = {"kind": "pkd", "layers": {1: 1}, "beta": 10.0, "temperature": 2.0}
    a = run(_student(data, teacher=uid, **common), store, progress=False)
    b = run(_student(data, teacher=str(folder), **common), store, progress=False)
    kd = run(_student(data, teacher=uid, **{**common, "kind": "kd"}), store, progress=False)
    assert a.status == b.status == kd.status == "finished"
    ca, cb, ckd = (np.array([p[1] for p in store.curve(r.uid)]) for r in (a, b, kd))
    assert np.allclose(ca, cb, rtol=1e-4, atol=1e-5)  # the same teacher, read from the store or the folder
    assert not np.allclose(ca, ckd)  # the patient term is in the loss
    assert a.summary["n_params"] == kd.summary["n_params"]  # the teacher is not part of the student


def test_teacher_must_fit_the_student(tmp_path):
    from transferlab.data.build import build_task
    from transferlab.models.model import build_model
    from transferlab.recipes.distill import load_teacher

    data = write_sentiment_csv(tmp_path / "toy")
    store = Store(tmp_path / "s.db")
    uid = _teacher(data, store)
    spec = _student(data, kind="pkd", teacher=uid)
    task = build_task(spec.task)
    teacher = load_teacher(spec.distill, store)
    student = build_model(spec, task)
    teacher.tokenizer = type(teacher.tokenizer).from_pretrained(teacher.tokenizer.name_or_path)
    teacher.tokenizer.add_tokens(["zzqx"])
    with pytest.raises(ModelError, match="tokenizer"):
        Distiller(spec.distill, teacher, student, task)
    teacher = load_teacher(spec.distill, store)
    task.num_labels = 3
    with pytest.raises(ModelError, match="outputs"):
        Distiller(spec.distill, teacher, student, task)
    with pytest.raises(SpecError, match="teacher_store"):
        load_teacher(DistillSpec(kind="kd", teacher=uid), None)
