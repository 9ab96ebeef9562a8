"""Bootstrap confidence intervals: seeded, containing the estimate, vectorised path = loop over the same resamples."""

from __future__ import annotations

import numpy as np
import pytest

from gradtrust.errors import InputError, UnknownNameError
from gradtrust.evaluation import (
    VECTORISED_METRICS,
    auac,
    aufc,
    augrc,
    aurc,
    auroc,
    bootstrap_ci,
    bootstrap_distribution,
    bootstrap_indices,
    eaurc,
    fpr_at_95tpr,
)

RANK_METRICS = {
    "auac": auac,
    "aurc": aurc,
    "eaurc": eaurc,
    "augrc": augrc,
    "auroc": auroc,
    "fpr_at_95tpr": fpr_at_95tpr,
}


def data(n=300, seed=0, nan=True):
    rng = np.random.default_rng(seed)
    s = np.round(rng.normal(size=n), 1)
    c = rng.random(n) < 1 / (1 + np.exp(-(2 * s + 1)))
    if nan:
        s[rng.random(n) < 0.1] = np.nan
    y = rng.integers(0, 5, n)
    p = np.where(c, y, (y + rng.integers(1, 5, n)) % 5)
    return s, c, y, p


def test_indices_are_seeded_rows():
    a = bootstrap_indices(50, 7, seed=3)
    assert a.shape == (7, 50) and a.min() >= 0 and a.max() < 50
    np.testing.assert_array_equal(a, bootstrap_indices(50, 7, seed=3))
    rng = np.random.default_rng(3)
    np.testing.assert_array_equal(a[2], [rng.integers(0, 50, 50) for _ in range(3)][2])
    assert not np.array_equal(a, bootstrap_indices(50, 7, seed=4))


@pytest.mark.parametrize("name", list(RANK_METRICS))
def test_vectorised_equals_loop_over_same_indices(name):
    s, c, _, _ = data()
    fn = RANK_METRICS[name]
    idx = bootstrap_indices(len(s), 40, seed=5)
    loop = np.array([fn(s[i], c[i]) for i in idx])
    for metric in (name, fn):
        vec = bootstrap_distribution(metric, s, c, n_resamples=40, seed=5)
        np.testing.assert_allclose(vec, loop, rtol=1e-12, atol=1e-13, equal_nan=True)
    forced = bootstrap_distribution(fn, s, c, n_resamples=40, seed=5, vectorised=False)
    np.testing.assert_allclose(forced, loop, rtol=0, atol=0, equal_nan=True)


def test_aufc_vectorised_equals_loop():
    s, _, y, p = data()
    idx = bootstrap_indices(len(s), 30, seed=2)
    loop = np.array([aufc(s[i], y[i], p[i]) for i in idx])
    vec = bootstrap_distribution(aufc, s, y, p, n_resamples=30, seed=2)
    np.testing.assert_allclose(vec, loop, rtol=1e-12, atol=1e-12)


def test_many_blocks_equal_loop(monkeypatch):
    """Resamples split into several blocks give the same values as one loop (block size is irrelevant)."""
    from gradtrust.evaluation import bootstrap as bs

    s, c, _, _ = data(n=120)
    monkeypatch.setattr(bs, "_BLOCK_ELEMENTS", 500)  # 4 resamples per block
    vec = bootstrap_distribution(aurc, s, c, n_resamples=23, seed=9)
    loop = [aurc(s[i], c[i]) for i in bootstrap_indices(120, 23, seed=9)]
    np.testing.assert_allclose(vec, loop, rtol=1e-12)


@pytest.mark.parametrize("name", list(VECTORISED_METRICS))
def test_interval_contains_estimate_and_is_seeded(name):
    s, c, y, p = data(n=500, seed=1)
    arrays = (s, y, p) if name == "aufc" else (s, c)
    fn = aufc if name == "aufc" else RANK_METRICS[name]
    est = fn(*arrays)
    low, high = bootstrap_ci(fn, *arrays, n_resamples=200, seed=0)
    assert low <= est <= high and low < high
    assert (low, high) == bootstrap_ci(name, *arrays, n_resamples=200, seed=0)
    assert (low, high) != bootstrap_ci(fn, *arrays, n_resamples=200, seed=1)
    wide = bootstrap_ci(fn, *arrays, n_resamples=200, seed=0, confidence=0.99)
    assert wide[0] <= low and wide[1] >= high


def test_interval_is_the_percentiles_of_the_distribution():
    s, c, _, _ = data()
    dist = bootstrap_distribution(aurc, s, c, n_resamples=100, seed=0)
    low, high = bootstrap_ci(aurc, s, c, n_resamples=100, seed=0, confidence=0.9)
    assert (low, high) == tuple(np.percentile(dist, [5, 95]))


def test_custom_metric_loops():
    s, c, _, _ = data()
    mean_correct = lambda s_, c_: float(np.mean(c_))  # noqa: E731
    low, high = bootstrap_ci(mean_correct, s, c, n_resamples=200)
    assert low <= c.mean() <= high
    with pytest.raises(InputError, match="vectorised"):
        bootstrap_ci(mean_correct, s, c, vectorised=True)


