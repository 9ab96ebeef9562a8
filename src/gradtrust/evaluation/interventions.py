"""Judging explanations by masking, the torch-free part: curve areas and the per-method summary with bootstrap
confidence intervals (``SPEC.md`` §10; the model readings come from
:func:`gradtrust.explanations.evaluate.evaluate_explanations`).

Columns of a per-sample table (one row per map and sample), higher or lower = better as stated:

==========================  ====================================================================  ==========
``deletion_auc``            area under ``P_t`` as the top-ranked pixels are filled (Petsiuk 2018)  lower
``insertion_auc``           area under ``P_t`` as they are put back into a blurred copy            higher
``average_drop``            ``100·max(0, P_t(x) − P_t(x ⊙ E))/P_t(x)`` (Chattopadhyay 2018)         lower
``increase_in_confidence``  ``100·1[P_t(x ⊙ E) > P_t(x)]``                                         higher
``road_morf``               ROAD, most relevant removed first: mean ``P_t(x̃_k) − P_t(x)``           lower
``road_lerf``               ROAD, least relevant removed first                                      higher
``variance_explained``      ``V[E(y|S_x)]``, the part of ``V[y|S_x]`` the kept subsets account for  —
``variance_remaining``      ``E[V(y|S_x)]``, what is left uncertain given the kept subset           —
==========================  ====================================================================  ==========
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gradtrust.errors import InputError
from gradtrust.evaluation.bootstrap import bootstrap_indices, percentile_interval

#: the per-sample metric columns, in display order
INTERVENTION_METRICS = (
    "deletion_auc",
    "insertion_auc",
    "average_drop",
    "increase_in_confidence",
    "road_morf",
    "road_lerf",
    "variance_explained",
    "variance_remaining",
)
#: +1 when higher is better, −1 when lower is better, 0 when neither (a description, not a quality)
DIRECTION = {
    "deletion_auc": -1,
    "insertion_auc": 1,
    "average_drop": -1,
    "increase_in_confidence": 1,
    "road_morf": -1,
    "road_lerf": 1,
    "variance_explained": 0,
    "variance_remaining": 0,
}
#: the baseline maps every table carries
BASELINES = ("random", "centre")


def curve_auc(curve: Any) -> np.ndarray:
    """Trapezoid area over the step axis scaled to [0, 1]: for ``K + 1`` readings ``y_0 … y_K`` (step 0 = before
    any change), ``AUC = (1/K) Σ_{k<K} (y_k + y_{k+1})/2`` (Petsiuk, Das & Saenko, BMVC 2018). Works on the last
    axis of an array of curves.

    >>> float(curve_auc([1.0, 0.5, 0.0]))
    0.5
    """
    y = np.asarray(curve, dtype=np.float64)
    if y.shape[-1] < 2:
        raise InputError(f"a deletion/insertion curve needs at least 2 readings, got {y.shape[-1]}.")
    return (y[..., :-1] + y[..., 1:]).sum(-1) / (2.0 * (y.shape[-1] - 1))


def total_variance(probabilities: Any) -> tuple[np.ndarray, np.ndarray]:
    """``V[y|S_x] = V[E(y|S_x)] + E[V(y|S_x)]`` for ``y = 1[the model says t]`` and ``S_x`` uniform over the kept
    subsets whose readings ``P_t(S_ℓ)`` are given on the last axis: returns ``(V_ℓ[P_ℓ], mean_ℓ P_ℓ(1 − P_ℓ))``
    (population variance). Their sum is ``p̄(1 − p̄)`` with ``p̄ = mean_ℓ P_ℓ`` (law of total variance; seed 001,
    VOICE).

    >>> [round(float(v), 4) for v in total_variance([0.2, 0.8])]
    [0.09, 0.16]
    """
    p = np.asarray(probabilities, dtype=np.float64)
    return p.var(-1), (p * (1.0 - p)).mean(-1)


def summarise_interventions(
    table: Any,
    *,
    metrics: Sequence[str] | None = None,
    reference: str = "random",
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int | None = 0,
) -> Any:
    """Per map method and metric: the mean over samples with a percentile bootstrap CI, and the paired difference
    to the ``reference`` baseline (same samples, same resamples) with its CI — a pandas DataFrame with columns
    ``method``, ``metric``, ``n``, ``mean``, ``ci_low``, ``ci_high``, ``vs_<reference>``, ``vs_<reference>_low``,
    ``vs_<reference>_high``.

    ``table``: the per-sample DataFrame of :func:`~gradtrust.explanations.evaluate.evaluate_explanations` (columns
    ``method``, ``sample`` and the metrics). Resample r draws the same sample indices for every method
    (:func:`gradtrust.evaluation.bootstrap_indices`), so a difference's CI is paired.
    """
    import pandas as pd

    if "method" not in table.columns or "sample" not in table.columns:
        raise InputError(
            "summarise_interventions needs the per-sample table of evaluate_explanations (columns "
            "'method', 'sample' and the metric columns)."
        )
    names = [m for m in (metrics or INTERVENTION_METRICS) if m in table.columns]
    methods = list(dict.fromkeys(table["method"]))
    samples = np.array(sorted(set(table["sample"])))
    wide = {m: table[table["method"] == m].set_index("sample").reindex(samples) for m in methods}
    # n_resamples = 0: means and differences without CIs (as ``--resamples 0`` everywhere)
    resamples = (
        bootstrap_indices(len(samples), n_resamples, seed) if len(samples) and n_resamples else np.zeros((0, 0), int)
    )
    vs = f"vs_{reference}"
    rows = []
    for method in methods:
        for metric in names:
            values = wide[method][metric].to_numpy(dtype=np.float64)
            row: dict[str, Any] = {
                "method": method,
                "metric": metric,
                "n": int(np.isfinite(values).sum()),
                "mean": float(np.nanmean(values)) if np.isfinite(values).any() else np.nan,
            }
            row["ci_low"], row["ci_high"] = _interval(values, resamples, confidence)
            if reference in wide and method != reference:
                diff = values - wide[reference][metric].to_numpy(dtype=np.float64)
                row[vs] = float(np.nanmean(diff)) if np.isfinite(diff).any() else np.nan
                row[f"{vs}_low"], row[f"{vs}_high"] = _interval(diff, resamples, confidence)
            else:
                row[vs] = row[f"{vs}_low"] = row[f"{vs}_high"] = np.nan
            rows.append(row)
    return pd.DataFrame(rows)


def _interval(values: np.ndarray, resamples: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval of the mean over resamples (NaN samples left out of each resample's mean)."""
    if resamples.size == 0 or not np.isfinite(values).any():
        return (np.nan, np.nan)
    drawn = values[resamples]
    with np.errstate(invalid="ignore"):
        counts = np.isfinite(drawn).sum(1)
        means = np.where(counts > 0, np.nansum(drawn, 1) / np.maximum(counts, 1), np.nan)
    return percentile_interval(means, confidence)
