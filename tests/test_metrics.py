"""Metrics against scikit-learn / scipy, their directions, and the constant baseline."""

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from transferlab.data import METRICS, Split, Task, baseline, compute, higher_is_better
from transferlab.errors import DataError, SpecError

Y = np.array([0, 1, 1, 0, 1, 1, 0, 0, 1, 1])
P = np.array([0, 1, 0, 0, 1, 1, 1, 0, 1, 0])
YR = np.array([0.1, 2.5, 3.0, 4.2, 1.1, 5.0, 2.2, 0.0])
PR = np.array([0.3, 2.0, 3.5, 3.9, 1.0, 4.1, 2.8, 0.9])


def test_classification_metrics_match_sklearn():
    out = compute(["accuracy", "f1", "matthews"], P, Y)
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(Y, P)) == pytest.approx(0.7)
    assert out["f1"] == pytest.approx(skm.f1_score(Y, P))
    assert out["matthews"] == pytest.approx(skm.matthews_corrcoef(Y, P))
    assert all(type(v) is float for v in out.values())


def test_f1_counts_class_one_as_positive():
    # 2 true positives, 1 false positive, 1 false negative -> f1 = 2*2 / (2*2 + 1 + 1)
    assert compute(["f1"], np.array([1, 1, 1, 0, 0]), np.array([1, 1, 0, 1, 0]))["f1"] == pytest.approx(4 / 6)


def test_regression_metrics_match_scipy():
    out = compute(["pearson", "spearman", "mse", "rmse"], PR, YR)
    assert out["pearson"] == pytest.approx(stats.pearsonr(PR, YR)[0])
    assert out["spearman"] == pytest.approx(stats.spearmanr(PR, YR)[0])
    assert out["mse"] == pytest.approx(np.mean((PR - YR) ** 2))
    assert out["rmse"] == pytest.approx(np.sqrt(np.mean((PR - YR) ** 2)))


def test_two_dimensional_predictions():
    logits = np.eye(2)[P] * 3.0 - 1.0
    assert compute(["accuracy"], logits, Y) == compute(["accuracy"], P, Y)
    assert compute(["pearson"], PR[:, None], YR)["pearson"] == pytest.approx(stats.pearsonr(PR, YR)[0])


def test_constant_predictions_give_zero_correlation_not_nan():
    out = compute(["pearson", "spearman"], np.full(len(YR), 2.0), YR)
    assert out == {"pearson": 0.0, "spearman": 0.0}


@pytest.mark.parametrize("name", METRICS.names())
def test_every_metric_is_best_on_perfect_predictions(name):
    metric = METRICS.get(name)
    labels = YR if metric.regression else Y
    wrong = PR if metric.regression else P
    key = f"{name}[1]" if metric.per_class else name  # per-class metrics: the value of class 1
    perfect, noisy = compute([name], labels, labels)[key], compute([name], wrong, labels)[key]
    if higher_is_better(key):
        assert perfect == pytest.approx(1.0) and noisy < perfect
    else:
        assert perfect == pytest.approx(0.0) and noisy > perfect


def test_directions_and_unknown_names():
    assert higher_is_better("accuracy") and higher_is_better("spearman")
    assert not higher_is_better("rmse") and not higher_is_better("mse")
    with pytest.raises(SpecError, match="unknown metric 'bleu'.*accuracy"):
        compute(["bleu"], P, Y)
    with pytest.raises(SpecError, match="bleu"):
        higher_is_better("bleu")


def test_length_mismatch_and_empty():
    with pytest.raises(ValueError, match="3 predictions for 10 labels"):
        compute(["accuracy"], P[:3], Y)
    with pytest.raises(DataError, match="empty"):
        compute(["accuracy"], np.array([]), np.array([]))


def _task(problem, train, dev, metrics):
    dtype = np.float32 if problem == "regression" else np.int64
    splits = {"train": Split(np.array(train, dtype=dtype)), "dev": Split(np.array(dev, dtype=dtype))}
    n = 1 if problem == "regression" else 3
    return Task("toy", splits, problem, n, metrics, metrics[0])


def test_baseline_classification_predicts_train_majority():
    task = _task("classification", [2, 2, 1, 0, 2], [2, 1, 2, 2], ("accuracy", "matthews"))
    assert baseline(task) == {"accuracy": 0.75, "matthews": 0.0}


def test_baseline_regression_predicts_train_mean():
    task = _task("regression", [1.0, 2.0, 3.0, 6.0], [3.0, 1.0, 2.0], ("rmse", "pearson", "spearman"))
    out = baseline(task)
    assert out["rmse"] == pytest.approx(np.sqrt(np.mean((np.array([3.0, 1.0, 2.0]) - 3.0) ** 2)))
    assert out["pearson"] == 0.0 and out["spearman"] == 0.0


def test_baseline_needs_labelled_split():
    task = _task("classification", [0, 1, 1], [0, 1], ("accuracy",))
    task.splits["test"] = Split(np.array([-1, -1]))
    with pytest.raises(DataError, match="unlabelled"):
        baseline(task, "test")
    with pytest.raises(DataError, match="no 'nope' split"):
        baseline(task, "nope")


# ---------------------------------------------------------------- any number of classes (issue 15)

Y3 = np.array([0, 1, 2, 2, 1, 0, 2, 1, 1, 0, 2, 2])
P3 = np.array([0, 2, 2, 1, 1, 0, 2, 0, 1, 0, 2, 1])


