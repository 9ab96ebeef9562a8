"""Selective-classification metrics: risk–coverage curve, AURC, E-AURC, AUGRC, AUROC, FPR@95%TPR (docs/methods.md).

All take ``(scores, correct)``: per sample a trust score (higher = more trustworthy) and ``c_i = 1[y_i = ŷ_i]``.
All return fractions (a table may show them ×100 and says so).

Thresholds and ties
-------------------
The threshold runs over the **distinct** score values, from the highest down; at threshold ``τ`` the
accepted samples are ``{i : s_i ≥ τ}``. Tied samples are therefore accepted or rejected together, as
fd-shifts does (Jaeger et al., ICLR 2023; Traub et al., NeurIPS 2024) — a score with many ties cannot gain
from the order in which tied samples happen to be stored, and results do not depend on that order.

NaN scores rank as least trustworthy (:mod:`._inputs`): they form the last threshold group, accepted only at
coverage 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gradtrust.evaluation._inputs import Groups, dot_rows, group_counts, prepare

__all__ = [
    "risk_coverage_curve",
    "aurc",
    "eaurc",
    "augrc",
    "auroc",
    "fpr_at_95tpr",
    "optimal_aurc",
    "optimal_augrc",
]


# ---------------------------------------------------------------------------------------------------------
# Batched cores on per-tie-group counts (``_inputs.Groups``: b rows — the data, or b bootstrap resamples —
# of correct/wrong counts per tie group, groups in descending score order). With A_k, E_k, T_k the samples,
# errors and correct predictions accepted at the k-th highest threshold and t_k the size of group k, each
# metric reduces to a few row-wise dot products; empty groups (t_k = 0) contribute nothing.
# ---------------------------------------------------------------------------------------------------------


def _aurc_groups(g: Groups) -> np.ndarray:
    # Trapezoids between consecutive points (A_k/n, r_k), r_k = E_k/A_k, plus the end point (0, r_first):
    # Σ_k (t_k/n)(r_k + r_{k-1})/2 with r_{k-1} := r_k for the first non-empty group (whose t_k r_k = E_k).
    acc, err, tot = g.accepted, g.errors, g.total
    risk = err / np.maximum(acc, 1)  # 0 for the empty groups above the first non-empty one
    first = np.argmax(acc > 0, axis=1)
    err_first = err[np.arange(acc.shape[0]), first]
    area = dot_rows(tot, risk) + dot_rows(tot[:, 1:], risk[:, :-1]) + err_first
    return area / (2.0 * g.n)


def _augrc_groups(g: Groups) -> np.ndarray:
    # Σ_k (t_k/n)(E_k/n + E_{k-1}/n)/2 from (0, 0), with E_k + E_{k-1} = 2E_k − neg_k: exact integers.
    tot = g.total
    twice = 2 * dot_rows(tot, g.errors) - dot_rows(tot, g.neg)
    n = g.n.astype(np.float64)
    return twice / (2.0 * n * n)


def _eaurc_groups(g: Groups) -> np.ndarray:
    return _aurc_groups(g) - optimal_aurc(g.n_neg / g.n)


def _auroc_groups(g: Groups) -> np.ndarray:
    # U = Σ_k pos_k (wrong below group k + ½ wrong in group k) = P·N − Σ pos_k E_k + ½ Σ pos_k neg_k.
    n_pos, n_neg = g.n_pos, g.n_neg
    pairs = n_pos * n_neg
    u = pairs - dot_rows(g.pos, g.errors) + 0.5 * dot_rows(g.pos, g.neg)
    ok = pairs > 0
    return np.where(ok, u / np.where(ok, pairs, 1), np.nan)


def _fpr95_groups(g: Groups) -> np.ndarray:
    hits, err = g.hits, g.errors
    n_pos, n_neg = g.n_pos, g.n_neg
    reached = 100 * hits >= 95 * n_pos[:, None]  # exact integer test of TPR ≥ 0.95
    first = np.argmax(reached, axis=1)
    err_at = err[np.arange(hits.shape[0]), first]
    ok = (n_pos > 0) & (n_neg > 0)
    return np.where(ok, err_at / np.where(ok, n_neg, 1), np.nan)


def _groups(scores: Any, correct: Any) -> tuple[Groups, Any]:
    _, c, ranked = prepare(scores, correct)
    return Groups(*group_counts(ranked.codes, c, ranked.values.shape[0])), ranked


def _scalar(core: Callable[[Groups], np.ndarray], scores: Any, correct: Any) -> float:
    return float(core(_groups(scores, correct)[0])[0])


def optimal_aurc(error_rate: Any) -> Any:
    """The oracle's AURC at error rate ``e``: ``e + (1 − e) ln(1 − e)`` (docs/methods.md; Geifman et al., ICLR 2019).

    The area under the selective-risk curve of a perfect score in the continuous limit (all correct
    predictions accepted before any wrong one): risk 0 up to coverage ``1 − e``, then ``1 − (1 − e)/c``.
    ``(1 − e) ln(1 − e)`` is taken as 0 at ``e = 1``. Accepts a float or an array.
    """
    e = np.asarray(error_rate, dtype=np.float64)
    a = 1.0 - e
    with np.errstate(divide="ignore", invalid="ignore"):
        out = e + np.where(a > 0, a * np.log(np.where(a > 0, a, 1.0)), 0.0)
    return float(out) if out.ndim == 0 else out


def optimal_augrc(error_rate: Any) -> Any:
    """The oracle's AUGRC at error rate ``e``: ``e² / 2`` (Traub et al., NeurIPS 2024; continuous limit)."""
    e = np.asarray(error_rate, dtype=np.float64)
    out = 0.5 * e * e
    return float(out) if out.ndim == 0 else out


