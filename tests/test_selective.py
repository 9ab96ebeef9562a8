"""gradtrust.selective: the bounds against scipy, the procedures against loop re-implementations of the papers'
algorithms, and their validity by simulation (SPEC §11)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import optimize, stats

from gradtrust.errors import DataError, InputError
from gradtrust.selective import (
    Gate,
    InfeasibleTargetError,
    binomial_p_value,
    binomial_upper_bound,
    clopper_pearson_interval,
    coverage_lower_bound,
    coverage_thresholds,
    fit_gate,
    hoeffding_bentkus_p_value,
    ltt_min_accepted,
    ltt_thresholds,
    sgr_steps,
    sgr_thresholds,
)

# ------------------------------------------------------------------------------------------ the bounds vs scipy


def test_binomial_upper_bound_matches_scipy_beta_quantile_and_root_of_the_binomial_tail():
    for m in (1, 2, 7, 59, 100, 1000, 12345):
        for k in sorted({0, 1, m // 10, m // 2, m - 1} - {m}):
            for delta in (0.001, 0.05, 0.2):
                got = float(binomial_upper_bound(k, m, delta))
                # Clopper–Pearson's closed form: the (1 − δ) quantile of Beta(k + 1, m − k) ...
                assert got == pytest.approx(stats.beta.ppf(1 - delta, k + 1, m - k), abs=1e-10)
                # ... and, independently, the root of Σ_{j≤k} C(m, j) b^j (1 − b)^{m−j} = δ (SGR's B*)
                root = optimize.brentq(
                    lambda b, k=k, m=m, d=delta: stats.binom.cdf(k, m, b) - d, 1e-15, 1 - 1e-15, xtol=1e-14
                )
                assert got == pytest.approx(root, abs=1e-9)
    assert float(binomial_upper_bound(5, 5, 0.05)) == 1.0
    assert float(binomial_upper_bound(0, 0, 0.05)) == 1.0
    np.testing.assert_allclose(
        binomial_upper_bound([0, 3], [[10, 20], [30, 40]], 0.1),
        stats.beta.ppf(0.9, np.array([[1, 4], [1, 4]]), np.array([[10, 17], [30, 37]])),
        atol=1e-10,
    )


def test_p_values_match_scipy_binomial_and_the_hoeffding_bentkus_formula():
    for m, k, r in [(100, 2, 0.05), (500, 30, 0.05), (50, 0, 0.1), (1000, 80, 0.05), (20, 20, 0.3)]:
        assert float(binomial_p_value(k, m, r)) == pytest.approx(stats.binom.cdf(k, m, r), rel=1e-10)
        rhat = k / m
        a = min(rhat, r)
        h = (a * math.log(a / r) if a > 0 else 0.0) + (1 - a) * math.log((1 - a) / (1 - r))
        expected = min(math.exp(-m * h), math.e * stats.binom.cdf(math.ceil(m * rhat), m, r), 1.0)
        assert float(hoeffding_bentkus_p_value(k, m, r)) == pytest.approx(expected, rel=1e-10)
        # for the 0–1 loss the exact binomial p-value is the smaller (more powerful) one
        assert float(binomial_p_value(k, m, r)) <= float(hoeffding_bentkus_p_value(k, m, r)) + 1e-15
    assert float(binomial_p_value(0, 0, 0.05)) == 1.0


def test_clopper_pearson_interval_and_coverage_bound_match_scipy():
    low, high = clopper_pearson_interval(7, 50)
    assert float(low) == pytest.approx(stats.beta.ppf(0.025, 7, 44))
    assert float(high) == pytest.approx(stats.beta.ppf(0.975, 8, 43))
    assert float(coverage_lower_bound(800, 1000, 0.05)) == pytest.approx(stats.beta.ppf(0.05, 800, 201))


def test_ltt_min_accepted_is_the_first_count_that_certifies_half_the_target():
    for r, d in [(0.05, 0.05), (0.01, 0.1), (0.2, 0.01)]:
        m = ltt_min_accepted(r, d)
        assert stats.binom.cdf(math.floor(m * r / 2), m, r) <= d
        assert all(stats.binom.cdf(math.floor(j * r / 2), j, r) > d for j in range(1, m))


# ------------------------------------------------------------------------------- the procedures vs plain loops


def _sgr_loop(scores, correct, risk, delta):
    """Geifman & El-Yaniv (2017), Algorithm 1, written as a loop with scipy's Clopper–Pearson bound."""
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    n = len(s)
    steps = max(1, math.ceil(math.log2(n)))
    lo, hi, best = 0, n - 1, None
    for _ in range(steps):
        if lo > hi:
            break
        mid = (lo + hi) // 2
        accepted = scores >= s[mid]
        m, k = int(accepted.sum()), int((accepted & ~correct).sum())
        bound = 1.0 if k >= m else stats.beta.ppf(1 - delta / steps, k + 1, m - k)
        if bound <= risk:
            best, hi = (s[mid], bound), mid - 1
        else:
            lo = mid + 1
    return best


