"""Statistics of a cell of seeds, and of an arm against a baseline arm.

    describe(values)             n, mean, std (ddof 1), median, min, max, 95% CI of the mean: BCa
                                 bootstrap from BCA_MIN_N seeds, a t interval below (flagged ci_method "t")
    expected_max(values, k)      expected best score over k seeds (Dodge et al. 2019)
    compare(a, b)                Welch's t-test and the Mann-Whitney U test (two-sided), each with a CI of
                                 the difference: Welch's t interval of the difference of means, and the
                                 Hodges-Lehmann shift with its exact distribution-free interval
    hodges_lehmann(a, b)         the median of all pairwise differences a_i - b_j and the interval that
                                 inverts the exact Mann-Whitney test (Hollander & Wolfe, ch. 4.3)
    holm(pvalues)                Holm (1979) adjusted p-values
    steps_to_threshold(...)      first evaluated step at which a run reaches a score

The computations are numpy's and scipy's; only the closed forms below are written here, and the exact
null distribution of U (scipy computes it privately for its exact p-values, but exposes no quantiles).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Sequence
from functools import lru_cache

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


def compare(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Welch's t-test and the Mann-Whitney U test of ``a`` against ``b`` (two-sided); NaN when n < 2.

    ``ci_low``/``ci_high``: Welch's t interval of the difference of means (scipy's). ``hl``, ``hl_low``,
    ``hl_high``, ``hl_conf``: the Hodges-Lehmann shift and its exact interval (``hodges_lehmann``)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    out = {"diff": float(a.mean() - b.mean()) if len(a) and len(b) else math.nan}
    nan = dict.fromkeys(("t", "t_p", "u", "u_p", "ci_low", "ci_high", "hl", "hl_low", "hl_high", "hl_conf"), math.nan)
    if len(a) < 2 or len(b) < 2:
        return {**out, **nan}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant samples: scipy warns and returns nan
        t = stats.ttest_ind(a, b, equal_var=False)
        u = stats.mannwhitneyu(a, b, alternative="two-sided")
        ci = t.confidence_interval(confidence)
    low, high = float(ci.low), float(ci.high)
    if np.all(a == a[0]) and np.all(b == b[0]):  # no spread at all: the difference is known exactly
        low = high = out["diff"]
    hl = hodges_lehmann(a, b, confidence)
    return {**out, "t": float(t.statistic), "t_p": float(t.pvalue), "u": float(u.statistic), "u_p": float(u.pvalue),
            "ci_low": low, "ci_high": high, "hl": hl["shift"], "hl_low": hl["low"], "hl_high": hl["high"],
            "hl_conf": hl["confidence"]}


EXACT_U_MAX = 2500  # m * n up to which U's null distribution is counted exactly; a normal approximation above


@lru_cache(maxsize=256)
def _u_counts(m: int, n: int) -> tuple[int, ...]:
    """How many of the C(m + n, m) orderings of two untied samples give U = 0, 1, ..., m n (the coefficients
    of the Gaussian binomial [m + n, m]_q), by the recurrence N(u; m, n) = N(u - n; m - 1, n) + N(u; m, n - 1)."""
    if m == 0 or n == 0:
        return (1,)
    first, second = _u_counts(m - 1, n), _u_counts(m, n - 1)
    out = [0] * (m * n + 1)
    for u, c in enumerate(first):
        out[u + n] += c
    for u, c in enumerate(second):
        out[u] += c
    return tuple(out)


def u_cdf(u: int, m: int, n: int) -> float:
    """P(U <= u) under the null of the Mann-Whitney test with samples of m and n untied values."""
    if u < 0:
        return 0.0
    if m * n > EXACT_U_MAX:
        mean, sd = m * n / 2, math.sqrt(m * n * (m + n + 1) / 12)
        return float(stats.norm.cdf((u + 0.5 - mean) / sd))
    counts = _u_counts(m, n)
    return sum(counts[: u + 1]) / math.comb(m + n, m)


def hodges_lehmann(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """The Hodges-Lehmann estimate of the shift a - b (the median of the m n pairwise differences) and the
    distribution-free interval [D_(c+1), D_(mn-c)] of the sorted differences D, c the largest u with
    P(U <= u) <= (1 - confidence) / 2: the shifts the exact two-sided Mann-Whitney test does not reject.

    Few seeds cannot reach every level (3 vs 3: at most 90%, since one ordering of 20 has P = 0.05): then
    the interval is the widest, [min D, max D], and ``confidence`` says what it achieves."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    m, n = len(a), len(b)
    if not m or not n:
        return {"shift": math.nan, "low": math.nan, "high": math.nan, "confidence": math.nan}
    d = np.sort((a[:, None] - b[None, :]).ravel())
    c = -1
    while u_cdf(c + 1, m, n) <= (1 - confidence) / 2:
        c += 1
    c = max(c, 0)  # below the level asked for: the widest interval the data allow
    return {"shift": float(np.median(d)), "low": float(d[c]), "high": float(d[m * n - 1 - c]),
            "confidence": 1 - 2 * u_cdf(c, m, n)}


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
