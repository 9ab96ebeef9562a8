"""gradtrust.evaluation metrics against brute-force implementations written from the definitions (docs/methods.md)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from gradtrust.errors import GradTrustError, InputError
from gradtrust.evaluation import (
    accuracy_curve,
    auac,
    aufc,
    augrc,
    aurc,
    auroc,
    eaurc,
    f1_curve,
    fpr_at_95tpr,
    optimal_aurc,
    oracle_reference,
    random_reference,
    risk_coverage_curve,
)

# ------------------------------------------------------------------------------------------------------
# Brute force, straight from the definitions.
# ------------------------------------------------------------------------------------------------------


def finite_stand_in(s: np.ndarray) -> np.ndarray:
    """NaN → below everything, -inf → below every finite score, +inf → above: as the package ranks them."""
    s = np.asarray(s, dtype=float).copy()
    fin = s[np.isfinite(s)]
    lo = fin.min() if fin.size else 0.0
    hi = fin.max() if fin.size else 0.0
    s[np.isneginf(s)] = lo - 1.0
    s[np.isnan(s)] = lo - 2.0
    s[np.isposinf(s)] = hi + 1.0
    return s


def exact_percentile(s: np.ndarray, q: int) -> Fraction:
    """NumPy's default ("linear") percentile, in exact rational arithmetic (no float rounding)."""
    x = np.sort(s)
    v = Fraction(q * (len(x) - 1), 100)
    k = int(v)  # floor
    lo = Fraction(float(x[k]))
    if v == k:
        return lo
    return lo + (v - k) * (Fraction(float(x[k + 1])) - lo)


def brute_sets(s):
    """R_q = {i : s_i ≥ t_q}, t_q the q-th linear percentile (NaN/inf replaced by stand-ins)."""
    s = finite_stand_in(s)
    values, inverse = np.unique(s, return_inverse=True)
    exact = [Fraction(float(v)) for v in values]
    sets = []
    for q in range(100):
        t = exact_percentile(s, q)
        sets.append(np.array([v >= t for v in exact], dtype=bool)[inverse])
    return sets


def brute_accuracy_curve(s, c):
    return np.array([c[r].mean() for r in brute_sets(s)])


def brute_macro_f1(y, p):
    """Macro F1 from the definition: classes present in y or p, F1 = 2TP/(2TP+FP+FN), 0/0 → 0."""
    f1 = []
    for k in np.union1d(y, p):
        tp = np.sum((y == k) & (p == k))
        fp = np.sum((y != k) & (p == k))
        fn = np.sum((y == k) & (p != k))
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(f1))


def brute_f1_curve(s, y, p, f1=brute_macro_f1):
    cache = {}
    out = []
    for r in brute_sets(s):
        key = r.tobytes()
        if key not in cache:
            cache[key] = f1(y[r], p[r])
        out.append(cache[key])
    return np.array(out)


def sklearn_macro_f1(y, p):
    return f1_score(y, p, average="macro", zero_division=0)


def brute_rc_points(s, c):
    """(coverage, selective risk, generalised risk) per distinct threshold, highest threshold first."""
    s = finite_stand_in(s)
    n = len(s)
    pts = []
    for t in np.unique(s)[::-1]:
        acc = s >= t
        pts.append((acc.sum() / n, (~c[acc]).mean(), (~c[acc]).sum() / n))
    return np.array(pts)


def brute_aurc(s, c):
    pts = brute_rc_points(s, c)
    cov = np.r_[0.0, pts[:, 0]]
    risk = np.r_[pts[0, 1], pts[:, 1]]
    return np.trapezoid(risk, cov)


def brute_augrc(s, c):
    pts = brute_rc_points(s, c)
    return np.trapezoid(np.r_[0.0, pts[:, 2]], np.r_[0.0, pts[:, 0]])


def brute_auroc(s, c):
    if c.all() or not c.any():
        return np.nan
    return roc_auc_score(c, finite_stand_in(s))


def brute_fpr95(s, c):
    if c.all() or not c.any():
        return np.nan
    s = finite_stand_in(s)
    for t in np.unique(s)[::-1]:
        acc = s >= t
        if Fraction(int(c[acc].sum()), int(c.sum())) >= Fraction(95, 100):
            return (~c[acc]).sum() / (~c).sum()
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------------------------
# Data: ties (1 decimal), NaN, ±inf, all-correct, all-wrong, constant, tiny.
# ------------------------------------------------------------------------------------------------------


