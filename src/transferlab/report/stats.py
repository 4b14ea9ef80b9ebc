"""Statistics of a cell of seeds, and of an arm against a baseline arm.

    describe(values)             n, mean, std (ddof 1), median, min, max, 95% CI of the mean: BCa
                                 bootstrap from BCA_MIN_N seeds, a t interval below (flagged ci_method "t")
    expected_max(values, k)      expected best score over k seeds (Dodge et al. 2019)
    compare(a, b)                Welch's t-test and the Mann-Whitney U test (two-sided)
    holm(pvalues)                Holm (1979) adjusted p-values
    steps_to_threshold(...)      first evaluated step at which a run reaches a score

The computations are numpy's and scipy's; only the closed forms below are written here.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats

# Below this many seeds the CI of the mean is a t interval, not BCa: with 3-5 values the bootstrap
# can only resample those few values, and BCa came out narrower than the data's range at n = 3.
BCA_MIN_N = 10


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, n_resamples: int = 9999,
                 seed: int = 0) -> tuple[float, float]:
    """The BCa bootstrap CI of the mean (scipy.stats.bootstrap); a point for constant data, NaN for n < 2."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return math.nan, math.nan
    if np.all(v == v[0]):
        return float(v[0]), float(v[0])
    gen = np.random.default_rng(seed)
    key = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"  # scipy < 1.15
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa warns on tiny samples; the interval is still returned
        res = stats.bootstrap((v,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                              method="BCa", **{key: gen})
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def t_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """The t interval of the mean (scipy.stats.t.interval); a point for constant data, NaN for n < 2."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return math.nan, math.nan
    if np.all(v == v[0]):
        return float(v[0]), float(v[0])
    low, high = stats.t.interval(confidence, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    return float(low), float(high)


def describe(values: Sequence[float], confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """``ci_method``: "bca" from BCA_MIN_N values, "t" below (the report flags it)."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    if n == 0:
        return {"n": 0, **{k: math.nan for k in ("mean", "std", "median", "min", "max", "ci_low", "ci_high")},
                "ci_method": "-"}
    method = "bca" if n >= BCA_MIN_N else "t"
    low, high = bootstrap_ci(v, confidence, seed=seed) if method == "bca" else t_ci(v, confidence)
    return {"n": n, "mean": float(v.mean()), "std": float(v.std(ddof=1)) if n > 1 else math.nan,
            "median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()),
            "ci_low": low, "ci_high": high, "ci_method": method}


def expected_max(values: Sequence[float], k: int, higher: bool = True) -> float:
    """E[max of k draws] from the empirical distribution of ``values`` (Dodge et al. 2019, eq. 1):

        sum_i v_(i) * ((i/n)^k - ((i-1)/n)^k)   with v_(1) <= ... <= v_(n)

    ``higher=False`` gives the expected minimum (for errors such as mse).
    """
    v = np.sort(np.asarray(values, dtype=float))
    if not higher:
        return -expected_max(-v, k)
    n = len(v)
    if n == 0 or k < 1:
        return math.nan
    i = np.arange(1, n + 1)
    return float(np.sum(v * ((i / n) ** k - ((i - 1) / n) ** k)))


def compare(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Welch's t-test and the Mann-Whitney U test of ``a`` against ``b`` (two-sided); NaN when n < 2."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    out = {"diff": float(a.mean() - b.mean()) if len(a) and len(b) else math.nan}
    if len(a) < 2 or len(b) < 2:
        return {**out, "t": math.nan, "t_p": math.nan, "u": math.nan, "u_p": math.nan}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant samples: scipy warns and returns nan
        t = stats.ttest_ind(a, b, equal_var=False)
        u = stats.mannwhitneyu(a, b, alternative="two-sided")
    return {**out, "t": float(t.statistic), "t_p": float(t.pvalue), "u": float(u.statistic), "u_p": float(u.pvalue)}


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values; NaNs stay NaN and are not counted in the family.

    statsmodels (multipletests(method="holm")) is not a dependency and Holm is five lines:
    sort, multiply the i-th smallest by (m - i), take the running maximum, cap at 1.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), math.nan)
    idx = np.flatnonzero(~np.isnan(p))
    order = idx[np.argsort(p[idx], kind="stable")]
    m = len(order)
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def steps_to_threshold(points: Sequence[tuple[int, float]], threshold: float, higher: bool = True) -> int | None:
    """The first step of ``(step, value)`` points (in step order) whose value reaches ``threshold``."""
    for step, value in sorted(points):
        if value is not None and (value >= threshold if higher else value <= threshold):
            return int(step)
    return None
