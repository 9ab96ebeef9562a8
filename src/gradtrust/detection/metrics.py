"""Detection metrics with known data as the positive class (scores: higher = more like the known data).

AUROC and FPR@95%TPR come from :mod:`gradtrust.evaluation` (known = "correct"). The detection error is

    P_e = min_δ ½·P_known(s < δ) + ½·P_challenge(s ≥ δ)

the smallest average of the two misclassification rates over thresholds δ (Liang et al., ICLR 2018, ODIN;
used by Lee et al., IEEE Access 2023). See ``docs/detection.md``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradtrust.evaluation import auroc, bootstrap_ci, fpr_at_95tpr

__all__ = ["METRICS", "detection_error", "evaluate_detection", "roc_points"]

METRICS = ("auroc", "fpr_at_95tpr", "detection_error")


def detection_error(scores: Any, is_known: Any) -> float:
    """``min_δ ½ P_known(s < δ) + ½ P_challenge(s ≥ δ)`` (ties at δ accepted together); NaN if a class is empty."""
    k = np.asarray(is_known, dtype=bool)
    n_known, n_chal = int(k.sum()), int((~k).sum())
    if n_known == 0 or n_chal == 0:
        return float("nan")
    known_accepted, chal_accepted = _accepted(scores, k)
    errors = 0.5 * (1 - known_accepted / n_known) + 0.5 * chal_accepted / n_chal
    return float(min(errors.min(), 0.5))  # 0.5: "accept none"


def roc_points(scores: Any, is_known: Any) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) of accepting ``s ≥ δ`` for every distinct δ, from (0, 0) to (1, 1)."""
    k = np.asarray(is_known, dtype=bool)
    known_accepted, chal_accepted = _accepted(scores, k)
    return np.r_[0.0, chal_accepted / max((~k).sum(), 1)], np.r_[0.0, known_accepted / max(k.sum(), 1)]


def _accepted(scores: Any, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How many known and challenge samples ``s ≥ δ`` accepts, for every distinct δ from the highest score down
    (NaN scores lowest)."""
    s = np.asarray(scores, dtype=np.float64)
    s = np.where(np.isnan(s), -np.inf, s)
    order = np.argsort(-s, kind="stable")
    s_sorted, k_sorted = s[order], k[order]
    last_of_group = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    return np.cumsum(k_sorted)[last_of_group], np.cumsum(~k_sorted)[last_of_group]


def evaluate_detection(scores: Any, is_known: Any, n_resamples: int = 200, seed: int = 0) -> dict[str, float]:
    """AUROC, FPR@95%TPR and detection error with percentile-bootstrap 95% intervals (``<metric>_low/_high``)."""
    s = np.asarray(scores, dtype=np.float64)
    k = np.asarray(is_known, dtype=bool)
    out: dict[str, float] = {}
    for name, fn in (("auroc", auroc), ("fpr_at_95tpr", fpr_at_95tpr), ("detection_error", detection_error)):
        out[name] = fn(s, k)
        if n_resamples > 0:
            out[f"{name}_low"], out[f"{name}_high"] = bootstrap_ci(fn, s, k, n_resamples=n_resamples, seed=seed)
    return out
