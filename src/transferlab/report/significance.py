"""Is the result real? Paired and distribution-level tests, seed planning, equivalence, many tasks.

    paired(a, b)                  paired t test, Wilcoxon signed-rank, CI of the mean paired difference
    shared_seeds(a, b)            the seeds two cells share (arms share the few-sample draw and data order)
    aso(a, b)                     Almost Stochastic Order (Dror et al. 2019), eps_min; < 0.5: A is better
    power(n, d) / seeds_needed(d) power of a paired or two-sample t test (noncentral t) and the n it needs
    plan_seeds(a, b, delta)       seeds needed to detect ``delta`` from a pilot's variance
    tost(a, b, margin)            two one-sided tests: equivalence within +-margin (Schuirmann 1987)
    expected_max_unbiased(v, k)   unbiased estimate of E[max of k runs] (Tang et al. 2020) + jackknife variance
    aggregate(table)              across tasks: mean rank, IQM, Friedman, Nemenyi critical difference
    sentence(comparison)          one comparison in words: "better" only when the primary test is significant
                                  after Holm, else "no difference detected (Δ, 95% CI, power, seeds needed)";
                                  ASO worded by eps_min; degenerate arms flagged
    conclusion(...)               an arm against the baseline over several tasks, counted the same way
    churn(predictions)            share of examples whose prediction changes between two seeds of a cell

scipy does the tests and distributions. Written by hand (no maintained package does them, or the
package is a heavy optional one): ASO (the algorithm of ``deepsig`` 1.2, which the tests compare
against when it is installed; deepsig is not a dependency), the U-statistic of the expected maximum
and its jackknife variance, the Nemenyi critical difference (from scipy's studentized range), churn.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from math import comb

import numpy as np
from scipy import stats

from transferlab.errors import UserError

ALPHA = 0.05
POWER = 0.8


@contextmanager
def _silent():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant or tiny samples: scipy warns and returns nan
        yield


def shared_seeds(a: Mapping[int, float], b: Mapping[int, float]) -> list[int]:
    """Seeds present in both cells (seed -> score), in order."""
    return sorted(set(a) & set(b))


def paired(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Paired t test and Wilcoxon signed-rank (two-sided) of a - b, with a t CI of the mean difference."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    d = a - b
    out = {"n": len(d), "diff": float(d.mean()) if len(d) else math.nan}
    nan = dict.fromkeys(("t", "t_p", "w", "w_p", "ci_low", "ci_high"), math.nan)
    if len(d) < 2:
        return {**out, **nan}
    with _silent():
        t = stats.ttest_rel(a, b)
        ci = t.confidence_interval(confidence)
        w = stats.wilcoxon(a, b) if np.any(d != 0) else None
    return {**out, "t": float(t.statistic), "t_p": float(t.pvalue),
            "w": float(w.statistic) if w else math.nan, "w_p": float(w.pvalue) if w else 1.0,
            "ci_low": float(ci.low), "ci_high": float(ci.high)}


# ----------------------------------------------------------------------------- ASO


def _quantile(scores: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The empirical quantile function: the ceil(n p)-th smallest score (deepsig's get_quantile_function)."""
    v = np.sort(scores)
    return v[np.clip(np.ceil(len(v) * p).astype(int) - 1, 0, len(v) - 1)]


def violation_ratio(a: np.ndarray, b: np.ndarray, dt: float = 0.005) -> float:
    """eps_W2 (Dror et al. 2019, eqs. 4-5): the share of the squared Wasserstein distance between the
    quantile functions of A and B where B's quantile is above A's (A violates "A is better")."""
    t = np.arange(dt, 1, dt)
    f, g = _quantile(a, t), _quantile(b, t)
    diff = g - f
    total = np.sum(diff**2 * dt)
    if total == 0:
        return 0.5
    diff[f >= g] = 0
    return float(np.sum(diff[1:] ** 2 * dt) / total)  # the first point is left out, as in deepsig


