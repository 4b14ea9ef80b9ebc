"""Study statistics against numpy/scipy reference computations on fixed inputs."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from transferlab.report import stats

VALUES = [0.61, 0.72, 0.55, 0.68, 0.70, 0.49, 0.66, 0.71]


def test_describe_matches_numpy():
    v = np.array(VALUES + [0.64, 0.58, 0.69, 0.62])  # 12 >= BCA_MIN_N: the BCa bootstrap
    d = stats.describe(v)
    assert d["n"] == 12 and d["ci_method"] == "bca"
    assert d["mean"] == pytest.approx(v.mean())
    assert d["std"] == pytest.approx(v.std(ddof=1))
    assert d["median"] == pytest.approx(np.median(v))
    assert (d["min"], d["max"]) == (v.min(), v.max())
    ref = sps.bootstrap((v,), np.mean, confidence_level=0.95, n_resamples=9999, method="BCa",
                        rng=np.random.default_rng(0))
    assert d["ci_low"] == pytest.approx(ref.confidence_interval.low)
    assert d["ci_high"] == pytest.approx(ref.confidence_interval.high)
    assert d["ci_low"] < v.mean() < d["ci_high"]


def test_small_n_gets_a_t_interval_and_is_flagged():
    """At n = 3 BCa can come out narrower than the data; below BCA_MIN_N describe uses the t interval."""
    v = [0.52, 0.71, 0.66]
    d = stats.describe(v)
    ref = sps.t.interval(0.95, 2, loc=np.mean(v), scale=sps.sem(v))
    assert d["ci_method"] == "t" and (d["ci_low"], d["ci_high"]) == pytest.approx(ref)
    assert d["ci_low"] < min(v) and d["ci_high"] > max(v)  # wider than the data's range here
    low, high = stats.bootstrap_ci(v)
    assert high - low < max(v) - min(v)  # what BCa gave: narrower than the range
    assert stats.describe(VALUES)["ci_method"] == "t" and stats.BCA_MIN_N == 10


def test_describe_edge_cases():
    assert stats.describe([])["n"] == 0 and math.isnan(stats.describe([])["mean"])
    one = stats.describe([0.5])
    assert one["mean"] == 0.5 and math.isnan(one["std"]) and math.isnan(one["ci_low"])
    const = stats.describe([0.5, 0.5, 0.5])
    assert (const["ci_low"], const["ci_high"]) == (0.5, 0.5) and const["std"] == 0.0


def test_bootstrap_ci_covers_the_true_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(123)
    trials, hits = 300, 0
    for i in range(trials):
        sample = rng.normal(loc=0.7, scale=0.05, size=20)
        low, high = stats.bootstrap_ci(sample, 0.95, n_resamples=2000, seed=i)
        hits += low <= 0.7 <= high
    coverage = hits / trials
    assert 0.89 <= coverage <= 0.99, coverage  # nominal 0.95; BCa at n=20 is slightly below


def test_expected_max_equals_exact_enumeration():
    v = [0.3, 0.9, 0.5, 0.7]
    for k in (1, 2, 3):
        brute = np.mean([max(draw) for draw in itertools.product(v, repeat=k)])  # all n^k equally likely draws
        assert stats.expected_max(v, k) == pytest.approx(brute)
    assert stats.expected_max(v, 1) == pytest.approx(np.mean(v))
    assert stats.expected_max(v, 200) == pytest.approx(max(v), abs=1e-6)
    # lower-is-better: the expected minimum
    brute_min = np.mean([min(draw) for draw in itertools.product(v, repeat=2)])
    assert stats.expected_max(v, 2, higher=False) == pytest.approx(brute_min)
    # monotone in k
    ks = [stats.expected_max(VALUES, k) for k in range(1, 9)]
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(ks))


def test_compare_equals_scipy_welch_and_mann_whitney():
    a, b = VALUES, [0.50, 0.52, 0.61, 0.48, 0.55, 0.58]
    res = stats.compare(a, b)
    t = sps.ttest_ind(a, b, equal_var=False)
    u = sps.mannwhitneyu(a, b, alternative="two-sided")
    assert res["t"] == pytest.approx(t.statistic) and res["t_p"] == pytest.approx(t.pvalue)
    assert res["u"] == pytest.approx(u.statistic) and res["u_p"] == pytest.approx(u.pvalue)
    assert res["diff"] == pytest.approx(np.mean(a) - np.mean(b))
    assert math.isnan(stats.compare([0.5], b)["t_p"])


def _holm_reference(p):
    """Holm's procedure as a sequence of tests: the smallest adjusted p at which each hypothesis is rejected."""
    m = len(p)
    order = np.argsort(p)
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj


def test_holm_matches_the_textbook_example_and_a_reference_loop():
    p = [0.01, 0.04, 0.03, 0.005]
    np.testing.assert_allclose(stats.holm(p), [0.03, 0.06, 0.06, 0.02])
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.uniform(0, 0.2, size=7)
        np.testing.assert_allclose(stats.holm(q), _holm_reference(q))
    with_nan = stats.holm([0.01, float("nan"), 0.02])
    assert math.isnan(with_nan[1])
    np.testing.assert_allclose(with_nan[[0, 2]], [0.02, 0.02])  # the family has m = 2


def test_steps_to_threshold():
    points = [(30, 0.6), (10, 0.5), (20, 0.71), (40, 0.8)]
    assert stats.steps_to_threshold(points, 0.7) == 20
    assert stats.steps_to_threshold(points, 0.9) is None
    assert stats.steps_to_threshold([(10, 2.0), (20, 0.4)], 0.5, higher=False) == 20