def _ltt_loop(scores, correct, risk, delta, grid):
    """Learn-then-Test's fixed-sequence testing as a loop, scipy's binomial CDF as the p-value."""
    s = np.sort(scores)
    n = len(s)
    counts = np.unique(np.round(np.linspace(min(ltt_min_accepted(risk, delta), n), n, grid)).astype(int))
    last = None
    for count in counts:  # strictest first
        tau = s[n - count]
        accepted = scores >= tau
        m, k = int(accepted.sum()), int((accepted & ~correct).sum())
        if stats.binom.cdf(k, m, risk) > delta:
            break
        last = tau
    return last


def _pool(rng, n, ties=False):
    s = rng.normal(size=n)
    if ties:
        s = np.round(s, 1)
    correct = rng.random(n) < 1 / (1 + np.exp(-(1.5 + 2 * s)))
    return s, correct


@pytest.mark.parametrize("ties", [False, True])
def test_sgr_and_ltt_match_loop_implementations(ties):
    rng = np.random.default_rng(1)
    for trial in range(6):
        s, c = _pool(rng, 300 + 250 * trial, ties)
        for risk in (0.03, 0.05, 0.1):
            got = sgr_thresholds(s, c, risk, 0.05)
            want = _sgr_loop(s, c, risk, 0.05)
            if want is None:
                assert np.isnan(got.threshold[0])
            else:
                assert got.threshold[0] == want[0] and got.risk_bound[0] == pytest.approx(want[1], abs=1e-9)
                assert got.accepted[0] == int((s >= want[0]).sum())
            got = ltt_thresholds(s, c, risk, 0.05, grid=40)
            want_ltt = _ltt_loop(s, c, risk, 0.05, 40)
            assert (np.isnan(got.threshold[0]) and want_ltt is None) or got.threshold[0] == want_ltt


def test_sgr_uses_ceil_log2_n_steps():
    assert [sgr_steps(n) for n in (1, 2, 3, 1000, 1024, 1025)] == [1, 1, 2, 10, 10, 11]


def test_tied_scores_are_accepted_or_refused_together():
    s = np.array([0.1, 0.5, 0.5, 0.5, 0.9, 0.9])
    c = np.array([False, True, True, False, True, True])
    picked, _ = coverage_thresholds(s, c, 0.8, 0.05)  # z = ⌊0.2·6⌋ = 1: the 0.5 group, all three
    assert picked.threshold[0] == 0.5 and picked.accepted[0] == 5 and picked.errors[0] == 1


# ------------------------------------------------------------------------------------------ validity by simulation


def _splits(rng, pool_scores, pool_correct, splits, n_cal):
    """``splits`` random calibration sets of ``n_cal`` from the pool, the rest of the pool being the test set."""
    keys = rng.random((splits, pool_scores.size))
    cal = np.argpartition(keys, n_cal, axis=1)[:, :n_cal]
    return pool_scores[cal], pool_correct[cal]


