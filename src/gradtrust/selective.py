"""``gradtrust.selective``: from trust scores to decisions — a threshold with a guaranteed selective risk.

>>> from gradtrust.selective import fit_gate, Gate
>>> gate = fit_gate(scores, correct, risk=0.05, delta=0.05, method="sgr")   # doctest: +SKIP
>>> gate.accept(new_scores)                                                 # doctest: +SKIP

The public API of :mod:`gradtrust.evaluation.gate` (the :class:`Gate`, :func:`fit_gate`) and
:mod:`gradtrust.evaluation.guarantees` (the bounds and procedures, on ``(b, n)`` arrays), re-exported under one
name. Torch-free: it needs NumPy and SciPy. Formulas and what each guarantee covers: ``docs/decisions.md``.
"""

from gradtrust.evaluation.gate import FORMAT, METHODS, SHIFT_NOTE, Gate, InfeasibleTargetError, fit_gate
from gradtrust.evaluation.guarantees import (
    P_VALUES,
    Thresholds,
    binomial_p_value,
    binomial_upper_bound,
    clopper_pearson_interval,
    coverage_lower_bound,
    coverage_thresholds,
    hoeffding_bentkus_p_value,
    ltt_min_accepted,
    ltt_thresholds,
    sgr_steps,
    sgr_thresholds,
)

__all__ = [
    "FORMAT",
    "METHODS",
    "P_VALUES",
    "SHIFT_NOTE",
    "Gate",
    "InfeasibleTargetError",
    "Thresholds",
    "binomial_p_value",
    "binomial_upper_bound",
    "clopper_pearson_interval",
    "coverage_lower_bound",
    "coverage_thresholds",
    "fit_gate",
    "hoeffding_bentkus_p_value",
    "ltt_min_accepted",
    "ltt_thresholds",
    "sgr_steps",
    "sgr_thresholds",
]
