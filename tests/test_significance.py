"""Paired tests, ASO, power, TOST, the unbiased expected maximum, many-task aggregation and churn,
each against a reference on fixed inputs (scipy, deepsig when installed, brute force, textbook numbers)."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from transferlab.errors import UserError
from transferlab.report import significance as sig

A = [0.71, 0.66, 0.74, 0.69, 0.73, 0.62, 0.70, 0.75, 0.68, 0.72]
B = [0.68, 0.65, 0.70, 0.66, 0.71, 0.63, 0.66, 0.71, 0.64, 0.70]


def test_paired_equals_scipy_and_the_hand_t_interval():
    r = sig.paired(A, B)
    t, w = sps.ttest_rel(A, B), sps.wilcoxon(A, B)
    assert (r["t"], r["t_p"]) == pytest.approx((t.statistic, t.pvalue))
    assert (r["w"], r["w_p"]) == pytest.approx((w.statistic, w.pvalue))
    d = np.subtract(A, B)
    half = sps.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert r["diff"] == pytest.approx(d.mean()) and r["n"] == 10
    # pairing removes the seed effect: here paired p << Welch p
    assert r["t_p"] < 0.001 < sps.ttest_ind(A, B, equal_var=False).pvalue
    assert math.isnan(sig.paired([0.5], [0.4])["t_p"])
    assert sig.paired([0.5, 0.6], [0.5, 0.6])["w_p"] == 1.0  # no difference at all


def test_violation_ratio_and_aso_extremes():
    lo, hi = [0.1, 0.2, 0.3, 0.4], [0.6, 0.7, 0.8, 0.9]
    assert sig.violation_ratio(np.array(hi), np.array(lo)) == 0.0
    assert sig.violation_ratio(np.array(lo), np.array(hi)) == pytest.approx(1.0, abs=0.01)
    assert sig.aso(hi, lo, iterations=200) == 0.0  # A always better: no violation
    assert sig.aso(lo, hi, iterations=200) == pytest.approx(1.0, abs=0.01)


def test_aso_equals_deepsig_on_fixed_inputs():
    deepsig = pytest.importorskip("deepsig", reason="deepsig (the reference implementation) is not installed")
    from deepsig.aso import compute_violation_ratio

    rng = np.random.default_rng(3)
    a, b = rng.normal(0.72, 0.03, 10), rng.normal(0.70, 0.04, 12)
    assert sig.violation_ratio(a, b, 0.005) == pytest.approx(compute_violation_ratio(a, b, dt=0.005))
    for args in ({}, {"num_comparisons": 3}):
        ref = deepsig.aso(a, b, seed=7, show_progress=False, num_bootstrap_iterations=300,
                          num_comparisons=args.get("num_comparisons", 1))
        mine = sig.aso(a, b, seed=7, iterations=300, **args)
        assert mine == pytest.approx(ref, abs=1e-12)
        assert 0 < mine < 1


def test_power_reproduces_cohens_textbook_numbers():
    # Cohen (1988), Table 2.4.1: d = 0.5, two-sided alpha 0.05, power 0.8 needs n = 64 per group
    assert sig.seeds_needed(0.5, paired=False) == 64
    assert sig.power(64, 0.5, paired=False) == pytest.approx(0.80, abs=0.005)
    assert sig.power(63, 0.5, paired=False) < 0.8 <= sig.power(64, 0.5, paired=False)
    assert sig.seeds_needed(0.8, paired=False) == 26  # Cohen's "large" effect: 26 per group
    assert sig.seeds_needed(0.5, paired=True) == 34  # paired, d_z = 0.5 (G*Power: 34)
    # the power of a paired test equals a simulation of it
    rng = np.random.default_rng(0)
    d = rng.normal(0.5, 1.0, size=(20000, 12))
    simulated = np.mean(sps.ttest_1samp(d, 0, axis=1).pvalue < 0.05)
    assert sig.power(12, 0.5, paired=True) == pytest.approx(simulated, abs=0.015)


def test_plan_seeds_from_a_pilot_and_its_bad_input():
    r = sig.plan_seeds(A, B, delta=0.01)
    sd = np.std(np.subtract(A, B), ddof=1)
    assert r["sd"] == pytest.approx(sd) and r["seeds"] == sig.seeds_needed(0.01 / sd)
    assert sig.power(r["seeds"], 0.01 / sd) >= 0.8 > sig.power(r["seeds"] - 1, 0.01 / sd)
    unpaired = sig.plan_seeds(A, B, delta=0.01, paired=False)
    assert unpaired["seeds"] > r["seeds"]  # the seed effect makes independent arms cost more
    with pytest.raises(UserError, match="at least 2 pilot seeds"):
        sig.plan_seeds([0.7], [0.6], delta=0.01)
    with pytest.raises(UserError, match="must be > 0"):
        sig.plan_seeds(A, B, delta=0)


def test_tost_equals_the_ci_inclusion_rule_and_hand_t():
    d = np.subtract(A, B)
    for margin in (0.01, 0.025, 0.03, 0.05):
        r = sig.tost(A, B, margin)
        se = d.std(ddof=1) / math.sqrt(len(d))
        p_lower = sps.t.sf((d.mean() + margin) / se, len(d) - 1)
        p_upper = sps.t.cdf((d.mean() - margin) / se, len(d) - 1)
        assert r["p"] == pytest.approx(max(p_lower, p_upper))
        low, high = sps.t.interval(0.90, len(d) - 1, loc=d.mean(), scale=se)  # the (1 - 2 alpha) CI
        assert r["equivalent"] == (-margin < low and high < margin)
    assert not sig.tost(A, B, 0.01)["equivalent"] and sig.tost(A, B, 0.05)["equivalent"]
    r = sig.tost(A, B, 0.05, paired=False)
    ref = sps.ttest_ind(np.add(A, 0.05), B, equal_var=False, alternative="greater").pvalue
    assert r["p_lower"] == pytest.approx(ref)
    for bad in (0, -0.01):
        with pytest.raises(UserError, match="margin must be > 0"):
            sig.tost(A, B, bad)


def test_unbiased_expected_max_equals_brute_force_over_subsets():
    v = [0.3, 0.9, 0.5, 0.7, 0.6]
    for k in range(1, 6):
        brute = np.mean([max(c) for c in itertools.combinations(v, k)])  # every k-subset equally likely
        assert sig.expected_max_unbiased(v, k) == pytest.approx(brute)
    assert sig.expected_max_unbiased(v, 2, higher=False) == pytest.approx(
        np.mean([min(c) for c in itertools.combinations(v, 2)]))
    assert math.isnan(sig.expected_max_unbiased(v, 6))
    # jackknife variance by hand: leave one out, recompute by brute force
    k, n = 3, len(v)
    loo = [np.mean([max(c) for c in itertools.combinations(v[:i] + v[i + 1:], k)]) for i in range(n)]
    jack = (n - 1) / n * np.sum((np.array(loo) - np.mean(loo)) ** 2)
    assert sig.expected_max_variance(v, k) == pytest.approx(jack)


def test_unbiased_expected_max_is_unbiased_where_dodge_2019_is_not():
    from transferlab.report.stats import expected_max

    rng = np.random.default_rng(1)
    k, n = 5, 6
    truth = np.mean(rng.normal(size=(200000, k)).max(1))
    samples = rng.normal(size=(20000, n))
    unbiased = np.mean([sig.expected_max_unbiased(s, k) for s in samples])
    dodge = np.mean([expected_max(s, k) for s in samples])
    assert unbiased == pytest.approx(truth, abs=0.01)
    assert truth - dodge > 0.1  # with replacement repeats values: biased down


def test_nemenyi_cd_matches_demsar_table():
    # Demsar (2006), Table 5(a): q_0.05 for k = 2..10 classifiers
    q = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]
    for k, qk in zip(range(2, 11), q):
        assert sig.nemenyi_cd(k, 6) == pytest.approx(qk * math.sqrt(k * (k + 1) / 36), abs=2e-3)


def test_aggregate_ranks_iqm_and_friedman():
    table = {"a": {"t1": [0.9, 0.8], "t2": [0.7, 0.7], "t3": [0.6, 0.5], "t4": [0.8, 0.8]},
             "b": {"t1": [0.7, 0.7], "t2": [0.8, 0.8], "t3": [0.4, 0.4], "t4": [0.6, 0.5]},
             "c": {"t1": [0.5, 0.5], "t2": [0.6, 0.6], "t3": [0.3, 0.3], "t4": [0.5, 0.5]}}
    r = sig.aggregate(table)
    assert r["mean_rank"] == pytest.approx({"a": 1.25, "b": 1.75, "c": 3.0})
    means = [[np.mean(table[a][t]) for t in ("t1", "t2", "t3", "t4")] for a in "abc"]
    f = sps.friedmanchisquare(*means)
    assert (r["friedman"], r["friedman_p"]) == pytest.approx((f.statistic, f.pvalue))
    assert r["iqm"]["a"] == pytest.approx(sps.trim_mean([0.9, 0.8, 0.7, 0.7, 0.6, 0.5, 0.8, 0.8], 0.25))
    assert r["cd"] == pytest.approx(sig.nemenyi_cd(3, 4))
    two = sig.aggregate({k: table[k] for k in "ab"})
    assert math.isnan(two["friedman_p"]) and two["mean_rank"]["a"] == 1.25


def test_conclusion_in_words_counts_only_significant_tasks():
    rows = [{"diff": 0.02, "p_holm": 0.01}, {"diff": 0.01, "p_holm": 0.2}, {"diff": 0.03, "p_holm": 0.03},
            {"diff": -0.01, "p_holm": 0.5}]
    assert sig.conclusion("A", "B", rows) == ("A vs B on 4 tasks (Holm-adjusted p < 0.05): better on 2, worse on 0, "
                                              "no difference detected on 2")
    assert sig.conclusion("A", "B", rows, higher=False).endswith("better on 0, worse on 2, no difference detected on 2")
    # the over-read: a positive Δ with p 0.11 is not a win
    assert "better on 0" in sig.conclusion("reinit-top2", "no-reinit", [{"diff": 0.016, "p_holm": 0.11}])
    both_degenerate = {"diff": 0.02, "p_holm": 0.001, "degenerate_a": (4, 4), "degenerate_b": (4, 4)}
    assert sig.conclusion("bertadam", "adam", [both_degenerate]).endswith(
        "better on 0, worse on 0, no difference detected on 0, both arms degenerate on 1")


def test_churn_equals_a_pairwise_loop():
    p = [np.array([0, 1, 1, 0, 1]), np.array([0, 1, 0, 0, 1]), np.array([1, 1, 0, 0, 0])]
    pairs = [(0, 1), (0, 2), (1, 2)]
    brute = sum(sum(p[i][j] != p[k][j] for j in range(5)) / 5 for i, k in pairs) / 3
    assert sig.churn(p) == pytest.approx(brute) == pytest.approx((1 + 3 + 2) / 15)
    assert math.isnan(sig.churn(p[:1]))
    assert sig.churn([p[0], p[0]]) == 0.0


def test_study_report_section_margin_is_checked_and_not_part_of_the_identity(tmp_path, capsys):
    import yaml
    from conftest import tiny_study_dict

    from transferlab.cli import main
    from transferlab.errors import SpecError
    from transferlab.study.spec import load_study, study_hash

    d = tiny_study_dict(tmp_path)
    plain = load_study(d)
    with_margin = load_study({**d, "report": {"tost_margin": 0.02, "exclude_search_seeds": False}})
    assert study_hash(plain) == study_hash(with_margin) and with_margin.report.tost_margin == 0.02
    for bad in (0, -0.5):
        with pytest.raises(SpecError, match="report.tost_margin"):
            load_study({**d, "report": {"tost_margin": bad}})
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**d, "report": {"tost_margin": 0}}))
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "report.tost_margin" in err and len(err.splitlines()) == 1


def test_across_tasks_section_from_report_cells():
    from transferlab.report import Cell
    from transferlab.store import RunRow
    from transferlab.report import analysis

    rng = np.random.default_rng(0)

    def row(seed, value):
        return RunRow(uid=f"u{seed}{value}", run_id="r", attempt=1, seed=seed, name="x", study="s", kind="train",
                      status="finished", spec={}, provenance={}, summary={"main_metric": "accuracy",
                      "dev": {"accuracy": value}}, error=None, error_step=None, n_params=1, n_trainable=1,
                      created_at=0.0, finished_at=0.0, duration_s=1.0)

    means = {("a", "t1"): 0.8, ("b", "t1"): 0.7, ("c", "t1"): 0.6, ("a", "t2"): 0.6, ("b", "t2"): 0.7,
             ("c", "t2"): 0.5, ("a", "t3"): 0.9, ("b", "t3"): 0.8, ("c", "t3"): 0.7}
    cells = [Cell("s", task, arm, [row(s, float(m + rng.normal(0, 0.01))) for s in range(3)], study_arm=arm)
             for (arm, task), m in means.items()]
    _, rows, note = analysis.across_tasks_table(cells)
    table = {arm: {c.task: c.values("accuracy") for c in cells if c.arm == arm} for arm in "abc"}
    ref = sig.aggregate(table)
    assert [r[1] for r in rows] == ["a", "b", "c"]  # sorted by mean rank
    assert [float(r[2]) for r in rows] == pytest.approx([round(ref["mean_rank"][a], 2) for a in "abc"])
    assert f"Friedman chi2 {ref['friedman']:.2f}" in note and f"{ref['cd']:.2f}" in note


# ----------------------------------------------------------------------------- conclusion sentences

BASE_CMP = {"arm": "new", "baseline": "old", "task": "rte", "metric": "accuracy", "split": "test", "higher": True,
            "paired": True, "n_a": 5, "n_b": 5, "diff": 0.03, "ci_low": 0.01, "ci_high": 0.05, "test": "paired t",
            "p": 0.004, "p_holm": 0.012, "power": 0.93, "seeds_needed": 4, "aso": 0.1,
            "degenerate_a": (0, 5), "degenerate_b": (0, 5)}


def test_sentence_better_only_when_significant_after_holm():
    s = sig.sentence(BASE_CMP)
    assert s.startswith("new vs old on rte (accuracy, test, 5 paired seeds): new is better than old (Δ +0.0300, "
                        "95% CI [+0.0100, +0.0500], paired t p 0.004, Holm-adjusted 0.012 < 0.05)")
    worse = sig.sentence({**BASE_CMP, "diff": -0.03, "ci_low": -0.05, "ci_high": -0.01})
    assert "new is worse than old" in worse
    lower_is_better = sig.sentence({**BASE_CMP, "metric": "mse", "higher": False})
    assert "new is worse than old" in lower_is_better
    # significant raw p, not after Holm: no difference detected
    s = sig.sentence({**BASE_CMP, "p": 0.03, "p_holm": 0.09, "ci_low": -0.005})
    assert "better" not in s and "no difference detected (Δ +0.0300, 95% CI [-0.0050, +0.0500], paired t p 0.030, " \
                                 "Holm-adjusted 0.090; power 0.93 for this Δ with these seeds; 4 seeds needed for " \
                                 "power 0.8)" in s
    unpaired = sig.sentence({**BASE_CMP, "paired": False, "n_b": 3, "test": "Welch t", "p_holm": 0.3})
    assert "(accuracy, test, 5 vs 3 seeds)" in unpaired and "4 seeds per arm needed" in unpaired
    one_seed = sig.sentence({**BASE_CMP, "n_a": 1, "n_b": 1, "p": math.nan, "p_holm": math.nan, "ci_low": math.nan,
                             "aso": 0.0})
    assert "too few seeds for a test" in one_seed and one_seed.endswith("; ASO: too few seeds")


def test_aso_is_worded_by_eps_and_never_a_win_alone():
    words = {eps: sig.sentence({**BASE_CMP, "aso": eps, "p_holm": 0.4}) for eps in (0.1, 0.19, 0.2, 0.35, 0.49, 0.5, 0.8)}
    for eps in (0.1, 0.19):
        assert f"ASO eps_min {eps:.2f} < 0.2: new almost stochastically dominates old" in words[eps]
    for eps in (0.2, 0.35, 0.49):
        assert f"ASO eps_min {eps:.2f}: weak dominance of new at most (0.2-0.5; not a claim" in words[eps]
    for eps in (0.5, 0.8):
        assert f"ASO eps_min {eps:.2f}: no dominance of new over old" in words[eps]
    assert all("better" not in s and "no difference detected" in s for s in words.values())


def test_degenerate_arms_in_the_sentence():
    both = {**BASE_CMP, "arm": "bertadam", "baseline": "adam", "n_a": 4, "n_b": 4, "degenerate_a": (4, 4),
            "degenerate_b": (4, 4), "p_holm": 0.001}
    s = sig.sentence(both)
    assert "bertadam vs adam on rte (accuracy, test, 4 paired seeds): both arms are degenerate (4/4 and 4/4 runs " \
           "not above the constant prediction): no conclusion about the methods" in s
    assert "better" not in s and "beats" not in s and sig.verdict(both) == "degenerate"
    one = sig.sentence({**BASE_CMP, "degenerate_b": (5, 5), "degenerate_a": (1, 5)})
    assert "new is better than old" in one
    assert one.endswith("; degenerate runs: new 1/5, old 5/5 (old learned nothing: every run at the constant prediction)")
    assert "degenerate" not in sig.sentence(BASE_CMP)


def test_u_distribution_and_hodges_lehmann_interval():
    from itertools import combinations

    from transferlab.report import stats

    for m, n in ((3, 3), (4, 6), (5, 5)):  # U's null distribution against enumerating every ordering
        counts = [0] * (m * n + 1)
        for xs in combinations(range(m + n), m):
            ys = [i for i in range(m + n) if i not in xs]
            counts[sum(x > y for x in xs for y in ys)] += 1
        assert list(stats._u_counts(m, n)) == counts
        assert stats.u_cdf(2, m, n) == pytest.approx(sum(counts[:3]) / math.comb(m + n, m))
    rng = np.random.default_rng(3)
    for m, n in ((5, 4), (8, 8), (10, 7)):
        a, b = rng.normal(1, 1, m), rng.normal(0, 1, n)
        h = stats.hodges_lehmann(a, b)
        assert h["shift"] == pytest.approx(np.median(np.subtract.outer(a, b)))
        assert 0.95 <= h["confidence"] < 0.99
        # the interval is the shifts the exact two-sided Mann-Whitney test does not reject at 1 - confidence
        for delta, inside in ((h["low"] + 1e-9, True), (h["high"] - 1e-9, True), (h["low"] - 1e-9, False),
                              (h["high"] + 1e-9, False)):
            p = sps.mannwhitneyu(a - delta, b, method="exact").pvalue
            assert (p > 1 - h["confidence"] + 1e-12) == inside, (m, n, delta, p)
    few = stats.hodges_lehmann([0.7, 0.72, 0.71], [0.6, 0.61, 0.65])  # 3 vs 3 cannot reach 95%
    assert few["confidence"] == pytest.approx(0.9) and (few["low"], few["high"]) == pytest.approx((0.05, 0.12))


def test_welch_interval_of_the_difference_by_hand():
    from transferlab.report import stats

    a, b = np.array([0.71, 0.74, 0.70, 0.73, 0.75]), np.array([0.60, 0.63, 0.61])
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    half = sps.t.ppf(0.975, df) * math.sqrt(va + vb)
    r = stats.compare(a, b)
    d = a.mean() - b.mean()
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((d - half, d + half))
    assert math.isnan(stats.compare([0.5], [0.4])["ci_low"])