def test_multiclass_metrics_match_sklearn():
    names = ["accuracy", "mcc", "f1", "precision", "recall", "f1_macro", "f1_weighted", "precision_macro",
             "precision_weighted", "recall_macro", "recall_weighted", "f1_per_class", "recall_per_class"]
    out = compute(names, P3, Y3)
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(Y3, P3))
    assert out["mcc"] == pytest.approx(skm.matthews_corrcoef(Y3, P3))
    for base, fn in (("f1", skm.f1_score), ("precision", skm.precision_score), ("recall", skm.recall_score)):
        assert out[base] == pytest.approx(fn(Y3, P3, average="macro"))  # documented: f1 on 3 classes is macro
        assert out[f"{base}_macro"] == pytest.approx(fn(Y3, P3, average="macro"))
        assert out[f"{base}_weighted"] == pytest.approx(fn(Y3, P3, average="weighted"))
    per = skm.f1_score(Y3, P3, average=None)
    assert [out[f"f1_per_class[{i}]"] for i in range(3)] == pytest.approx(list(per))
    assert out["recall_per_class[2]"] == pytest.approx(skm.recall_score(Y3, P3, average=None)[2])
    assert out["f1_macro"] != pytest.approx(out["f1_weighted"])  # the fixture tells the averages apart


def test_binary_metrics_and_averages_match_sklearn():
    out = compute(["f1", "precision", "recall", "f1_weighted", "precision_per_class"], P, Y)
    assert out["f1"] == pytest.approx(skm.f1_score(Y, P))
    assert out["precision"] == pytest.approx(skm.precision_score(Y, P))
    assert out["recall"] == pytest.approx(skm.recall_score(Y, P))
    assert out["f1_weighted"] == pytest.approx(skm.f1_score(Y, P, average="weighted"))
    assert out["precision_per_class[0]"] == pytest.approx(skm.precision_score(Y, P, pos_label=0))
    # num_classes fixes the class count when a split misses the top class
    assert set(compute(["f1_per_class"], np.array([0, 1]), np.array([0, 1]), num_classes=3)) == \
        {"f1_per_class[0]", "f1_per_class[1]", "f1_per_class[2]"}
    named = compute(["f1_per_class"], P, Y, 2, ["negative", "positive"])
    assert named == {"f1_per_class[negative]": pytest.approx(skm.f1_score(Y, P, pos_label=0)),
                     "f1_per_class[positive]": pytest.approx(skm.f1_score(Y, P))}
    assert higher_is_better("f1_per_class[positive]")


def test_regression_metrics_on_any_number_of_classes():
    out = compute(["pearson", "spearman", "mse", "rmse"], P3, Y3)  # class ids as ordered numbers
    assert out["pearson"] == pytest.approx(stats.pearsonr(P3, Y3)[0])
    assert out["spearman"] == pytest.approx(stats.spearmanr(P3, Y3)[0])
    assert out["mse"] == pytest.approx(skm.mean_squared_error(Y3, P3))
    assert out["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(Y3, P3)))
    assert higher_is_better("f1_per_class[1]") and not higher_is_better("rmse")


def test_metric_set_checked_against_the_task(tmp_path):
    from transferlab.data.build import build_task
    from transferlab.spec import TaskSpec

    reg = tmp_path / "reg"
    reg.mkdir()
    for split in ("train", "dev"):
        (reg / f"{split}.csv").write_text("text,label\n" + "".join(f"t {i},{i / 3:.3f}\n" for i in range(9)))
    with pytest.raises(SpecError, match="'f1' needs class predictions but the task is a regression task"):
        build_task(TaskSpec(name="csv", path=str(reg), options={"metrics": ["pearson", "f1"]}))
    three = tmp_path / "three"
    three.mkdir()
    for split in ("train", "dev"):
        (three / f"{split}.csv").write_text("text,label\n" + "".join(f"t {i},{'abc'[i % 3]}\n" for i in range(9)))
    with pytest.raises(SpecError, match="main_metric: 'f1_per_class' gives one value per class"):
        build_task(TaskSpec(name="csv", path=str(three),
                            options={"metrics": ["f1_per_class"], "main_metric": "f1_per_class"}))
    task = build_task(TaskSpec(name="csv", path=str(three), options={"metrics": ["accuracy", "f1"]}))
    assert task.metrics == ("accuracy", "f1") and task.num_labels == 3


def test_accuracy_f1_on_a_three_class_task_trains(tmp_path):
    """The issue's crash: metrics [accuracy, f1] on 3 classes now reports macro F1 after training."""
    import random

    from conftest import tiny_spec_dict

    from transferlab.spec import spec_from_dict
    from transferlab.store import Store
    from transferlab.train.loop import run

    rng = random.Random(0)
    words = {"a": "great", "b": "awful", "c": "plain"}
    folder = tmp_path / "three"
    folder.mkdir()
    for split, n in (("train", 48), ("dev", 24)):
        rows = [f"{' '.join(rng.sample(['the', 'film', 'was', 'a'], 3))} {words[c]},{c}"
                for c in (("abc"[i % 3]) for i in range(n))]
        (folder / f"{split}.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    spec = tiny_spec_dict(folder, epochs=1, num_evals=1)
    spec["task"]["options"] = {"metrics": ["accuracy", "f1", "f1_per_class"]}
    result = run(spec_from_dict(spec), Store(tmp_path / "s.db"), progress=False)
    assert result.status == "finished"
    # per-class values are keyed by the class's name (issue 26), not its index
    assert set(result.dev) == {"accuracy", "f1", "f1_per_class[a]", "f1_per_class[b]", "f1_per_class[c]"}
    assert result.dev["f1"] == pytest.approx(np.mean([result.dev[f"f1_per_class[{c}]"] for c in "abc"]))
    assert set(result.summary["baselines"]["dev"]) == set(result.dev)
