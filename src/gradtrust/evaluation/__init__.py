"""Evaluation of trust scores: plain functions on per-sample arrays (docs/methods.md, "Evaluation protocol").

Every metric takes per-sample arrays (NumPy, torch tensors or lists; converted at the boundary) and returns
a float. Scores are oriented higher = more trustworthy; NaN scores rank as least trustworthy (below -inf)
and tied scores are always accepted or rejected together.

Importing this package needs NumPy only (pandas is imported inside :func:`evaluate_frame`).
"""

from gradtrust.evaluation.bootstrap import (
    VECTORISED_METRICS,
    bootstrap_ci,
    bootstrap_cis,
    bootstrap_distribution,
    bootstrap_indices,
)
from gradtrust.evaluation.calibration import (
    ReliabilityDiagram,
    TemperatureScaling,
    adaptive_calibration_error,
    brier_score,
    classwise_calibration_error,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_diagram,
    softmax,
    top_label,
)
from gradtrust.evaluation.interventions import (
    INTERVENTION_METRICS,
    curve_auc,
    summarise_interventions,
    total_variance,
)
from gradtrust.evaluation.references import oracle_reference, random_reference
from gradtrust.evaluation.risk import (
    augrc,
    aurc,
    auroc,
    eaurc,
    fpr_at_95tpr,
    optimal_augrc,
    optimal_aurc,
    risk_coverage_curve,
)
from gradtrust.evaluation.selective import PERCENTILES, accuracy_curve, auac, aufc, f1_curve
from gradtrust.evaluation.summary import METRICS, TrustEvaluator, anomaly_summary, evaluate, evaluate_frame

__all__ = [
    "INTERVENTION_METRICS",
    "METRICS",
    "PERCENTILES",
    "VECTORISED_METRICS",
    "ReliabilityDiagram",
    "TemperatureScaling",
    "TrustEvaluator",
    "accuracy_curve",
    "adaptive_calibration_error",
    "auac",
    "aufc",
    "augrc",
    "aurc",
    "anomaly_summary",
    "auroc",
    "bootstrap_ci",
    "bootstrap_cis",
    "bootstrap_distribution",
    "bootstrap_indices",
    "brier_score",
    "classwise_calibration_error",
    "curve_auc",
    "eaurc",
    "evaluate",
    "evaluate_frame",
    "expected_calibration_error",
    "f1_curve",
    "fit_temperature",
    "fpr_at_95tpr",
    "negative_log_likelihood",
    "optimal_augrc",
    "optimal_aurc",
    "oracle_reference",
    "random_reference",
    "reliability_diagram",
    "risk_coverage_curve",
    "softmax",
    "summarise_interventions",
    "top_label",
    "total_variance",
]