def aso(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, num_comparisons: int = 1,
        iterations: int = 1000, dt: float = 0.005, seed: int = 0) -> float:
    """eps_min of Almost Stochastic Order (Dror et al. 2019, del Barrio et al. 2018), as deepsig 1.2
    computes it: the violation ratio's upper confidence bound from a bootstrap of the quantile
    functions, Bonferroni-corrected for ``num_comparisons``. Below 0.5: A is almost stochastically
    larger than B (Ulmer et al. 2022 recommend rejecting the null at eps_min < 0.2 for strong claims).
    The bootstrap draws are those of deepsig.aso(..., seed=seed) (np.random.seed(seed + i))."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not len(a) or not len(b):
        return math.nan
    if num_comparisons > 1:
        confidence += (1 - confidence) / num_comparisons
    ratio = violation_ratio(a, b, dt)
    samples = []
    for i in range(1, iterations + 1):
        rs = np.random.RandomState(seed + i)  # the legacy global stream of np.random.seed(seed + i)
        sa = _quantile(a, rs.uniform(0, 1, len(a)))
        sb = _quantile(b, rs.uniform(0, 1, len(b)))
        samples.append(violation_ratio(sa, sb, dt))
    const = math.sqrt(len(a) * len(b) / (len(a) + len(b)))
    sigma = np.std(const * (np.asarray(samples) - ratio))
    return float(np.clip(ratio - sigma / const * stats.norm.ppf(1 - confidence), 0, 1))


# ----------------------------------------------------------------------------- power, TOST


def power(n: int, d: float, alpha: float = ALPHA, paired: bool = True) -> float:
    """Power of the two-sided t test for standardised effect ``d`` with ``n`` seeds (per arm when unpaired):
    paired df = n - 1, noncentrality d sqrt(n); two-sample df = 2n - 2, noncentrality d sqrt(n / 2)."""
    if n < 2:
        return math.nan
    df, ncp = (n - 1, d * math.sqrt(n)) if paired else (2 * n - 2, d * math.sqrt(n / 2))
    crit = stats.t.ppf(1 - alpha / 2, df)
    upper, lower = float(stats.nct.sf(crit, df, abs(ncp))), float(stats.nct.cdf(-crit, df, abs(ncp)))
    # far in a tail scipy's noncentral t gives NaN: the far (lower) tail is then ~0, a NaN upper one ~1
    upper = upper if not math.isnan(upper) else 1.0 if abs(ncp) > crit else 0.0
    return min(1.0, upper + (0.0 if math.isnan(lower) else lower))


def seeds_needed(d: float, alpha: float = ALPHA, target: float = POWER, paired: bool = True,
                 limit: int = 100_000) -> int | None:
    """The smallest n with power >= target (None when d is 0 or more than ``limit`` seeds are needed)."""
    d = abs(d)
    if d == 0 or math.isnan(d):
        return None
    lo, hi = 2, 2
    while power(hi, d, alpha, paired) < target:  # power rises with n: double, then bisect
        if hi > limit:
            return None
        lo, hi = hi, hi * 2
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if power(mid, d, alpha, paired) < target else (lo, mid)
    return lo


def plan_seeds(a: Sequence[float], b: Sequence[float] | None, delta: float, alpha: float = ALPHA,
               target: float = POWER, paired: bool = True) -> dict[str, float]:
    """Seeds needed to detect a difference ``delta`` given a pilot: the sd of the paired differences
    (``paired``, a and b by shared seed) or the pooled sd of the two arms (b None: a's own sd)."""
    if not delta or delta <= 0 or math.isnan(delta):
        raise UserError(f"--delta: the difference to detect must be > 0, got {delta}")
    a = np.asarray(a, dtype=float)
    bb = None if b is None else np.asarray(b, dtype=float)
    if len(a) < 2 or (bb is not None and len(bb) < 2):
        raise UserError(f"power analysis needs at least 2 pilot seeds per arm, got {len(a)}"
                        + ("" if bb is None else f" and {len(bb)}"))
    if paired and bb is not None:
        sd = float(np.std(a - bb, ddof=1))
    elif bb is not None:
        sd = float(math.sqrt((a.var(ddof=1) * (len(a) - 1) + bb.var(ddof=1) * (len(bb) - 1))
                             / (len(a) + len(bb) - 2)))
    else:
        sd = float(a.std(ddof=1))
    d = delta / sd if sd > 0 else math.inf
    n = 2 if math.isinf(d) else seeds_needed(d, alpha, target, paired and bb is not None)
    return {"sd": sd, "d": d, "seeds": n, "pilot_n": len(a), "power_now": 1.0 if math.isinf(d)
            else power(len(a), d, alpha, paired and bb is not None)}


def check_margin(margin: float | None, where: str = "tost_margin") -> None:
    if margin is None or not margin > 0:
        raise UserError(f"{where}: the equivalence margin must be > 0, got {margin}")


def tost(a: Sequence[float], b: Sequence[float], margin: float, paired: bool = True,
         alpha: float = ALPHA) -> dict[str, float]:
    """Two one-sided t tests of H0: |mean difference| >= margin. Equivalent when p < alpha, which is
    the same as the (1 - 2 alpha) CI of the difference lying inside (-margin, margin)."""
    check_margin(margin)
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return {"p": math.nan, "p_lower": math.nan, "p_upper": math.nan, "equivalent": False, "margin": margin}
    with _silent():
        if paired:
            lower = stats.ttest_1samp(a - b, -margin, alternative="greater")
            upper = stats.ttest_1samp(a - b, margin, alternative="less")
        else:
            lower = stats.ttest_ind(a + margin, b, equal_var=False, alternative="greater")
            upper = stats.ttest_ind(a - margin, b, equal_var=False, alternative="less")
    p = max(float(lower.pvalue), float(upper.pvalue))
    return {"p": p, "p_lower": float(lower.pvalue), "p_upper": float(upper.pvalue),
            "equivalent": bool(p < alpha), "margin": margin}


# ----------------------------------------------------------------------------- expected maximum


def expected_max_unbiased(values: Sequence[float], k: int, higher: bool = True) -> float:
    """E[max of k runs] as the U-statistic over all k-subsets of the n runs (Tang et al. 2020; Dodge et al.
    2021): sum_i v_(i) C(i-1, k-1) / C(n, k). Unbiased for k <= n, unlike Dodge et al. 2019's
    with-replacement estimate (stats.expected_max), which is biased down for small n."""
    v = np.sort(np.asarray(values, dtype=float))
    if not higher:
        return -expected_max_unbiased(-v, k)
    n = len(v)
    if k < 1 or k > n:
        return math.nan
    weights = np.array([comb(i - 1, k - 1) for i in range(1, n + 1)], dtype=float) / comb(n, k)
    return float(np.sum(v * weights))


def expected_max_variance(values: Sequence[float], k: int, higher: bool = True) -> float:
    """Jackknife variance of expected_max_unbiased (hand-written: n leave-one-out U-statistics;
    the jackknife is a consistent variance estimator for U-statistics, Arvesen 1969). Needs k < n."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    if k < 1 or k >= n:
        return math.nan
    loo = np.array([expected_max_unbiased(np.delete(v, i), k, higher) for i in range(n)])
    return float((n - 1) / n * np.sum((loo - loo.mean()) ** 2))


# ----------------------------------------------------------------------------- many tasks


def nemenyi_cd(k: int, n_tasks: int, alpha: float = ALPHA) -> float:
    """Critical difference of mean ranks (Nemenyi; Demsar 2006): q_alpha sqrt(k (k + 1) / (6 N)),
    q_alpha the studentized range quantile / sqrt(2)."""
    if k < 2 or n_tasks < 1:
        return math.nan
    q = stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    return float(q * math.sqrt(k * (k + 1) / (6 * n_tasks)))


def aggregate(table: Mapping[str, Mapping[str, Sequence[float]]], higher: bool = True,
              alpha: float = ALPHA) -> dict:
    """``table[arm][task]`` = the seeds' scores. Per arm: the mean rank of its task means (1 = best,
    ties averaged) and the IQM of all its runs (the 25% trimmed mean, Agarwal et al. 2021; only
    meaningful when the tasks share a metric scale). Over arms: Friedman's test on the task means
    (>= 3 arms and >= 2 tasks) and the Nemenyi critical difference of the mean ranks."""
    arms = list(table)
    tasks = [t for t in dict.fromkeys(t for arm in arms for t in table[arm])
             if all(len(table[arm].get(t, ())) for arm in arms)]  # tasks every arm ran
    means = np.array([[np.mean(table[arm][t]) for t in tasks] for arm in arms]).reshape(len(arms), len(tasks))
    ranks = stats.rankdata(-means if higher else means, axis=0) if tasks else np.full((len(arms), 0), np.nan)
    out = {"arms": arms, "tasks": tasks,
           "mean_rank": {arm: float(ranks[i].mean()) if tasks else math.nan for i, arm in enumerate(arms)},
           "iqm": {arm: float(stats.trim_mean(np.concatenate([np.asarray(table[arm][t], float) for t in tasks]),
                                               0.25)) if tasks else math.nan for arm in arms},
           "friedman": math.nan, "friedman_p": math.nan, "cd": nemenyi_cd(len(arms), len(tasks), alpha)}
    if len(arms) >= 3 and len(tasks) >= 2:
        with _silent():
            f = stats.friedmanchisquare(*means)
        out["friedman"], out["friedman_p"] = float(f.statistic), float(f.pvalue)
    return out


ASO_DOMINANCE = 0.2  # eps_min below this: almost stochastic dominance (Dror et al. 2019; Ulmer et al. 2022)
ASO_WEAK = 0.5  # eps_min below this (and not below ASO_DOMINANCE): weak dominance, no claim


def aso_words(eps: float, arm: str, baseline: str) -> str:
    """ASO's eps_min in words: < 0.2 dominance, 0.2-0.5 weak dominance (not a claim), else none."""
    if math.isnan(eps):
        return "ASO: too few seeds"
    if eps < ASO_DOMINANCE:
        return f"ASO eps_min {eps:.2f} < {ASO_DOMINANCE:g}: {arm} almost stochastically dominates {baseline}"
    if eps < ASO_WEAK:
        return (f"ASO eps_min {eps:.2f}: weak dominance of {arm} at most ({ASO_DOMINANCE:g}-{ASO_WEAK:g}; "
                f"not a claim, which needs < {ASO_DOMINANCE:g})")
    return f"ASO eps_min {eps:.2f}: no dominance of {arm} over {baseline}"