def make_case(kind: str, n: int, seed: int):
    rng = np.random.default_rng(seed)
    k = 4
    y = rng.integers(0, k, n)
    s = np.round(rng.normal(size=n), 1)
    c = rng.random(n) < 1 / (1 + np.exp(-(s + 0.7)))
    if kind == "all_correct":
        c[:] = True
    elif kind == "all_wrong":
        c[:] = False
    elif kind == "nan":
        s[rng.random(n) < 0.15] = np.nan
        s[rng.random(n) < 0.05] = -np.inf
        s[rng.random(n) < 0.03] = np.inf
    elif kind == "all_nan":
        s[:] = np.nan
    elif kind == "constant":
        s[:] = 0.3
    elif kind == "coarse":
        s = np.round(s)  # heavy ties
    p = np.where(c, y, (y + rng.integers(1, k, n)) % k)
    return s, c, y, p


KINDS = ["ties", "nan", "all_correct", "all_wrong", "all_nan", "constant", "coarse"]
CASES = [(kind, n, seed) for kind in KINDS for n, seed in [(1, 0), (2, 1), (7, 2), (83, 3), (400, 4)]]
CASE_IDS = [f"{kind}-n{n}" for kind, n, _ in CASES]


@pytest.fixture(params=CASES, ids=CASE_IDS)
def case(request):
    return make_case(*request.param)


def test_accuracy_curve_matches_brute_force(case):
    s, c, _, _ = case
    got = accuracy_curve(s, c)
    want = brute_accuracy_curve(s, c)
    assert got.shape == (100,)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert auac(s, c) == pytest.approx(100 * want.mean(), abs=1e-10)


def test_f1_curve_matches_sklearn(case):
    s, _, y, p = case
    got = f1_curve(s, y, p)
    assert got.shape == (100,)
    np.testing.assert_allclose(got, brute_f1_curve(s, y, p), rtol=0, atol=1e-12)
    assert aufc(s, y, p) == pytest.approx(100 * got.mean(), abs=1e-10)


def test_risk_metrics_match_brute_force(case):
    s, c, _, _ = case
    assert aurc(s, c) == pytest.approx(brute_aurc(s, c), abs=1e-12)
    assert augrc(s, c) == pytest.approx(brute_augrc(s, c), abs=1e-12)
    e = (~c).mean()
    assert eaurc(s, c) == pytest.approx(brute_aurc(s, c) - (e + (1 - e) * np.log1p(-e) if e < 1 else 1.0), abs=1e-12)
    np.testing.assert_equal(np.isnan(auroc(s, c)), np.isnan(brute_auroc(s, c)))
    if not np.isnan(brute_auroc(s, c)):
        assert auroc(s, c) == pytest.approx(brute_auroc(s, c), abs=1e-12)
    want = brute_fpr95(s, c)
    got = fpr_at_95tpr(s, c)
    assert (np.isnan(got) and np.isnan(want)) or got == pytest.approx(want, abs=1e-12)


def test_risk_coverage_curve_points(case):
    s, c, _, _ = case
    cov, risk, thr = risk_coverage_curve(s, c)
    pts = brute_rc_points(s, c)
    np.testing.assert_allclose(cov, pts[:, 0], atol=1e-12)
    np.testing.assert_allclose(risk, pts[:, 1], atol=1e-12)
    assert cov[-1] == 1.0 and np.all(np.diff(cov) > 0)
    # thresholds: the distinct score values, descending; NaN (if any) last, meaning "accept all".
    distinct = np.unique(s[~np.isnan(s)])[::-1]
    np.testing.assert_array_equal(thr[: distinct.size], distinct)
    assert thr.size == distinct.size + int(np.isnan(s).any())


def test_f1_curve_matches_sklearn_directly():
    """The brute-force macro F1 above is sklearn's; and f1_curve equals sklearn over R_q itself."""
    rng = np.random.default_rng(8)
    for _ in range(30):
        n = int(rng.integers(1, 40))
        y, p = rng.integers(0, 6, n), rng.integers(0, 6, n)
        assert brute_macro_f1(y, p) == pytest.approx(sklearn_macro_f1(y, p), abs=1e-12)
    for kind in ("ties", "nan", "all_wrong"):
        s, _, y, p = make_case(kind, 150, 12)
        np.testing.assert_allclose(
            f1_curve(s, y, p), brute_f1_curve(s, y, p, f1=sklearn_macro_f1), atol=1e-12
        )


def test_percentiles_equal_numpy_on_raw_finite_scores():
    """With finite scores, R_q is {s ≥ np.percentile(s, q)} on the raw scores (numpy's linear method)."""
    rng = np.random.default_rng(11)
    for n in (3, 10, 99, 100, 250, 1002, 5000):
        s = np.round(rng.random(n) * 3, 2)
        c = rng.random(n) < 0.6
        want = np.array([c[s >= np.percentile(s, q)].mean() for q in range(100)])
        np.testing.assert_allclose(accuracy_curve(s, c), want, atol=1e-12)