def _test_risk(pool_scores, pool_correct, cal_scores, cal_correct, thresholds):
    """Selective risk of each split's threshold on its test set (the pool minus its calibration set), from
    suffix counts on the sorted pool: errors and accepted in the pool minus those in the calibration set."""
    order = np.argsort(pool_scores)
    s = pool_scores[order]
    wrong = ~pool_correct[order]
    suffix_wrong = np.concatenate([np.cumsum(wrong[::-1])[::-1], [0]])
    first = np.searchsorted(s, np.nan_to_num(thresholds, nan=np.inf), side="left")
    accepted = s.size - first - (cal_scores >= thresholds[:, None]).sum(axis=1)
    errors = suffix_wrong[first] - ((cal_scores >= thresholds[:, None]) & ~cal_correct).sum(axis=1)
    ok = ~np.isnan(thresholds)
    return np.where(ok & (accepted > 0), errors / np.maximum(accepted, 1), 0.0), accepted


SPLITS, POOL, N_CAL, RISK, DELTA = 600, 40_000, 1500, 0.05, 0.1
MC_ERROR = 3 * math.sqrt(DELTA * (1 - DELTA) / SPLITS)  # three standard errors of a share estimated from SPLITS draws


@pytest.fixture(scope="module")
def simulation():
    rng = np.random.default_rng(2026)
    pool_scores, pool_correct = _pool(rng, POOL)
    cal_scores, cal_correct = _splits(rng, pool_scores, pool_correct, SPLITS, N_CAL)
    return pool_scores, pool_correct, cal_scores, cal_correct


@pytest.mark.parametrize("procedure", ["sgr", "ltt-cp", "ltt-hb"])
def test_share_of_splits_whose_test_risk_exceeds_the_target_is_at_most_delta(simulation, procedure):
    pool_scores, pool_correct, cal_scores, cal_correct = simulation
    if procedure == "sgr":
        picked = sgr_thresholds(cal_scores, cal_correct, RISK, DELTA)
    else:
        p_value = "clopper-pearson" if procedure == "ltt-cp" else "hoeffding-bentkus"
        picked = ltt_thresholds(cal_scores, cal_correct, RISK, DELTA, p_value=p_value, grid=100)
    feasible = ~np.isnan(picked.threshold)
    assert feasible.mean() > 0.9  # the target is reachable: the test is about the guarantee, not about refusals
    risk, accepted = _test_risk(pool_scores, pool_correct, cal_scores, cal_correct, picked.threshold)
    assert (accepted[feasible] > 1000).all()  # coverage is not trivial
    violations = float(np.mean(feasible & (risk > RISK)))
    assert violations <= DELTA + MC_ERROR, (procedure, violations)


def test_the_simulation_detects_a_threshold_without_a_guarantee(simulation):
    """The same check fails for the naive threshold (the most permissive one whose *empirical* calibration risk is
    ≤ r*): the test can fail."""
    pool_scores, pool_correct, cal_scores, cal_correct = simulation
    order = np.argsort(-cal_scores, axis=1)
    wrong = ~np.take_along_axis(cal_correct, order, axis=1)
    running = np.cumsum(wrong, axis=1) / np.arange(1, N_CAL + 1)
    last_ok = N_CAL - 1 - np.argmax((running <= RISK)[:, ::-1], axis=1)
    naive = np.take_along_axis(np.take_along_axis(cal_scores, order, axis=1), last_ok[:, None], axis=1)[:, 0]
    risk, _ = _test_risk(pool_scores, pool_correct, cal_scores, cal_correct, naive)
    assert float(np.mean(risk > RISK)) > 0.3


def test_coverage_target_bounds_hold_by_simulation(simulation):
    pool_scores, pool_correct, cal_scores, cal_correct = simulation
    picked, coverage_bound = coverage_thresholds(cal_scores, cal_correct, 0.8, DELTA)
    risk, accepted = _test_risk(pool_scores, pool_correct, cal_scores, cal_correct, picked.threshold)
    coverage = accepted / (POOL - N_CAL)
    assert (picked.accepted >= 0.8 * N_CAL).all()
    fails = (coverage < coverage_bound) | (risk > picked.risk_bound)  # jointly at 1 − δ
    assert float(np.mean(fails)) <= DELTA + MC_ERROR


