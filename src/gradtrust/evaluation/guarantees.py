"""Thresholds with a finite-sample guarantee on the selective risk (SPEC §11; ``docs/decisions.md``).

Calibration data: scores ``s_i`` (higher = more trustworthy) and correctness ``c_i`` of ``n`` samples,
exchangeable with the data the threshold will be used on. A threshold ``τ`` accepts ``{i : s_i ≥ τ}`` (NaN
scores are never accepted); its coverage is ``φ(τ) = P(s ≥ τ)`` and its selective risk
``R(τ) = P(wrong | s ≥ τ)``. The procedures here return the most permissive ``τ`` they can certify with
``P(R(τ) ≤ r*) ≥ 1 − δ`` over the calibration draw:

- :func:`sgr_thresholds`: Selection with Guaranteed Risk (Geifman & El-Yaniv, NeurIPS 2017), a binary search
  over the sorted scores for ``⌈log₂ n⌉`` steps, each candidate tested with the Clopper–Pearson bound
  :func:`binomial_upper_bound` at ``δ/⌈log₂ n⌉``;
- :func:`ltt_thresholds`: Learn-then-Test (Angelopoulos, Bates, Candès, Jordan & Lei, 2021), fixed-sequence
  testing of a grid of thresholds fixed before correctness is looked at, strictest first, with
  Clopper–Pearson (:func:`binomial_p_value`) or Hoeffding–Bentkus (:func:`hoeffding_bentkus_p_value`) p-values;
- :func:`coverage_thresholds`: the threshold that keeps a share ``c*`` of the inputs, with a lower bound on the
  true coverage (:func:`coverage_lower_bound`) and the risk bound at that threshold.

Every function works on ``(b, n)`` arrays — ``b`` independent calibration sets of ``n`` samples each — so
that the validity simulation of ``tests/test_selective.py`` fits thousands of calibration sets in one call;
a single calibration set is ``b = 1``. None of the guarantees holds under distribution shift between
calibration and use.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from scipy import special, stats

from gradtrust.errors import InputError

__all__ = [
    "P_VALUES",
    "Thresholds",
    "binomial_p_value",
    "binomial_upper_bound",
    "clopper_pearson_interval",
    "coverage_lower_bound",
    "correctness",
    "coverage_thresholds",
    "hoeffding_bentkus_p_value",
    "ltt_min_accepted",
    "ltt_thresholds",
    "sgr_steps",
    "sgr_thresholds",
    "sorted_calibration",
]

#: The p-values Learn-then-Test accepts.
P_VALUES = ("clopper-pearson", "hoeffding-bentkus")
_BISECTION_STEPS = 60  # 2^-60 < 1e-18: below float64 resolution on [0, 1]


class Thresholds(NamedTuple):
    """Per calibration set (each field shape ``(b,)``): the threshold (NaN where none is certified), the risk
    bound there (NaN where none), the accepted count and the errors among them (0 where none)."""

    threshold: np.ndarray
    risk_bound: np.ndarray
    accepted: np.ndarray
    errors: np.ndarray


def _check_level(name: str, value: float, *, closed_low: bool = False) -> float:
    value = float(value)
    if not (0.0 <= value < 1.0 if closed_low else 0.0 < value < 1.0) or math.isnan(value):
        raise InputError(f"{name} must be in (0, 1), got {value}")
    return value


def binomial_upper_bound(errors: Any, accepted: Any, delta: float) -> np.ndarray:
    """Clopper–Pearson upper confidence bound on a binomial rate, solved by bisection (SPEC §11, SGR's ``B*``).

    The bound ``b*`` solves ``Σ_{j≤k} C(m, j) b^j (1 − b)^{m−j} = δ`` for ``k`` errors among ``m`` accepted
    samples (Geifman & El-Yaniv 2017, Eq. 4; Clopper & Pearson 1934): ``P(true rate ≤ b*) ≥ 1 − δ``. The
    binomial CDF (``scipy.special.bdtr``) falls as ``b`` grows, so 60 bisection steps find ``b*`` to float64
    precision. ``b* = 1`` where ``k ≥ m`` (and where ``m = 0``: nothing accepted, nothing known).

    >>> round(float(binomial_upper_bound(0, 59, 0.05)), 4)
    0.0495
    """
    k = np.asarray(errors, dtype=np.float64)
    m = np.asarray(accepted, dtype=np.float64)
    k, m = np.broadcast_arrays(k, m)
    delta = _check_level("delta", delta)
    lo, hi = np.zeros(k.shape), np.ones(k.shape)
    open_ = k < m
    safe_k, safe_m = np.where(open_, k, 0).astype(np.int64), np.where(open_, m, 1).astype(np.int64)
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        above = special.bdtr(safe_k, safe_m, mid) > delta  # the tail is still above δ: b* lies higher
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
    return np.where(open_, hi, 1.0)


def binomial_p_value(errors: Any, accepted: Any, risk: float) -> np.ndarray:
    """Clopper–Pearson p-value of ``H₀: R > r*``: ``p = P(Binom(m, r*) ≤ k)`` (Angelopoulos et al. 2021, §3;
    SPEC §11). ``p = 1`` where ``m = 0``.

    >>> round(float(binomial_p_value(0, 59, 0.05)), 4)
    0.0485
    """
    k = np.asarray(errors, dtype=np.float64)
    m = np.asarray(accepted, dtype=np.float64)
    risk = _check_level("risk", risk)
    return np.where(
        m > 0, special.bdtr(np.minimum(k, m).astype(np.int64), np.maximum(m, 1).astype(np.int64), risk), 1.0
    )


def hoeffding_bentkus_p_value(errors: Any, accepted: Any, risk: float) -> np.ndarray:
    """Hoeffding–Bentkus p-value of ``H₀: R > r*`` (Bates, Angelopoulos, Lei, Malik & Jordan 2021, "Distribution-
    free, risk-controlling prediction sets", Prop. 3; used by Learn-then-Test):

        p = min( exp(−m · h(min(r̂, r*), r*)),  e · P(Binom(m, r*) ≤ ⌈m r̂⌉) ),
        h(a, b) = a log(a/b) + (1 − a) log((1 − a)/(1 − b)),   r̂ = k/m.

    Valid for any loss in [0, 1]; for the 0–1 loss it is never smaller than the Clopper–Pearson p-value.
    """
    k = np.asarray(errors, dtype=np.float64)
    m = np.asarray(accepted, dtype=np.float64)
    risk = _check_level("risk", risk)
    m1 = np.maximum(m, 1.0)
    a = np.minimum(k / m1, risk)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = special.xlogy(a, a / risk) + special.xlogy(1.0 - a, (1.0 - a) / (1.0 - risk))
    hoeffding = np.exp(-m1 * h)
    bentkus = math.e * special.bdtr(np.minimum(k, m1).astype(np.int64), m1.astype(np.int64), risk)
    return np.where(m > 0, np.minimum(np.minimum(hoeffding, bentkus), 1.0), 1.0)


def clopper_pearson_interval(successes: Any, trials: Any, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided Clopper–Pearson interval of a binomial rate: ``Beta(α/2; x, n−x+1)`` to ``Beta(1−α/2; x+1, n−x)``
    with ``α = 1 − level`` (Clopper & Pearson 1934). ``(0, 1)`` where ``n = 0``."""
    x = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    alpha = 1.0 - float(level)
    with np.errstate(invalid="ignore"):
        low = np.where(x > 0, stats.beta.ppf(alpha / 2, np.maximum(x, 1), n - x + 1), 0.0)
        high = np.where(x < n, stats.beta.ppf(1 - alpha / 2, x + 1, np.maximum(n - x, 1)), 1.0)
    return np.where(n > 0, low, 0.0), np.where(n > 0, high, 1.0)


def coverage_lower_bound(accepted: Any, total: Any, delta: float) -> np.ndarray:
    """Lower ``1 − δ`` bound on the true coverage of the threshold ``s_(z)`` (the ``(z+1)``-th smallest of ``n``
    calibration scores) that accepts ``m = n − z`` of them: ``φ(s_(z)) = 1 − F(s_(z)) ~ Beta(n − z, z + 1)`` for
    continuous scores (order statistics of uniforms), so ``φ ≥ Beta⁻¹(δ; m, n − m + 1)`` with probability
    ``1 − δ``. Tied scores only raise the coverage of ``{s ≥ s_(z)}``: the bound stays valid."""
    m = np.asarray(accepted, dtype=np.float64)
    n = np.asarray(total, dtype=np.float64)
    delta = _check_level("delta", delta)
    return np.where(m > 0, stats.beta.ppf(delta, np.maximum(m, 1), n - m + 1), 0.0)


class _Sorted(NamedTuple):
    scores: np.ndarray  # (b, n) ascending, NaN mapped to -inf
    accepted: np.ndarray  # (b, n) samples with s ≥ scores[:, z] (ties included), per position z
    errors: np.ndarray  # (b, n) wrong predictions among them
    defined: np.ndarray  # (b, n) False where the threshold would be -inf (a NaN or -inf score): never used


def correctness(correct: Any) -> np.ndarray:
    """``correct`` as a boolean array of its shape; refused unless every entry is a boolean or 0/1 (a null
    correctness, an unlabelled sample's, has no place in calibration)."""
    c = np.asarray(correct)
    if c.dtype == bool:
        return c
    c_float = np.asarray(c, dtype=np.float64)
    if np.isnan(c_float).any() or not np.isin(c_float, (0.0, 1.0)).all():
        raise InputError(
            "correct must be booleans (or 0/1) for every sample: a gate is fitted on labelled "
            "data only (an unlabelled run has no correctness)"
        )
    return c_float.astype(bool)


def sorted_calibration(scores: Any, correct: Any) -> _Sorted:
    """Sort ``(b, n)`` calibration sets by score and count, for the threshold at every sorted position ``z``, the
    accepted samples ``{s ≥ s_(z)}`` and the errors among them (ties kept together). NaN scores rank below all."""
    s = np.array(scores, dtype=np.float64, ndmin=2)
    c = np.asarray(correct)
    if c.ndim == 1 and s.shape[0] == 1:
        c = c[None, :]
    if s.ndim != 2 or c.shape != s.shape:
        raise InputError(f"scores and correct must have one shape, (n,) or (b, n); got {s.shape} and {c.shape}")
    if s.shape[1] == 0:
        raise InputError("no calibration samples: the calibration run is empty")
    c = correctness(c)
    s = np.where(np.isnan(s), -np.inf, s)
    order = np.argsort(s, axis=1, kind="stable")
    s_sorted = np.take_along_axis(s, order, axis=1)
    wrong = ~np.take_along_axis(c, order, axis=1)
    b, n = s.shape
    positions = np.broadcast_to(np.arange(n), (b, n))
    starts = np.concatenate([np.ones((b, 1), bool), s_sorted[:, 1:] != s_sorted[:, :-1]], axis=1)
    first = np.maximum.accumulate(np.where(starts, positions, 0), axis=1)  # first position of each tie group
    suffix_errors = np.concatenate([np.cumsum(wrong[:, ::-1], axis=1)[:, ::-1], np.zeros((b, 1), np.int64)], axis=1)
    accepted = n - first
    errors = np.take_along_axis(suffix_errors, first, axis=1)
    return _Sorted(s_sorted, accepted, errors, np.isfinite(s_sorted) | (s_sorted > 0))


def _pick(data: _Sorted, position: np.ndarray, bound: np.ndarray) -> Thresholds:
    """The thresholds at ``position`` per row (−1: none certified) with their bounds."""
    rows = np.arange(data.scores.shape[0])
    ok = position >= 0
    z = np.where(ok, position, 0)
    return Thresholds(
        np.where(ok, data.scores[rows, z], np.nan),
        np.where(ok, bound, np.nan),
        np.where(ok, data.accepted[rows, z], 0),
        np.where(ok, data.errors[rows, z], 0),
    )


def sgr_steps(n: int) -> int:
    """``⌈log₂ n⌉`` (at least 1): SGR's number of binary-search steps, and the union bound's divisor."""
    return max(1, math.ceil(math.log2(max(n, 2))))


def sgr_thresholds(scores: Any, correct: Any, risk: float, delta: float) -> Thresholds:
    """Selection with Guaranteed Risk (Geifman & El-Yaniv, NeurIPS 2017, Algorithm 1; SPEC §11).

    Binary search over the sorted calibration scores for ``k = ⌈log₂ n⌉`` steps: at the middle candidate
    ``s_(z)``, with ``m`` accepted and ``e`` errors, ``b* = B*(e, m, δ/k)`` (:func:`binomial_upper_bound`); if
    ``b* ≤ r*`` the candidate is kept and the search moves to more permissive thresholds, else to stricter ones.
    The result is the most permissive kept candidate. By the union bound over the ``k`` tested candidates,
    ``P(R(τ) ≤ b*) ≥ 1 − δ``, hence ``P(R(τ) ≤ r*) ≥ 1 − δ``. NaN where no candidate is kept.
    """
    risk, delta = _check_level("risk", risk), _check_level("delta", delta)
    data = sorted_calibration(scores, correct)
    b, n = data.scores.shape
    steps = sgr_steps(n)
    rows = np.arange(b)
    lo, hi = np.zeros(b, np.int64), np.full(b, n - 1, np.int64)
    best, best_bound = np.full(b, -1, np.int64), np.full(b, np.nan)
    for _ in range(steps):
        active = lo <= hi
        mid = np.where(active, (lo + hi) // 2, 0)
        bound = binomial_upper_bound(data.errors[rows, mid], data.accepted[rows, mid], delta / steps)
        kept = active & (bound <= risk) & data.defined[rows, mid]
        best = np.where(kept, mid, best)
        best_bound = np.where(kept, bound, best_bound)
        hi = np.where(kept, mid - 1, hi)
        lo = np.where(active & ~kept, mid + 1, lo)
    return _pick(data, best, best_bound)


def ltt_min_accepted(risk: float, delta: float, p_value: str = "clopper-pearson", limit: int = 1_000_000) -> int:
    """Where Learn-then-Test's grid starts: the fewest accepted samples ``m`` at which an empirical risk of half
    the target is certified, ``p(⌊m r*/2⌋, m) ≤ δ`` with the chosen p-value (Clopper–Pearson:
    ``P(Binom(m, r*) ≤ ⌊m r*/2⌋) ≤ δ``) — a number fixed by ``r*``, ``δ`` and the p-value alone,
    before correctness is looked at. A stricter candidate, with its handful of accepted samples, would be
    rejected only without a single error; one early error there would stop the fixed sequence before it reached
    the thresholds that matter (``m ≥ log δ / log(1 − r*)`` is the bare minimum; this start is a few times that).

    >>> ltt_min_accepted(0.05, 0.05)
    153
    """
    risk, delta = _check_level("risk", risk), _check_level("delta", delta)
    start = 1
    while start <= limit:  # blocks of growing size: the answer is about 10/r* for δ = 0.05
        m = np.arange(start, min(2 * start + 1024, limit) + 1, dtype=np.float64)
        test = binomial_p_value if p_value == "clopper-pearson" else hoeffding_bentkus_p_value
        ok = test(np.floor(m * risk / 2), m, risk) <= delta
        if ok.any():
            return int(m[np.argmax(ok)])
        start = int(m[-1]) + 1
    return limit


def ltt_thresholds(
    scores: Any, correct: Any, risk: float, delta: float, *, p_value: str = "clopper-pearson", grid: int = 100
) -> Thresholds:
    """Learn-then-Test with fixed-sequence testing (Angelopoulos, Bates, Candès, Jordan & Lei 2021; SPEC §11).

    The candidates are fixed before correctness is looked at: ``grid`` thresholds at the score order statistics
    that accept ``m_j`` samples, ``m_j`` evenly spaced from :func:`ltt_min_accepted` (with the same p-value) to
    ``n``, ordered from strictest to most permissive. Each tests ``H₀ⱼ: R(τⱼ) > r*`` with the p-value ``p_j``
    (``clopper-pearson``: ``P(Binom(m_j, r*) ≤ k_j)``; ``hoeffding-bentkus``: :func:`hoeffding_bentkus_p_value`);
    fixed-sequence testing rejects while ``p_j ≤ δ`` and stops at the first ``p_j > δ``. The last rejected
    candidate is returned; the family-wise error rate is ≤ δ, so ``P(R(τ) ≤ r*) ≥ 1 − δ``. Its ``risk_bound`` is
    therefore ``r*`` itself: the procedure certifies the target, not a tighter number.
    """
    risk, delta = _check_level("risk", risk), _check_level("delta", delta)
    if p_value not in P_VALUES:
        raise InputError(f"p_value must be one of {', '.join(P_VALUES)}, got {p_value!r}")
    if int(grid) < 1:
        raise InputError(f"grid must be a positive number of candidate thresholds, got {grid}")
    data = sorted_calibration(scores, correct)
    b, n = data.scores.shape
    start = min(ltt_min_accepted(risk, delta, p_value), n)
    counts = np.unique(np.round(np.linspace(start, n, int(grid))).astype(np.int64))  # strictest first
    positions = n - counts
    k, m = data.errors[:, positions], data.accepted[:, positions]
    p = binomial_p_value(k, m, risk) if p_value == "clopper-pearson" else hoeffding_bentkus_p_value(k, m, risk)
    rejected = np.logical_and.accumulate((p <= delta) & data.defined[:, positions], axis=1)
    last = rejected.sum(axis=1) - 1
    position = np.where(last >= 0, positions[np.maximum(last, 0)], -1)
    bound = np.full(b, risk)
    return _pick(data, position, bound)


def coverage_thresholds(scores: Any, correct: Any, coverage: float, delta: float) -> tuple[Thresholds, np.ndarray]:
    """The threshold that keeps at least a share ``c*`` of the calibration inputs (SPEC §11, "target coverage"):
    ``τ = s_(z)`` with ``z = ⌊(1 − c*)·n⌋`` (0-based, ascending), which accepts ``m ≥ n − z ≥ c*·n`` samples.

    Returns the thresholds with the Clopper–Pearson risk bound ``B*(k, m, δ/2)`` there and the coverage lower bound
    :func:`coverage_lower_bound` at ``δ/2``: both hold together with probability ``≥ 1 − δ``. The threshold depends
    on the scores only, so no search is paid for: there is one candidate.
    """
    coverage, delta = _check_level("coverage", coverage), _check_level("delta", delta)
    data = sorted_calibration(scores, correct)
    b, n = data.scores.shape
    z = min(int(math.floor((1.0 - coverage) * n + 1e-9)), n - 1)
    position = np.full(b, z, np.int64)
    rows = np.arange(b)
    bound = binomial_upper_bound(data.errors[rows, position], data.accepted[rows, position], delta / 2)
    picked = _pick(data, np.where(data.defined[rows, position], position, -1), bound)
    return picked, coverage_lower_bound(picked.accepted, n, delta / 2)