def _num(x: float, fmt: str = "+.4f") -> str:
    return "-" if x is None or math.isnan(x) else format(x, fmt)


def _p_text(p: float) -> str:
    return "-" if math.isnan(p) else f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def verdict(c: Mapping, alpha: float = ALPHA) -> str:
    """"better", "worse", "no difference" or "degenerate" (both arms wholly degenerate: no verdict)."""
    deg_a, deg_b = c.get("degenerate_a"), c.get("degenerate_b")
    if deg_a and deg_b and deg_a[0] == deg_a[1] > 0 and deg_b[0] == deg_b[1] > 0:
        return "degenerate"
    p, diff = c["p_holm"], c["diff"]
    if math.isnan(p) or math.isnan(diff) or p >= alpha or diff == 0:
        return "no difference"
    return "better" if (diff > 0) == c["higher"] else "worse"


def sentence(c: Mapping, alpha: float = ALPHA) -> str:
    """One comparison of an arm with the baseline in words. ``c``: arm, baseline, task, metric, split, higher,
    paired, n_a, n_b, diff, ci_low, ci_high, test (the primary test's name), p_holm (its Holm-adjusted p),
    power (for the observed Δ), seeds_needed (power 0.8; None: more than 100000), aso (eps_min), and
    optionally degenerate_a / degenerate_b ((degenerate runs, runs) of each arm) and tost (``tost``'s result)."""
    arm, base = c["arm"], c["baseline"]
    seeds = f"{c['n_a']} paired seeds" if c["paired"] else f"{c['n_a']} vs {c['n_b']} seeds"
    head = f"{arm} vs {base} on {c['task']} ({c['metric']}, {c['split']}, {seeds})"
    ci = (f"95% CI [{_num(c['ci_low'])}, {_num(c['ci_high'])}]" if not math.isnan(c["ci_low"])
          else "no 95% CI (too few seeds)")
    test = f"{c['test']} p {_p_text(c['p'])}, Holm-adjusted {_p_text(c['p_holm'])}"
    v = verdict(c, alpha)
    if v == "degenerate":
        (ka, na), (kb, nb) = c["degenerate_a"], c["degenerate_b"]
        text = (f"{head}: both arms are degenerate ({ka}/{na} and {kb}/{nb} runs not above the constant "
                f"prediction): no conclusion about the methods (Δ {_num(c['diff'])}, {test})")
    elif v in ("better", "worse"):
        text = f"{head}: {arm} is {v} than {base} (Δ {_num(c['diff'])}, {ci}, {test} < {alpha:g})"
    elif c["n_a"] < 2 or c["n_b"] < 2:
        text = f"{head}: no difference detected: too few seeds for a test (Δ {_num(c['diff'])})"
    else:
        needed = c.get("seeds_needed")
        need = ("Δ is 0" if c["diff"] == 0 else f"{needed} seeds{' per arm' if not c['paired'] else ''} "
                f"needed for power {POWER:g}" if needed else "more than 100000 seeds needed")
        text = (f"{head}: no difference detected (Δ {_num(c['diff'])}, {ci}, {test}; power "
                f"{_num(c.get('power', math.nan), '.2f')} for this Δ with these seeds; {need})")
    text += "; " + aso_words(c["aso"] if min(c["n_a"], c["n_b"]) >= 2 else math.nan, arm, base)
    if c.get("tost"):  # equivalence within the study's report.tost_margin
        t = c["tost"]
        text += (f"; {'equivalent' if t['equivalent'] else 'not shown equivalent'} within ±{t['margin']:g} "
                 f"(TOST p {_p_text(t['p'])})")
    return text + _degenerate_flag(c, arm, base, v)