def test_percentile_is_exact_where_numpy_rounds():
    """n = 101: the 7th percentile is exactly s_(7); np.percentile's float virtual index gives a value one
    ulp above it (0.29000000000000004), which would drop the samples scoring exactly s_(7). The package
    uses the exact value (documented in gradtrust.evaluation.selective)."""
    rng = np.random.default_rng(11)
    for n in (3, 10, 99, 100):  # advance the generator as in the test above
        np.round(rng.random(n) * 3, 2), rng.random(n)
    s = np.round(rng.random(101) * 3, 2)
    c = rng.random(101) < 0.6
    assert np.percentile(s, 7) > np.sort(s)[7]  # numpy's rounding artefact
    assert accuracy_curve(s, c)[7] == c[s >= np.sort(s)[7]].mean()
    np.testing.assert_allclose(accuracy_curve(s, c), brute_accuracy_curve(s, c), atol=1e-12)


def test_f1_with_string_labels_and_many_classes():
    rng = np.random.default_rng(5)
    n = 300
    names = np.array([f"class_{i}" for i in range(40)])
    y = names[rng.integers(0, 40, n)]
    p = np.where(rng.random(n) < 0.6, y, names[rng.integers(0, 40, n)])
    s = np.round(rng.random(n), 1)
    np.testing.assert_allclose(f1_curve(s, y, p), brute_f1_curve(s, y, p), atol=1e-12)


def test_order_invariance_and_input_types():
    s, c, y, p = make_case("nan", 200, 9)
    perm = np.random.default_rng(0).permutation(200)
    for fn in (auac, aurc, augrc, auroc, fpr_at_95tpr, eaurc):
        assert fn(s[perm], c[perm]) == pytest.approx(fn(s, c), abs=1e-12)
        assert fn(list(s), list(c.astype(int))) == pytest.approx(fn(s, c), abs=1e-12)
    assert aufc(s[perm], y[perm], p[perm]) == pytest.approx(aufc(s, y, p), abs=1e-12)


def test_torch_tensors_accepted():
    torch = pytest.importorskip("torch")
    s, c, y, p = make_case("nan", 100, 3)
    assert aurc(torch.tensor(s), torch.tensor(c)) == pytest.approx(aurc(s, c))
    assert auac(torch.tensor(s, dtype=torch.float32), torch.tensor(c)) == pytest.approx(
        auac(s.astype(np.float32), c)
    )
    assert aufc(torch.tensor(s), torch.tensor(y), torch.tensor(p)) == pytest.approx(aufc(s, y, p))


# ------------------------------------------------------------------------------------------------------
# Edge cases: defined values or clear GradTrustError subclasses.
# ------------------------------------------------------------------------------------------------------


ALL_FUNCS = [accuracy_curve, auac, aurc, eaurc, augrc, auroc, fpr_at_95tpr, risk_coverage_curve]


@pytest.mark.parametrize("fn", ALL_FUNCS + [random_reference, oracle_reference])
def test_empty_input_is_a_clear_error(fn):
    args = ([],) if fn in (random_reference, oracle_reference) else ([], [])
    with pytest.raises(InputError, match="empty"):
        fn(*args)


@pytest.mark.parametrize("fn", ALL_FUNCS)
def test_mismatched_lengths_name_both(fn):
    with pytest.raises(InputError) as err:
        fn([0.1, 0.2, 0.3], [True, False, True, True])
    assert "3" in str(err.value) and "4" in str(err.value)
    assert isinstance(err.value, GradTrustError)


def test_mismatched_lengths_f1():
    with pytest.raises(InputError, match="2.*3|3.*2"):
        aufc([0.1, 0.2], [1, 2, 3], [1, 2, 3])


