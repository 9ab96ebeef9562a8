"""Reference values to print beside every table: a random score and a perfect (oracle) score (docs/methods.md).

Both depend only on which predictions are correct. Each returns a dict with the keys of
:func:`gradtrust.evaluation.evaluate` that the reference defines: ``accuracy``, ``auac``, ``aurc``,
``eaurc``, ``augrc``, ``auroc``, ``fpr_at_95tpr``. AUFC has no reference: it depends on the class
structure of the errors, not on the accuracy alone. With ``A`` the accuracy and ``e = 1 − A``:

========================  ===========================  ==================================
metric                    random score (expectation)   perfect score (continuous limit)
========================  ===========================  ==================================
AUAC                      ``100·A``                    ``100·(A − A ln A)``
AURC                      ``e``                        ``e + (1 − e) ln(1 − e)``
E-AURC                    ``e − oracle AURC``          0
AUGRC                     ``e/2``                      ``e²/2``
AUROC                     0.5                          1
FPR@95%TPR                ≈ 0.95                       0
========================  ===========================  ==================================

AUROC and FPR@95%TPR are NaN when undefined (all predictions correct, or all wrong).

Derivations. *Random*: a random score's accepted set at any coverage is a uniform random subset, whose
expected error share is exactly ``e`` (hypergeometric mean), so every point of the accuracy and
selective-risk curves has expectation ``A`` resp. ``e``; the AURC end point copies a curve point, and the
generalised risk at coverage ``c`` has expectation ``e·c``, integrated exactly by the trapezoid rule. These
are exact expectations for the discrete metrics of this package (AUAC, AURC, AUGRC); FPR@95%TPR is ≈ 0.95
(exact in the continuous limit). *Oracle*: all correct predictions ranked above all wrong ones; the
accuracy above the top fraction ``1 − q`` is ``min(1, A/(1 − q))``, whose integral over ``q ∈ [0, 1]`` is
``A − A ln A``; likewise for the selective risk (Geifman et al., ICLR 2019) and the generalised risk (Traub
et al., NeurIPS 2024). With ``exact=True`` the oracle values are instead those of an actual perfect score
on this data, evaluated by the same functions (100 discrete percentiles, n points): the best any score can
reach here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradtrust.evaluation._inputs import as_correct, check_lengths
from gradtrust.evaluation.risk import (
    augrc,
    aurc,
    auroc,
    fpr_at_95tpr,
    optimal_augrc,
    optimal_aurc,
)
from gradtrust.evaluation.selective import auac

__all__ = ["random_reference", "oracle_reference"]


def _accuracy(correct: Any) -> tuple[np.ndarray, float, bool]:
    c = as_correct(correct)
    check_lengths(correct=c)
    a = float(c.mean())
    both = bool(c.any() and not c.all())
    return c, a, both


def random_reference(correct: Any) -> dict[str, float]:
    """Expected metrics of a random score (independent of ``correct``, (n,) bool or 0/1): the dict and table of
    the module docstring (AUAC = 100·A, AURC = e, …; AUROC and FPR@95 NaN when undefined)."""
    _, a, both = _accuracy(correct)
    e = 1.0 - a
    return {
        "accuracy": a,
        "auac": 100.0 * a,
        "aurc": e,
        "eaurc": e - optimal_aurc(e),
        "augrc": e / 2.0,
        "auroc": 0.5 if both else float("nan"),
        "fpr_at_95tpr": 0.95 if both else float("nan"),
    }


def oracle_reference(correct: Any, *, exact: bool = False) -> dict[str, float]:
    """Metrics of a perfect score (every correct prediction above every wrong one) (docs/methods.md, "Evaluation protocol").

    By default the continuous-limit formulas of the module docstring's table. With ``exact=True``, the values
    of an actual perfect score with distinct values on these n samples (``correct``: (n,) bool or 0/1; AUAC,
    AURC, E-AURC, AUGRC then carry the discretisation of the 100 percentiles / n curve points).
    """
    c, a, both = _accuracy(correct)
    e = 1.0 - a
    if exact:
        # Distinct values 0..n-1: the wrong samples get the lowest, the correct ones the highest.
        order = np.argsort(c, kind="stable")
        perfect = np.empty(c.shape[0])
        perfect[order] = np.arange(c.shape[0], dtype=np.float64)
        value_aurc = aurc(perfect, c)
        return {
            "accuracy": a,
            "auac": auac(perfect, c),
            "aurc": value_aurc,
            "eaurc": value_aurc - optimal_aurc(e),
            "augrc": augrc(perfect, c),
            "auroc": auroc(perfect, c),
            "fpr_at_95tpr": fpr_at_95tpr(perfect, c),
        }
    auac_oracle = 100.0 * (a - a * np.log(a)) if a > 0 else 0.0
    return {
        "accuracy": a,
        "auac": float(auac_oracle),
        "aurc": optimal_aurc(e),
        "eaurc": 0.0,
        "augrc": optimal_augrc(e),
        "auroc": 1.0 if both else float("nan"),
        "fpr_at_95tpr": 0.0 if both else float("nan"),
    }
