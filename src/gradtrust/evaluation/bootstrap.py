"""Bootstrap percentile confidence intervals, vectorised for the rank-based metrics.

Method: the percentile bootstrap (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13):
draw ``n_resamples`` samples of size n with replacement, evaluate the metric on each, and report the
``(1 − confidence)/2`` and ``(1 + confidence)/2`` quantiles (NumPy's linear percentile) of the values.

Resample r uses the indices ``rng.integers(0, n, size=n)``, the r-th draw of
``rng = np.random.default_rng(seed)`` (:func:`bootstrap_indices` gives the same matrix), so intervals are
repeatable and every metric of one call sees the same resamples.

Vectorised path: for AUAC, AURC, E-AURC, AUGRC, AUROC and FPR@95%TPR, the scores are encoded once as
integer tie-group codes; a block of resamples becomes a (b, m) matrix of per-group correct/wrong counts by a
single ``bincount``, and the metric is evaluated for all b rows at once with cumulative sums and row-wise
dot products (no sorting per resample). AUFC uses the resamples' sample multiplicities as weights of one
histogram of per-class TP/FP/FN counts by percentile per block (no sorting either). Any other callable is
evaluated in a loop over the same resamples. Both paths give the same values (tests check it). Measured
by ``benchmarks/bench_bootstrap.py``: 1,000 resamples of 50,000 samples take about 1–2 s per rank metric,
about 5 s for AUFC with 1,000 classes, and about 8 s for all seven metrics of
:func:`gradtrust.evaluation.evaluate` together (2 shared CPU cores).

Resamples where the metric is undefined (NaN, e.g. AUROC of a resample with no wrong prediction) are left
out of the quantiles; if all are NaN the interval is (NaN, NaN).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import numpy as np

from gradtrust.errors import InputError
from gradtrust.evaluation import risk as _risk
from gradtrust.evaluation import selective as _sel
from gradtrust.evaluation._inputs import (
    Groups,
    as_correct,
    as_labels,
    as_scores,
    check_lengths,
    encode_classes,
    rank_codes,
    to_numpy,
)

__all__ = ["VECTORISED_METRICS", "basic_interval", "bca_interval", "bootstrap_ci", "bootstrap_distribution",
           "bootstrap_indices"]

_GROUP_CORES: dict[str, Callable[[Groups], np.ndarray]] = {
    "auac": lambda g: 100.0 * _sel._accuracy_curve_groups(g).mean(axis=1),
    "aurc": _risk._aurc_groups,
    "eaurc": _risk._eaurc_groups,
    "augrc": _risk._augrc_groups,
    "auroc": _risk._auroc_groups,
    "fpr_at_95tpr": _risk._fpr95_groups,
}

_FUNCTIONS: dict[str, Callable[..., float]] = {
    "auac": _sel.auac,
    "aufc": _sel.aufc,
    "aurc": _risk.aurc,
    "eaurc": _risk.eaurc,
    "augrc": _risk.augrc,
    "auroc": _risk.auroc,
    "fpr_at_95tpr": _risk.fpr_at_95tpr,
}

#: Metrics with a vectorised bootstrap (by name; the functions of this package are recognised too).
VECTORISED_METRICS = tuple(_FUNCTIONS)

# Elements per block of resamples (b · max(n, m)): bounds memory to a few hundred MB at most.
_BLOCK_ELEMENTS = 2_000_000


def check_settings(n_resamples: int, confidence: float | None = None) -> int:
    if isinstance(n_resamples, bool) or int(n_resamples) != n_resamples or n_resamples < 1:
        raise InputError(f"`n_resamples` must be a positive integer; got {n_resamples!r}.")
    if confidence is not None and not (0.0 < float(confidence) < 1.0):
        raise InputError(f"`confidence` must lie strictly between 0 and 1 (e.g. 0.95); got {confidence!r}.")
    return int(n_resamples)


def _index_rows(n: int, n_resamples: int, seed: int | None) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        yield rng.integers(0, n, size=n)


def _index_blocks(n: int, n_resamples: int, seed: int | None, width: int) -> Iterator[np.ndarray]:
    """Blocks (b, n) of the resample indices, in order; the rows do not depend on the block size."""
    b = max(1, min(n_resamples, _BLOCK_ELEMENTS // max(width, 1)))
    rows = _index_rows(n, n_resamples, seed)
    for done in range(0, n_resamples, b):
        yield np.stack([next(rows) for _ in range(min(b, n_resamples - done))])


def bootstrap_indices(n: int, n_resamples: int = 1000, seed: int | None = 0) -> np.ndarray:
    """The (n_resamples, n) index matrix :func:`bootstrap_ci` uses: row r = r-th ``rng.integers(0, n, n)``."""
    n_resamples = check_settings(n_resamples)
    if n < 1:
        raise InputError("Cannot bootstrap 0 samples.")
    return np.stack(list(_index_rows(int(n), n_resamples, seed)))


def _metric_name(metric: Any) -> str | None:
    if isinstance(metric, str):
        if metric not in _FUNCTIONS:
            from gradtrust.errors import UnknownNameError

            raise UnknownNameError(
                f"Unknown metric {metric!r}; known: {', '.join(_FUNCTIONS)} (or pass any callable)."
            )
        return metric
    for name, fn in _FUNCTIONS.items():
        if metric is fn:
            return name
    return None


def vectorised_bootstrap(
    names: Sequence[str],
    scores: Any,
    second: Any,
    third: Any,
    n_resamples: int,
    seed: int | None,
) -> dict[str, np.ndarray]:
    """Bootstrap distributions of several named metrics over the same resamples.

    ``second`` is ``correct`` for the rank metrics; for ``aufc`` pass ``labels`` as ``second`` and
    ``predictions`` as ``third`` (``correct`` is then derived from them).
    """
    s = as_scores(scores)
    if third is not None:
        y = as_labels(second, "labels")
        p = as_labels(third, "predictions")
        n = check_lengths(scores=s, labels=y, predictions=p)
        yi, pi, k = encode_classes(y, p)
        c = yi == pi
    else:
        if "aufc" in names:
            raise InputError("AUFC needs `scores, labels, predictions`, not `scores, correct`.")
        c = as_correct(second)
        n = check_lengths(scores=s, correct=c)
    ranked = rank_codes(s)
    m = ranked.values.shape[0]
    down = (m - 1) - ranked.codes  # descending group index of each sample
    key = c * m + down  # (correct?, group) -> column of a (2, m) count table
    rank_names = [nm for nm in names if nm in _GROUP_CORES]
    if "aufc" in names:
        events = _sel._f1_events(yi, pi, k)
        n_events = events[0].shape[0]
        aufc_rows = max(1, 2 * _BLOCK_ELEMENTS // max(n_events, 101 * 3 * k))
    out = {nm: np.empty(n_resamples) for nm in names}
    start = 0
    for idx in _index_blocks(n, n_resamples, seed, max(n, 2 * m)):
        b = idx.shape[0]
        rows = np.arange(b, dtype=np.int64)[:, None]
        counts = np.bincount((key[idx] + rows * (2 * m)).ravel(), minlength=b * 2 * m).reshape(b, 2, m)
        g = Groups(counts[:, 1], counts[:, 0])
        for nm in rank_names:
            out[nm][start : start + b] = _GROUP_CORES[nm](g)
        if "aufc" in names:
            kq = _sel._percentile_groups(g)
            for lo in range(0, b, aufc_rows):
                sub = idx[lo : lo + aufc_rows]
                r = np.arange(sub.shape[0], dtype=np.int64)[:, None]
                w = np.bincount((sub + r * n).ravel(), minlength=sub.shape[0] * n).reshape(-1, n).astype(np.float64)
                f1 = _sel._f1_curves(kq[lo : lo + aufc_rows], down, events, k, m, weights=w)
                out["aufc"][start + lo : start + lo + sub.shape[0]] = 100.0 * f1.mean(axis=1)
        start += b
    return out


def bootstrap_distribution(
    metric: Callable[..., float] | str,
    *arrays: Any,
    n_resamples: int = 1000,
    seed: int | None = 0,
    vectorised: bool | None = None,
) -> np.ndarray:
    """The metric on each of ``n_resamples`` bootstrap resamples: a float64 array (n_resamples,).

    ``metric``: a function of this package (``auac``, ``aurc``, …), its name, or any callable taking the
    ``arrays`` (resampled jointly, same indices for all) and returning a float; ``seed`` seeds
    ``np.random.default_rng``. ``vectorised``: ``None`` uses the vectorised path when the metric has one;
    ``False`` forces the loop (for checking); ``True`` requires the vectorised path (error if there is none).
    """
    n_resamples = check_settings(n_resamples)
    if not arrays:
        raise InputError("Pass the arrays the metric takes, e.g. bootstrap_ci(aurc, scores, correct).")
    name = _metric_name(metric)
    if vectorised and name is None:
        raise InputError(
            f"No vectorised bootstrap for {metric!r}; it exists for {', '.join(VECTORISED_METRICS)}."
        )
    if name is not None and vectorised is not False:
        want = 3 if name == "aufc" else 2
        if len(arrays) != want:
            args = "scores, labels, predictions" if want == 3 else "scores, correct"
            raise InputError(f"`{name}` takes {want} arrays ({args}); got {len(arrays)}.")
        third = arrays[2] if want == 3 else None
        return vectorised_bootstrap([name], arrays[0], arrays[1], third, n_resamples, seed)[name]
    # _metric_name resolves every string (or raises), so an unnamed metric is the caller's callable.
    fn = _FUNCTIONS[name] if name is not None else cast(Callable[..., float], metric)
    data = [to_numpy(a, f"arrays[{i}]") for i, a in enumerate(arrays)]
    n = check_lengths(**{f"arrays[{i}]": a for i, a in enumerate(data)})
    out = np.empty(n_resamples)
    for r, idx in enumerate(_index_rows(n, n_resamples, seed)):
        out[r] = fn(*[a[idx] for a in data])
    return out


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return (float("nan"), float("nan"))
    alpha = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(finite, [alpha, 100.0 - alpha])
    return (float(low), float(high))


def bca_interval(values: np.ndarray, estimate: float, jackknife: np.ndarray,
                 confidence: float) -> tuple[float, float]:
    """Efron's bias-corrected and accelerated (BCa) interval (Efron, JASA 1987; Efron & Tibshirani 1993,
    §14.3), from the bootstrap values ``θ*_r``, the estimate ``θ̂`` and the jackknife values ``θ_(i)``:

        z₀ = Φ⁻¹( (#{θ*_r < θ̂} + #{θ*_r ≤ θ̂}) / (2R) )
        a  = Σ_i (θ̄_(·) − θ_(i))³ / (6 · [Σ_i (θ̄_(·) − θ_(i))²]^{3/2})
        α₁,₂ = Φ( z₀ + (z₀ + z_{1,2}) / (1 − a (z₀ + z_{1,2})) ),  z_{1,2} = Φ⁻¹((1 ∓ confidence)/2)

    and ``(low, high)`` are the ``α₁`` and ``α₂`` percentiles (NumPy's linear method) of the ``θ*_r``: the
    rule of ``scipy.stats.bootstrap(method="BCa")``, which the tests compare it with. NaN resamples are left
    out; where every finite resample lies on one side of ``θ̂`` (``z₀`` infinite) the interval is that side's
    extreme resample. The interval follows the statistic's bias (``z₀``) and skew (``a``); for a statistic
    biased as strongly as a binned ECE on few samples it can still exclude ``θ̂`` (then see
    :func:`basic_interval`)."""
    from statistics import NormalDist

    finite = values[~np.isnan(values)]
    jack = jackknife[~np.isnan(jackknife)]
    if finite.size == 0 or not np.isfinite(estimate):
        return (float("nan"), float("nan"))
    normal = NormalDist()
    share = (np.count_nonzero(finite < estimate) + np.count_nonzero(finite <= estimate)) / (2.0 * finite.size)
    if share <= 0.0 or share >= 1.0:
        edge = float(finite.min() if share <= 0.0 else finite.max())
        return (edge, edge)
    z0 = normal.inv_cdf(share)
    spread = jack.mean() - jack if jack.size else np.zeros(1)
    denominator = 6.0 * float(np.sum(spread**2)) ** 1.5
    accel = float(np.sum(spread**3)) / denominator if denominator > 0 else 0.0
    levels = []
    for z in (normal.inv_cdf((1.0 - confidence) / 2.0), normal.inv_cdf((1.0 + confidence) / 2.0)):
        levels.append(100.0 * normal.cdf(z0 + (z0 + z) / (1.0 - accel * (z0 + z))))
    low, high = np.percentile(finite, levels)
    return (float(low), float(high))


def basic_interval(values: np.ndarray, estimate: float, confidence: float) -> tuple[float, float]:
    """The basic (reverse-percentile) bootstrap interval ``(2θ̂ − q_hi, 2θ̂ − q_lo)`` (Davison & Hinkley,
    "Bootstrap Methods and their Application", 1997, eq. 5.6), ``q`` the percentiles of
    :func:`percentile_interval`. It takes the bootstrap distribution of ``θ* − θ̂`` for that of ``θ̂ − θ``,
    bias included, so it covers a biased statistic's target where the percentile interval follows the bias;
    it is centred on the bias-corrected estimate ``2θ̂ − mean(θ*)`` (Efron & Tibshirani 1993, §10.6)."""
    low, high = percentile_interval(values, confidence)
    return (2.0 * estimate - high, 2.0 * estimate - low)


def ci_text(value: Any, low: Any = None, high: Any = None, *, scale: float = 100.0, digits: int = 2) -> str:
    """``value [low, high]``, each × ``scale`` with ``digits`` decimals: ``n/a`` for a missing (None or not
    finite) value, no interval unless both ends are finite."""
    def finite(v: Any) -> bool:
        return v is not None and math.isfinite(v)

    if not finite(value):
        return "n/a"
    ci = f" [{scale * low:.{digits}f}, {scale * high:.{digits}f}]" if finite(low) and finite(high) else ""
    return f"{scale * value:.{digits}f}{ci}"


def bootstrap_ci(
    metric: Callable[..., float] | str,
    *arrays: Any,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int | None = 0,
    vectorised: bool | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval ``(low, high)`` of a metric (Efron & Tibshirani 1993).

    ``low``/``high`` are the ``100·(1 − confidence)/2`` and ``100·(1 + confidence)/2`` percentiles (NumPy's
    linear method) of :func:`bootstrap_distribution`, NaN resamples left out; seeded and vectorised as the
    module docstring says. Example::

        low, high = bootstrap_ci(aurc, scores, correct)
        low, high = bootstrap_ci(aufc, scores, labels, predictions, n_resamples=2000, seed=1)
    """
    check_settings(n_resamples, confidence)
    dist = bootstrap_distribution(
        metric, *arrays, n_resamples=n_resamples, seed=seed, vectorised=vectorised
    )
    return percentile_interval(dist, float(confidence))


def bootstrap_cis(
    metrics: Sequence[str],
    scores: Any,
    correct: Any = None,
    *,
    labels: Any = None,
    predictions: Any = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int | None = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of several metrics from **one** set of resamples: ``{metric: (low, high)}``.

    Each interval equals ``bootstrap_ci(metric, …)`` with the same ``seed`` (same resamples, same percentile
    rule), but the resamples are drawn and ranked once for all metrics (about 2.5× faster than one call per
    metric). Pass ``scores, correct`` for the rank metrics (``auac``, ``aurc``, ``eaurc``, ``augrc``,
    ``auroc``, ``fpr_at_95tpr``); ``aufc`` needs ``labels=`` and ``predictions=`` instead of ``correct``.
    """
    check_settings(n_resamples, confidence)
    names = [str(m) for m in metrics]
    if not names:
        return {}
    for name in names:
        _metric_name(name)  # unknown names raise, listing the known ones
    if labels is not None or predictions is not None:
        if labels is None or predictions is None:
            raise InputError("bootstrap_cis: pass both labels= and predictions= (or neither, with correct).")
        dists = vectorised_bootstrap(names, scores, labels, predictions, int(n_resamples), seed)
    else:
        if correct is None:
            raise InputError("bootstrap_cis needs `correct` (or labels= and predictions=).")
        dists = vectorised_bootstrap(names, scores, correct, None, int(n_resamples), seed)
    return {name: percentile_interval(dists[name], float(confidence)) for name in names}