def test_undefined_resamples_and_errors():
    s = np.arange(10.0)
    c = np.zeros(10, bool)
    c[0] = True  # many resamples miss the only correct sample: AUROC NaN there
    low, high = bootstrap_ci(auroc, s, c, n_resamples=100)
    assert np.isfinite(low) and np.isfinite(high)
    assert all(np.isnan(bootstrap_ci(auroc, s, np.ones(10, bool), n_resamples=20)))
    with pytest.raises(InputError, match="empty"):
        bootstrap_ci(aurc, [], [])
    with pytest.raises(InputError, match="3.*4|4.*3"):
        bootstrap_ci(aurc, [1.0, 2.0, 3.0], [1, 0, 1, 0])
    with pytest.raises(InputError, match="confidence"):
        bootstrap_ci(aurc, s, c, confidence=95)
    with pytest.raises(InputError, match="n_resamples"):
        bootstrap_ci(aurc, s, c, n_resamples=0)
    with pytest.raises(InputError, match="aufc"):
        bootstrap_ci(aufc, s, c)
    with pytest.raises(UnknownNameError, match="aurc"):
        bootstrap_ci("nope", s, c)


def test_speed_50k_is_seconds():
    """Vectorised: 100 resamples of 50,000 samples take well under a few seconds (benchmarks/ has 1,000)."""
    import time

    rng = np.random.default_rng(0)
    s = rng.random(50_000)
    c = rng.random(50_000) < 0.8
    t0 = time.perf_counter()
    bootstrap_ci(aurc, s, c, n_resamples=100)
    assert time.perf_counter() - t0 < 5.0


def test_bootstrap_cis_equals_one_bootstrap_ci_per_metric():
    from gradtrust.evaluation import bootstrap_cis

    rng = np.random.default_rng(7)
    s = np.round(rng.normal(size=200), 1)
    y = rng.integers(0, 4, 200)
    p = np.where(rng.random(200) < 0.7, y, rng.integers(0, 4, 200))
    c = y == p
    rank = bootstrap_cis(["auac", "aurc", "eaurc", "augrc", "auroc", "fpr_at_95tpr"], s, c, n_resamples=60, seed=2)
    for name, interval in rank.items():
        assert interval == pytest.approx(bootstrap_ci(name, s, c, n_resamples=60, seed=2, vectorised=False)), name
    f1 = bootstrap_cis(["aufc"], s, labels=y, predictions=p, n_resamples=30, seed=2)
    assert f1["aufc"] == pytest.approx(bootstrap_ci("aufc", s, y, p, n_resamples=30, seed=2, vectorised=False))
    with pytest.raises(InputError, match="labels= and predictions="):
        bootstrap_cis(["aufc"], s, labels=y, n_resamples=30)
    with pytest.raises(KeyError, match="Unknown metric"):
        bootstrap_cis(["nope"], s, c)


def test_bca_and_basic_intervals_match_scipy_on_the_same_resamples():
    """``bca_interval`` / ``basic_interval`` against ``scipy.stats.bootstrap(method="BCa"/"basic")`` with
    the same generator: scipy draws ``rng.integers(0, n, (R, n))``, the rows of ``bootstrap_indices``."""
    from scipy import stats

    from gradtrust.evaluation.bootstrap import basic_interval, bca_interval

    x = np.random.default_rng(3).exponential(size=60) ** 2  # skewed: z0 and the acceleration are not 0
    values = np.array([x[i].mean() for i in bootstrap_indices(x.size, 2000, seed=5)])
    jackknife = (x.sum() - x) / (x.size - 1)
    for method, ours in (("BCa", bca_interval(values, x.mean(), jackknife, 0.9)),
                         ("basic", basic_interval(values, x.mean(), 0.9))):
        theirs = stats.bootstrap((x,), np.mean, n_resamples=2000, confidence_level=0.9, method=method,
                                 rng=np.random.default_rng(5)).confidence_interval
        np.testing.assert_allclose(ours, (theirs.low, theirs.high), rtol=1e-12)
    percentile = np.percentile(values, [5, 95])
    assert not np.allclose(bca_interval(values, x.mean(), jackknife, 0.9), percentile)  # the correction acts


def test_corrected_ece_interval_contains_its_estimate_where_the_percentile_one_did_not():
    """The reported failure ("2.36 [2.57, 3.14]"): on few, well-calibrated samples the plug-in ECE lies below
    its percentile interval; the bias-corrected estimate lies in its basic interval."""
    from gradtrust.evaluation import calibration as cal
    from gradtrust.evaluation.bootstrap import percentile_interval
    from gradtrust.reporting.calibration import corrected_interval

    rng = np.random.default_rng(17)
    conf = rng.uniform(0.6, 1.0, 400)
    correct = rng.random(400) < conf  # calibrated by construction: the true ECE is 0
    plug_in = cal.expected_calibration_error(conf, correct)

    def stat(i):
        return cal.expected_calibration_error(conf[i], correct[i])

    low, high = percentile_interval(np.array([stat(i) for i in bootstrap_indices(400, 1000, 0)]), 0.95)
    assert not low <= plug_in <= high  # the old interval excludes its own estimate
    corrected, (low, high) = corrected_interval(stat, plug_in, 400, 1000, 0, 0.95)
    assert 0.0 <= low <= corrected <= high
    assert corrected < plug_in  # the bias points upwards