def _degenerate_flag(c: Mapping, arm: str, base: str, v: str) -> str:
    """The degenerate runs of either arm, when there are any and the sentence has not said so already."""
    if v == "degenerate":
        return ""
    flags, whole = [], []
    for name, key in ((arm, "degenerate_a"), (base, "degenerate_b")):
        k, n = c.get(key) or (0, 0)
        if k:
            flags.append(f"{name} {k}/{n}")
        if k and k == n:
            whole.append(name)
    if not flags:
        return ""
    note = f" ({' and '.join(whole)} learned nothing: every run at the constant prediction)" if whole else ""
    return f"; degenerate runs: {', '.join(flags)}{note}"


def conclusion(arm: str, baseline: str, per_task: Sequence[dict], higher: bool = True,
               alpha: float = ALPHA, test: str = "p_holm") -> str:
    """An arm against the baseline over tasks, from per-task results with keys ``diff`` (arm - baseline)
    and ``test`` (a Holm-adjusted p-value): "better" counts only significant tasks, the rest are "no
    difference detected" whatever the sign of their Δ (and degenerate ones, ``verdict``, are counted apart)."""
    rows = [r for r in per_task if not math.isnan(r["diff"])]
    if not rows:
        return f"{arm} vs {baseline}: no task with results in both arms"
    counts = {"better": 0, "worse": 0, "no difference": 0, "degenerate": 0}
    for r in rows:
        counts[verdict({**r, "p_holm": r[test], "higher": higher}, alpha)] += 1
    n = len(rows)
    text = (f"{arm} vs {baseline} on {n} task{'s' if n > 1 else ''} (Holm-adjusted p < {alpha:g}): "
            f"better on {counts['better']}, worse on {counts['worse']}, no difference detected on "
            f"{counts['no difference']}")
    if counts["degenerate"]:
        text += f", both arms degenerate on {counts['degenerate']}"
    return text


# ----------------------------------------------------------------------------- churn


def churn(predictions: Sequence[np.ndarray]) -> float:
    """Mean over pairs of seeds of the share of examples whose predicted class differs (Milani Fard et
    al. 2016; Bhojanapalli et al. 2021). NaN with fewer than 2 seeds."""
    preds = [np.asarray(p) for p in predictions]
    if len(preds) < 2:
        return math.nan
    if len({p.shape for p in preds}) > 1:
        raise ValueError("churn: the seeds' predictions are not over the same examples")
    return float(np.mean([np.mean(p != q) for p, q in itertools.combinations(preds, 2)]))