def risk_coverage_curve(scores: Any, correct: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The risk–coverage curve: one point per distinct score value (Geifman & El-Yaniv, NeurIPS 2017).

    For each distinct score value ``τ`` (descending), the accepted set is ``A_τ = {i : s_i ≥ τ}``;
    ``coverage = |A_τ| / n`` and ``selective_risk = #{i ∈ A_τ : c_i = 0} / |A_τ|``. Ties are accepted or
    rejected together (as fd-shifts does). NaN scores form the last group (``τ = NaN`` means "accept every
    sample"), so the last point always has coverage 1 and risk = the error rate. Returns ``(coverage,
    selective_risk, thresholds)``: float64 arrays of length m (the distinct score values, NaN counted as one),
    coverage ascending, thresholds descending. :func:`aurc` integrates these points plus the end point
    ``(0, selective_risk[0])`` (see there).
    """
    g, ranked = _groups(scores, correct)
    acc = g.accepted[0]
    return acc / acc[-1], g.errors[0] / acc, ranked.values[::-1].copy()


def aurc(scores: Any, correct: Any) -> float:
    """Area under the risk–coverage curve, a fraction in [0, 1] (Geifman et al., ICLR 2019; docs/methods.md).

    The trapezoid rule over the points of :func:`risk_coverage_curve` (one per distinct score value,
    coverage from ``|top tie group| / n`` up to 1), extended to coverage 0 by the end point
    ``(0, risk of the top tie group)`` — the selective risk held constant below the smallest coverage a
    threshold can reach. This is fd-shifts' ``aurc`` (linear interpolation, Traub et al., NeurIPS 2024)
    divided by its display scale 1000. Lower is better; a random score gives ≈ the error rate ``e``, a
    perfect one ≈ ``e + (1 − e) ln(1 − e)``. All wrong → 1, all correct → 0, one sample → its error.
    """
    return _scalar(_aurc_groups, scores, correct)


def eaurc(scores: Any, correct: Any) -> float:
    """Excess AURC: ``AURC − (e + (1 − e) ln(1 − e))`` at error rate ``e`` (Geifman et al., ICLR 2019; docs/methods.md).

    The oracle term is the continuous-limit formula of :func:`optimal_aurc` (as docs/methods.md and fd-shifts use
    for binary residuals), not the discrete optimum of this sample: with few samples or a tied score the
    trapezoid AURC can fall slightly below it, so E-AURC can be slightly negative.
    """
    return _scalar(_eaurc_groups, scores, correct)


def augrc(scores: Any, correct: Any) -> float:
    """Area under the generalised risk–coverage curve, a fraction in [0, 1/2] (Traub et al., NeurIPS 2024).

    Generalised risk at threshold ``τ`` = ``#{i : s_i ≥ τ, c_i = 0} / n`` (errors accepted over *all*
    samples: the joint probability of a silent failure). Trapezoid rule over the points of
    :func:`risk_coverage_curve` (coverage, generalised risk) plus the end point ``(0, 0)``, as fd-shifts.
    Lower is better; a random score gives ≈ ``e/2``, a perfect one ≈ ``e²/2``.
    """
    return _scalar(_augrc_groups, scores, correct)


def auroc(scores: Any, correct: Any) -> float:
    """AUROC of the score for telling correct (positive) from wrong predictions (docs/methods.md, "Evaluation protocol").

    ``P(s_correct > s_wrong) + ½ P(s_correct = s_wrong)`` over all (correct, wrong) pairs — the
    Mann–Whitney statistic, equal to ``sklearn.metrics.roc_auc_score(correct, scores)`` (ties count half;
    NaN scores tie with each other and rank below all others). Misclassification detection as in Hendrycks &
    Gimpel, ICLR 2017.

    Returns NaN — not an error, so that a report goes on — when it is undefined: all predictions correct or
    all wrong (one of the two classes is empty).
    """
    return _scalar(_auroc_groups, scores, correct)


def fpr_at_95tpr(scores: Any, correct: Any) -> float:
    """FPR at 95% TPR: the share of wrong predictions accepted at the first threshold accepting ≥ 95% of the
    correct ones (docs/methods.md; the OOD/failure-detection convention of Liang et al., ICLR 2018).

    Thresholds run over the distinct score values from the highest down (ties together); the first one
    with ``#correct accepted ≥ 0.95 · #correct`` (tested exactly in integers) is used, and the result is
    ``#wrong accepted / #wrong``. Lower is better. NaN (not an error) when undefined: no correct or no wrong
    prediction.
    """
    return _scalar(_fpr95_groups, scores, correct)