def test_bad_inputs_are_clear_errors():
    with pytest.raises(InputError, match="0/1"):
        aurc([0.1, 0.2], [0, 2])
    with pytest.raises(InputError, match="1-D"):
        aurc(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(InputError, match="numbers"):
        auac(["a", "b"], [1, 0])
    with pytest.raises(InputError, match="NaN"):
        aufc([0.1, 0.2], [1.0, np.nan], [1, 1])


def test_single_sample():
    assert auac([0.5], [True]) == 100.0 and auac([0.5], [False]) == 0.0
    assert aurc([0.5], [False]) == 1.0 and aurc([0.5], [True]) == 0.0
    assert augrc([0.5], [False]) == 0.5
    assert np.isnan(auroc([0.5], [True])) and np.isnan(fpr_at_95tpr([0.5], [True]))
    assert aufc([np.nan], [3], [3]) == 100.0


def test_all_correct_and_all_wrong():
    s = np.random.default_rng(0).random(50)
    ok, bad = np.ones(50, bool), np.zeros(50, bool)
    assert auac(s, ok) == 100.0 and auac(s, bad) == 0.0
    assert aurc(s, ok) == 0.0 and aurc(s, bad) == pytest.approx(1.0)
    assert eaurc(s, ok) == 0.0 and eaurc(s, bad) == pytest.approx(0.0)
    assert augrc(s, bad) == pytest.approx(0.5)
    for fn in (auroc, fpr_at_95tpr):
        assert np.isnan(fn(s, ok)) and np.isnan(fn(s, bad))


def test_all_nan_and_ties_everywhere_are_defined():
    c = np.array([1, 0, 1, 1, 0, 1, 1, 1], bool)
    for s in (np.full(8, np.nan), np.full(8, 2.0), np.full(8, -np.inf)):
        assert auac(s, c) == pytest.approx(100 * c.mean())
        assert aurc(s, c) == pytest.approx(1 - c.mean())
        assert augrc(s, c) == pytest.approx((1 - c.mean()) / 2)
        assert auroc(s, c) == 0.5
        assert fpr_at_95tpr(s, c) == 1.0


def test_nan_ranks_below_everything():
    s = np.array([np.nan, -np.inf, -5.0, 1.0])
    c = np.array([False, True, True, True])
    assert auroc(s, c) == 1.0  # the NaN sample (wrong) is below every other
    s2 = np.array([-np.inf, np.nan, -5.0, 1.0])
    c2 = np.array([False, True, True, True])
    assert auroc(s2, c2) == 0.0 + 2 / 3  # -inf is above NaN
    assert np.isfinite(accuracy_curve(np.array([np.nan, np.inf, -np.inf]), [1, 0, 1])).all()


# ------------------------------------------------------------------------------------------------------
# References: a random score ≈ the random reference, a perfect score ≈ the oracle formulas.
# ------------------------------------------------------------------------------------------------------


def test_random_score_matches_random_reference():
    rng = np.random.default_rng(42)
    n = 20000
    c = rng.random(n) < 0.72
    s = rng.random(n)
    ref = random_reference(c)
    a, e = c.mean(), 1 - c.mean()
    assert ref["auac"] == pytest.approx(100 * a) and ref["aurc"] == pytest.approx(e)
    assert auac(s, c) == pytest.approx(ref["auac"], abs=1.0)
    assert aurc(s, c) == pytest.approx(ref["aurc"], abs=0.01)
    assert augrc(s, c) == pytest.approx(ref["augrc"], abs=0.005)
    assert auroc(s, c) == pytest.approx(0.5, abs=0.02)
    assert fpr_at_95tpr(s, c) == pytest.approx(0.95, abs=0.02)
    assert eaurc(s, c) == pytest.approx(ref["eaurc"], abs=0.01)


@pytest.mark.parametrize("accuracy", [0.3, 0.76, 0.95])
def test_perfect_score_matches_oracle_formula(accuracy):
    rng = np.random.default_rng(1)
    n = 20000
    c = rng.random(n) < accuracy
    s = c + 0.5 * rng.random(n)  # every correct above every wrong, distinct values
    a, e = c.mean(), 1 - c.mean()
    ref = oracle_reference(c)
    assert ref["auac"] == pytest.approx(100 * (a - a * np.log(a)))
    assert ref["aurc"] == pytest.approx(e + (1 - e) * np.log(1 - e))
    assert optimal_aurc(e) == pytest.approx(ref["aurc"])
    assert auac(s, c) == pytest.approx(ref["auac"], abs=0.6)  # 100-point percentile grid
    assert aurc(s, c) == pytest.approx(ref["aurc"], abs=1e-3)
    assert eaurc(s, c) == pytest.approx(0.0, abs=1e-3)
    assert augrc(s, c) == pytest.approx(ref["augrc"], abs=1e-3)
    assert auroc(s, c) == 1.0 and fpr_at_95tpr(s, c) == 0.0
    exact = oracle_reference(c, exact=True)
    assert exact["auac"] == pytest.approx(auac(s, c)) and exact["aurc"] == pytest.approx(aurc(s, c))


def test_references_edge_cases():
    for c in ([True] * 5, [False] * 5):
        for ref in (random_reference(c), oracle_reference(c), oracle_reference(c, exact=True)):
            assert np.isnan(ref["auroc"]) and np.isnan(ref["fpr_at_95tpr"])
            assert np.isfinite(ref["auac"]) and np.isfinite(ref["aurc"])
    assert oracle_reference([False] * 5)["auac"] == 0.0
    assert oracle_reference([False] * 5)["aurc"] == 1.0
