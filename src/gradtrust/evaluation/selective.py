"""The paper's percentile curves: selective accuracy and macro F1 above each score percentile, AUAC and AUFC.

Source: GradTrust slides, "Evaluation: Methodology", as stated precisely in docs/methods.md. For each percentile
``q ∈ {0, 1, …, 99}`` let ``t_q`` be the q-th percentile of the scores and ``R_q = {i : s_i ≥ t_q}``;

- ``acc(q)`` = mean of ``c_i = 1[y_i = ŷ_i]`` over ``R_q``, and **AUAC** = ``100 · mean_q acc(q)``;
- ``f1(q)`` = macro F1 of ``(y_i, ŷ_i)`` over ``R_q``, and **AUFC** = ``100 · mean_q f1(q)``.

How ``t_q`` is computed
-----------------------
``t_q`` is NumPy's default percentile (``np.percentile(scores, q)``, method ``"linear"``): with the scores
sorted ascending, ``s_(0) ≤ … ≤ s_(n-1)``, and the virtual index ``v = q (n − 1) / 100``, it interpolates
linearly between ``s_(⌊v⌋)`` and ``s_(⌈v⌉)``. ``R_q`` only depends on which order statistic the threshold
reaches: ``t_q > s_(⌊v⌋)`` exactly when ``v`` is fractional and ``s_(⌊v⌋) < s_(⌈v⌉)``, so in every case

    R_q = {i : s_i ≥ s_(⌈v⌉)},   ⌈v⌉ = ⌈q (n − 1) / 100⌉ (computed in exact integer arithmetic).

This module computes ``R_q`` so, on the ranks of the scores, never on interpolated floats. For finite scores
it is the set ``s >= np.percentile(s, q)`` gives, except where NumPy's own floating-point arithmetic lands
an ulp off the exact value: e.g. for n = 101 and q = 7 the virtual index is exactly 7, but NumPy computes
it as 7.000000000000001 and may return ``s_(7)`` plus one ulp, which would drop the samples scoring exactly
``s_(7)``; here the exact percentile is used (tests compare against exact rational arithmetic, and against
``np.percentile`` where it is exact). Unlike ``np.percentile`` it stays defined with NaN and ±inf scores.

NaN scores
----------
NaN scores rank as least trustworthy, all tied (the rank encoding of :mod:`._inputs`), as if NaN were a number
below every other score: never a NaN percentile. :func:`gradtrust.evaluation.evaluate` counts them.

Ties
----
``R_q`` contains all samples whose score is ≥ the threshold, so tied samples are always kept or dropped
together, and ``|R_q| ≥ 1`` (the sample at position ⌈v⌉ is in it): ``acc(q)`` and ``f1(q)`` are always
defined. Results do not depend on the order of the samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradtrust.evaluation._inputs import (
    Groups,
    Ranked,
    as_labels,
    as_scores,
    check_lengths,
    encode_classes,
    group_counts,
    prepare,
    rank_codes,
)

__all__ = ["PERCENTILES", "accuracy_curve", "f1_curve", "auac", "aufc"]

#: The percentiles q at which the curves are evaluated: 0, 1, …, 99.
PERCENTILES = np.arange(100)


def _percentile_groups(g: Groups) -> np.ndarray:
    """For each row, the tie group (descending index) that ``t_q`` falls in: ``R_q`` = groups ``0..k[:, q]``.

    The sample at ascending position ``j = ⌈q(n−1)/100⌉`` sits at descending position ``n − 1 − j``; its group
    is the first ``k`` whose cumulative count reaches ``n − j``. One batched ``searchsorted`` for all rows
    (the rows are offset so that the flattened cumulative counts stay sorted); empty groups are skipped.
    Every row must hold the same number of samples ``n``.
    """
    acc = g.accepted
    b, m = acc.shape
    n = int(acc[0, -1])
    target = n + (-PERCENTILES * (n - 1)) // 100  # n − ⌈q(n−1)/100⌉, exactly: in 1..n
    off = np.arange(b, dtype=np.int64)[:, None] * (n + 1)
    k = np.searchsorted((acc + off).ravel(), (target[None, :] + off).ravel(), side="left")
    return k.reshape(b, 100) - np.arange(b, dtype=np.int64)[:, None] * m


def _accuracy_curve_groups(g: Groups) -> np.ndarray:
    """acc(q), shape (b, 100): correct / all samples in the groups above each percentile's group."""
    k = _percentile_groups(g)
    kept = np.take_along_axis(g.accepted, k, axis=1)
    return np.take_along_axis(g.hits, k, axis=1) / kept