# ------------------------------------------------------------------------------------------------------ the Gate


def test_fit_gate_reports_threshold_bound_and_calibration_numbers():
    rng = np.random.default_rng(3)
    s, c = _pool(rng, 3000)
    gate = fit_gate(s, c, risk=0.05, delta=0.05, method="sgr", score="softmax")
    keep = s >= gate.threshold
    assert gate.accepted == keep.sum() and gate.errors == (keep & ~c).sum()
    assert gate.coverage == pytest.approx(keep.mean()) and gate.risk == pytest.approx((keep & ~c).sum() / keep.sum())
    assert gate.risk <= gate.risk_bound <= 0.05
    assert (
        gate.risk_ci[0] <= gate.risk <= gate.risk_ci[1] and gate.coverage_ci[0] <= gate.coverage <= gate.coverage_ci[1]
    )
    assert "distribution shift" in gate.describe()
    np.testing.assert_array_equal(
        gate.accept(np.array([gate.threshold, gate.threshold - 1e-9, np.nan])), [True, False, False]
    )
    realised = gate.evaluate(s, c)
    assert realised["accepted"] == gate.accepted and realised["risk"] == pytest.approx(gate.risk)
    ltt = fit_gate(s, c, risk=0.05, method="ltt", p_value="hoeffding-bentkus")
    assert ltt.method == "ltt" and ltt.p_value == "hoeffding-bentkus" and ltt.risk_bound <= 0.05
    cov = fit_gate(s, c, coverage=0.9)
    assert cov.method == "coverage" and cov.coverage >= 0.9 and cov.coverage_bound < 0.9


def test_gate_saves_and_loads_as_plain_json(tmp_path):
    rng = np.random.default_rng(4)
    s, c = _pool(rng, 2000)
    gate = fit_gate(s, c, risk=0.1, method="ltt", score="energy")
    path = gate.save(tmp_path / "gate.json")
    data = json.loads(path.read_text())
    assert data["format"] == "gradtrust.gate/1" and data["score"] == "energy" and "distribution shift" in data["note"]
    assert Gate.load(path) == gate
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(DataError, match="not a gate file"):
        Gate.load(tmp_path / "bad.json")
    with pytest.raises(DataError, match="does not exist"):
        Gate.load(tmp_path / "missing.json")


def test_infeasible_targets_and_bad_inputs_say_so():
    rng = np.random.default_rng(5)
    s, c = _pool(rng, 500)
    with pytest.raises(InfeasibleTargetError, match="Raise the risk target"):
        fit_gate(s, c, risk=0.001)
    big_s, big_c = _pool(rng, 5000)
    with pytest.raises(InfeasibleTargetError, match="below the coverage target"):
        fit_gate(big_s, big_c, risk=0.05, coverage=0.99)
    with pytest.raises(InputError, match="give a target"):
        fit_gate(s, c)
    with pytest.raises(InputError, match="method"):
        fit_gate(s, c, risk=0.05, method="magic")
    with pytest.raises(InputError, match="labelled"):
        fit_gate(s, np.where(c, 1.0, np.nan), risk=0.05)
    with pytest.raises(InputError, match="differ in length"):
        fit_gate(s[:10], c, risk=0.05)


@pytest.mark.parametrize("method", ["sgr", "ltt"])
def test_score_choice_picks_the_informative_score_and_keeps_a_valid_procedure(method):
    rng = np.random.default_rng(6)
    s, c = _pool(rng, 4000)
    scores = {"noise": rng.normal(size=s.size), "good": s, "worse": s + rng.normal(scale=2.0, size=s.size)}
    gate = fit_gate(scores, c, risk=0.05, method=method)
    assert gate.score == "good"
    if method == "sgr":
        assert gate.selection["how"] == "split" and gate.n == 2000
    else:
        assert gate.selection["how"] == "family" and gate.selection["delta_per_score"] == pytest.approx(0.05 / 3)
    with pytest.raises(InputError, match="family"):
        fit_gate(scores, c, risk=0.05, method="sgr", choose="family")
