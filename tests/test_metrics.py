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
    perfect, noisy = compute([name], labels, labels)[name], compute([name], wrong, labels)[name]
    if higher_is_better(name):
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