def _f1_events(y: np.ndarray, p: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The TP/FN/FP events of each sample as (sample index, column in a 3K-wide TP|FP|FN table).

    A correct sample is a TP of class y; a wrong one an FN of class y and an FP of class ŷ.
    """
    n = y.shape[0]
    right = y == p
    wrong = np.flatnonzero(~right)
    sample = np.concatenate((np.arange(n), wrong))
    column = np.concatenate((np.where(right, y, 2 * k + y), k + p[wrong]))
    return sample, column


def _f1_curves(
    kq: np.ndarray,
    down: np.ndarray,
    events: tuple[np.ndarray, np.ndarray],
    k: int,
    m: int,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Macro F1 above each percentile, shape (b, 100), for b rows at once, from the (b, 100) percentile groups
    ``kq`` (:func:`_percentile_groups`), each sample's descending group index ``down`` (in 0..m-1), ``k`` classes,
    ``m`` tie groups and ``weights``: (b, n) multiplicity of each sample in each row (bootstrap), or None.

    Sample i is in ``R_q`` for the ``Q_i = #{q : kq ≥ down_i}`` smallest q (``R_q`` shrinks as q grows);
    ``Q`` is tabulated per group (a histogram of ``kq`` summed from the top) and looked up per sample.
    Per-class TP/FP/FN counts are histogrammed by ``Q_i`` and summed from the top: O(n + m + 100·K) per row,
    no loop over percentiles.
    """
    b = kq.shape[0]
    rows = np.arange(b, dtype=np.int64)[:, None]
    # q_table[r, d] = #{q : kq[r, q] ≥ d}
    hits = np.bincount((kq + rows * m).ravel(), minlength=b * m).reshape(b, m)
    q_table = np.cumsum(hits[:, ::-1], axis=1)[:, ::-1]
    sample, column = events
    width = 3 * k
    q_in = q_table[:, down[sample]]  # (b, n_events)
    q_in *= b
    q_in += rows
    q_in *= width
    q_in += column
    w = None if weights is None else weights[:, sample].ravel()
    hist = np.bincount(q_in.ravel(), weights=w, minlength=101 * b * width).reshape(101, b, 3, k)
    # Walk q from 99 down to 0, adding the samples with Q_i = q + 1 (a sample with Q_i = t is in
    # R_0..R_{t-1}), and take the macro F1 of the running counts. In-place (b, 3, K) operations: several
    # times faster than materialising all 100 count tables (or np.cumsum along that outer axis).
    out = np.empty((b, 100))
    running = np.zeros((b, 3, k))
    tp2 = np.empty((b, k))
    denom = np.empty((b, k))
    f1 = np.empty((b, k))
    for q in range(99, -1, -1):
        running += hist[q + 1]
        np.multiply(running[:, 0], 2.0, out=tp2)
        np.add(tp2, running[:, 1], out=denom)
        denom += running[:, 2]  # 2·TP + FP + FN
        present = denom > 0  # the class occurs in y or ŷ of R_q
        f1.fill(0.0)
        np.divide(tp2, denom, out=f1, where=present)
        out[:, q] = f1.sum(axis=1) / np.count_nonzero(present, axis=1)
    return out


def accuracy_curve(scores: Any, correct: Any) -> np.ndarray:
    """Selective accuracy above each score percentile: ``acc(q)`` for q = 0, 1, …, 99 (docs/methods.md, "Evaluation protocol").

    ``acc(q) = mean_{i ∈ R_q} c_i`` with ``R_q = {i : s_i ≥ s_(⌈q(n−1)/100⌉)}`` as in the module docstring;
    ``correct`` is bool or 0/1, ``1[y_i = ŷ_i]``; NaN scores rank least trustworthy. 100 fractions in [0, 1].
    """
    _, c, ranked = prepare(scores, correct)
    return _accuracy_curve_groups(Groups(*group_counts(ranked.codes, c, ranked.values.shape[0])))[0]


def auac(scores: Any, correct: Any) -> float:
    """Area under the accuracy curve: ``AUAC = 100 · mean_{q=0..99} acc(q)`` (docs/methods.md; GradTrust slides).

    See :func:`accuracy_curve` for ``acc(q)``. In [0, 100]. A random score gives ≈ ``100·A`` (A the
    accuracy), a perfect one ≈ ``100·(A − A ln A)``: see :mod:`gradtrust.evaluation.references`.
    """
    return float(100.0 * accuracy_curve(scores, correct).mean())


def f1_curve(scores: Any, labels: Any, predictions: Any) -> np.ndarray:
    """Selective macro F1 above each score percentile: ``f1(q)`` for q = 0, 1, …, 99 (docs/methods.md, "Evaluation protocol").

    ``f1(q)`` is the macro-averaged F1 of ``(y_i, ŷ_i)`` over ``R_q`` (same ``R_q`` as
    :func:`accuracy_curve`): per class ``F1_c = 2·TP_c / (2·TP_c + FP_c + FN_c)``, averaged over the classes
    present in either ``y`` or ``ŷ`` restricted to ``R_q``; a zero division gives 0. This equals
    ``sklearn.metrics.f1_score(y[R_q], ŷ[R_q], average="macro", zero_division=0)``, computed for all 100
    percentiles at once from per-class TP/FP/FN counts accumulated down the score order. Classes may be any
    comparable values (ints, strings); NaN scores rank least trustworthy. 100 fractions in [0, 1].
    """
    return _classified(scores, labels, predictions)[-1]


def _classified(scores: Any, labels: Any, predictions: Any) -> tuple[tuple, Ranked, np.ndarray, Groups, np.ndarray]:
    """The checked ``(scores, labels, predictions)``, their rank encoding, whether each prediction is right, the
    tie-group counts and ``f1(q)``: what :func:`f1_curve` and :func:`gradtrust.evaluation.evaluate` share."""
    s, y, p = as_scores(scores), as_labels(labels, "labels"), as_labels(predictions, "predictions")
    check_lengths(scores=s, labels=y, predictions=p)
    ranked = rank_codes(s)
    yi, pi, k = encode_classes(y, p)
    m = ranked.values.shape[0]
    g = Groups(*group_counts(ranked.codes, yi == pi, m))
    f1 = _f1_curves(_percentile_groups(g), (m - 1) - ranked.codes, _f1_events(yi, pi, k), k, m)[0]
    return (s, y, p), ranked, yi == pi, g, f1


def aufc(scores: Any, labels: Any, predictions: Any) -> float:
    """Area under the macro-F1 curve: ``AUFC = 100 · mean_{q=0..99} f1(q)`` (docs/methods.md; GradTrust slides).

    See :func:`f1_curve` for ``f1(q)``. In [0, 100].
    """
    return float(100.0 * f1_curve(scores, labels, predictions).mean())
