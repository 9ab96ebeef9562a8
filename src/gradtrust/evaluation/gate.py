"""``fit_gate`` → :class:`Gate`: which predictions to refuse, with a guaranteed selective risk (SPEC §11).

A gate accepts a prediction when its trust score is at least the gate's threshold (higher = more trustworthy;
a NaN score is always refused). It is fitted on a labelled calibration set by one of the procedures of
:mod:`gradtrust.evaluation.guarantees` and saved as JSON (no code is ever loaded from a gate file).

When no threshold meets the target, :func:`fit_gate` raises :class:`InfeasibleTargetError` (a
:class:`~gradtrust.errors.InputError`) saying how close the best candidate came and what to change: a gate that
refused everything would meet any risk target and be of no use, so none is returned.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gradtrust.errors import DataError, InputError
from gradtrust.evaluation.guarantees import (
    P_VALUES,
    Thresholds,
    binomial_upper_bound,
    clopper_pearson_interval,
    correctness,
    coverage_lower_bound,
    coverage_thresholds,
    ltt_thresholds,
    sgr_thresholds,
    sorted_calibration,
)
from gradtrust.evaluation.risk import aurc

__all__ = ["FORMAT", "METHODS", "SHIFT_NOTE", "Gate", "InfeasibleTargetError", "fit_gate"]

FORMAT = "gradtrust.gate/1"
#: The procedures that set a threshold at a target risk.
METHODS = ("sgr", "ltt")
#: What every printed bound says with it.
SHIFT_NOTE = (
    "the bounds hold for data exchangeable with the calibration data; they do not hold under "
    "distribution shift between calibration and use"
)


class InfeasibleTargetError(InputError):
    """No threshold meets the target risk (or coverage) at the asked confidence on this calibration data."""


@dataclass
class Gate:
    """A fitted threshold on one trust score: ``accept(s) = s ≥ threshold`` (NaN → refused).

    ``risk_bound``: with probability ≥ ``1 − delta`` over the calibration draw, the selective risk
    ``P(wrong | accepted)`` on exchangeable data is at most this. ``coverage``, ``risk``: the calibration
    coverage and selective risk, with two-sided 95% Clopper–Pearson intervals; ``coverage_bound``: a lower
    ``1 − delta`` bound on the true coverage (see :func:`fit_gate` for what holds jointly).
    """

    threshold: float
    risk_bound: float
    coverage: float
    method: str
    score: str | None = None
    delta: float = 0.05
    target_risk: float | None = None
    target_coverage: float | None = None
    p_value: str | None = None
    risk: float = float("nan")
    risk_ci: tuple[float, float] = (float("nan"), float("nan"))
    coverage_ci: tuple[float, float] = (float("nan"), float("nan"))
    coverage_bound: float = float("nan")
    n: int = 0
    accepted: int = 0
    errors: int = 0
    selection: dict[str, Any] = field(default_factory=dict)

    def accept(self, scores: Any) -> np.ndarray:
        """A bool array: ``scores ≥ threshold``; NaN scores are refused."""
        s = np.asarray(scores, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            return s >= self.threshold

    def evaluate(self, scores: Any, correct: Any) -> dict[str, Any]:
        """Realised coverage and selective risk on labelled data (with 95% Clopper–Pearson intervals)."""
        accepted = self.accept(scores)
        c = np.asarray(correct, dtype=bool)
        if c.shape != accepted.shape:
            raise InputError(f"scores and correct differ in shape: {accepted.shape} and {c.shape}")
        n, m = accepted.size, int(accepted.sum())
        errors = int((accepted & ~c).sum())
        cov_lo, cov_hi = clopper_pearson_interval(m, n)
        risk_lo, risk_hi = clopper_pearson_interval(errors, m)
        return {
            "n": n,
            "accepted": m,
            "errors": errors,
            "coverage": m / n if n else float("nan"),
            "coverage_ci": (float(cov_lo), float(cov_hi)),
            "risk": errors / m if m else float("nan"),
            "risk_ci": (float(risk_lo), float(risk_hi)) if m else (float("nan"), float("nan")),
        }

    def describe(self) -> str:
        """One paragraph: threshold, bound, calibration coverage and risk with their CIs, and what is guaranteed."""
        target = (
            (f"risk ≤ {self.target_risk:g}" if self.target_risk is not None else "")
            + (", " if self.target_risk is not None and self.target_coverage is not None else "")
            + (f"coverage ≥ {self.target_coverage:g}" if self.target_coverage is not None else "")
        )
        return (
            f"gate on {self.score or 'the score'} ({self.method}{', ' + self.p_value if self.p_value else ''}; "
            f"target {target}, δ = {self.delta:g}): accept when score ≥ {self.threshold:.6g}. "
            f"Risk bound {self.risk_bound:.4f} (holds with probability ≥ {1 - self.delta:g}); calibration: "
            f"coverage {self.coverage:.4f} [{self.coverage_ci[0]:.4f}, {self.coverage_ci[1]:.4f}], "
            f"lower bound {self.coverage_bound:.4f}; risk {self.risk:.4f} [{self.risk_ci[0]:.4f}, "
            f"{self.risk_ci[1]:.4f}] ({self.errors} errors in {self.accepted} accepted of {self.n}). "
            f"Note: {SHIFT_NOTE}."
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["risk_ci"], data["coverage_ci"] = list(self.risk_ci), list(self.coverage_ci)
        return {"format": FORMAT, **data, "note": SHIFT_NOTE}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the gate as JSON (atomically: a temporary file, then ``os.replace``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Gate:
        """Read a gate written by :meth:`save` (plain JSON; a :class:`DataError` says what is wrong)."""
        try:
            data = json.loads(Path(path).read_text("utf-8"))
        except FileNotFoundError:
            raise DataError(f"gate file {path} does not exist; write one with `gradtrust gate fit`.") from None
        except (OSError, ValueError) as exc:
            raise DataError(f"{path} is not a gate file (JSON): {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DataError(f"{path} is not a gate file: expected format {FORMAT!r} (written by `gradtrust gate fit`).")
        names = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in names}
        for key in ("risk_ci", "coverage_ci"):
            if key in kwargs:
                kwargs[key] = tuple(float(v) for v in kwargs[key])
        try:
            gate = cls(**kwargs)
            gate.threshold = float(gate.threshold)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}: a broken gate file ({exc}).") from None
        return gate


def _check_target(risk: float | None, coverage: float | None, delta: float, method: str, p_value: str) -> None:
    if risk is None and coverage is None:
        raise InputError(
            "give a target: risk=r* (the most permissive threshold with selective risk ≤ r*) and/or "
            "coverage=c* (keep at least that share of the inputs)"
        )
    for name, value in (("risk", risk), ("coverage", coverage), ("delta", delta)):
        if value is not None and not 0.0 < float(value) < 1.0:
            raise InputError(f"{name} must be in (0, 1), got {value}")
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if p_value not in P_VALUES:
        raise InputError(f"p_value must be one of {', '.join(P_VALUES)}, got {p_value!r}")


def _fit_rows(
    scores: np.ndarray,
    correct: np.ndarray,
    risk: float | None,
    coverage: float | None,
    delta: float,
    method: str,
    p_value: str,
    grid: int,
) -> tuple[Thresholds, np.ndarray | None]:
    """The procedure's thresholds for ``(b, n)`` calibration sets; with a coverage target only, also the
    coverage lower bounds."""
    if risk is None:
        assert coverage is not None
        return coverage_thresholds(scores, correct, coverage, delta)
    if method == "sgr":
        return sgr_thresholds(scores, correct, risk, delta), None
    return ltt_thresholds(scores, correct, risk, delta, p_value=p_value, grid=grid), None


def _build(
    name: str | None,
    scores: np.ndarray,
    correct: np.ndarray,
    picked: Thresholds,
    cov_bound: Any,
    risk: float | None,
    coverage: float | None,
    delta: float,
    method: str,
    p_value: str,
    selection: dict[str, Any],
) -> Gate:
    n = scores.size
    m, e = int(picked.accepted[0]), int(picked.errors[0])
    if cov_bound is None:
        cov_bound = coverage_lower_bound(m, n, delta)
    cov_ci, risk_ci = clopper_pearson_interval(m, n), clopper_pearson_interval(e, m)
    return Gate(
        threshold=float(picked.threshold[0]),
        risk_bound=float(picked.risk_bound[0]),
        coverage=m / n,
        method=method if risk is not None else "coverage",
        score=name,
        delta=float(delta),
        target_risk=risk,
        target_coverage=coverage,
        p_value=p_value if method == "ltt" and risk is not None else None,
        risk=e / m if m else float("nan"),
        risk_ci=(float(risk_ci[0]), float(risk_ci[1])),
        coverage_ci=(float(cov_ci[0]), float(cov_ci[1])),
        coverage_bound=float(np.asarray(cov_bound).ravel()[0]),
        n=n,
        accepted=m,
        errors=e,
        selection=selection,
    )


def _infeasible(
    name: str | None, scores: np.ndarray, correct: np.ndarray, risk: float | None, delta: float, reason: str = ""
) -> InfeasibleTargetError:
    what = f"on {name!r} " if name else ""
    if reason:
        return InfeasibleTargetError(f"no threshold {what}meets the target: {reason}")
    data = sorted_calibration(scores, correct)
    bounds = binomial_upper_bound(data.errors[0], data.accepted[0], delta)
    best = int(np.argmin(np.where(data.defined[0], bounds, np.inf)))
    return InfeasibleTargetError(
        f"no threshold {what}has selective risk ≤ {risk:g} with probability ≥ {1 - delta:g} on these {scores.size} "
        f"calibration samples (the lowest single-threshold bound is {bounds[best]:.4f}, {int(data.errors[0, best])} "
        f"errors in {int(data.accepted[0, best])} accepted, before any correction for the search). Raise the risk "
        "target or δ, or calibrate on more labelled samples."
    )


def _fit_one(
    name: str | None,
    scores: np.ndarray,
    correct: np.ndarray,
    risk: float | None,
    coverage: float | None,
    delta: float,
    method: str,
    p_value: str,
    grid: int,
    selection: dict[str, Any],
) -> Gate:
    picked, cov_bound = _fit_rows(scores[None, :], correct[None, :], risk, coverage, delta, method, p_value, grid)
    if math.isnan(float(picked.threshold[0])):
        raise _infeasible(
            name,
            scores,
            correct,
            risk,
            delta,
            "" if risk is not None else "every score is NaN or -inf at that coverage",
        )
    gate = _build(name, scores, correct, picked, cov_bound, risk, coverage, delta, method, p_value, selection)
    if risk is not None and coverage is not None and gate.coverage < coverage:
        raise _infeasible(
            name,
            scores,
            correct,
            risk,
            delta,
            f"the most permissive threshold with a certified risk ≤ {risk:g} keeps {gate.coverage:.4f} "
            f"of the calibration samples, below the coverage target {coverage:g}. Lower the coverage "
            "target, raise the risk target, or choose a better-ranking score.",
        )
    return gate


def _as_columns(scores: Any) -> tuple[dict[str, np.ndarray], bool]:
    if isinstance(scores, Mapping) or hasattr(scores, "columns"):
        names = list(scores.keys()) if isinstance(scores, Mapping) else [str(c) for c in scores.columns]
        columns = {str(k): np.asarray(scores[k], dtype=np.float64).ravel() for k in names}
        if not columns:
            raise InputError("no score columns to choose from")
        return columns, True
    return {"": np.asarray(scores, dtype=np.float64).ravel()}, False


def _criterion(
    gate_or_none: Gate | None, scores: np.ndarray, correct: np.ndarray, coverage_only: bool
) -> tuple[float, float]:
    """Larger is better: certified coverage (or −risk bound for a coverage target), then −AURC."""
    tie_break = -aurc(scores, correct)
    if gate_or_none is None:
        return (-math.inf, tie_break)
    return (-gate_or_none.risk_bound if coverage_only else gate_or_none.coverage, tie_break)


def fit_gate(
    scores: Any,
    correct: Any,
    *,
    risk: float | None = None,
    coverage: float | None = None,
    delta: float = 0.05,
    method: str = "sgr",
    p_value: str = "clopper-pearson",
    grid: int = 100,
    score: str | None = None,
    choose: str | None = None,
    seed: int = 0,
) -> Gate:
    """Fit a :class:`Gate` on labelled calibration data (SPEC §11; ``docs/decisions.md``).

    Args:
        scores: (n,) trust scores (higher = more trustworthy; NaN refused), or a mapping / DataFrame of several
            score columns: then the score is chosen so that the guarantee still holds after the choice (``choose``).
        correct: (n,) bool, ``1[y = ŷ]``.
        risk: target selective risk ``r*``: the most permissive threshold with ``P(R(τ) ≤ r*) ≥ 1 − δ``.
        coverage: target coverage ``c*``: alone, the threshold keeping at least ``c*`` of the inputs, with a
            lower bound on the true coverage and the risk bound there (jointly at ``1 − δ``); with ``risk``,
            a floor: the fit fails when the certified threshold keeps less than ``c*`` of the calibration data.
        delta: ``δ``, the probability that the bound fails over the calibration draw.
        method: ``"sgr"`` (Geifman & El-Yaniv 2017) or ``"ltt"`` (Learn-then-Test, Angelopoulos et al. 2021).
        p_value: Learn-then-Test's p-value: ``"clopper-pearson"`` or ``"hoeffding-bentkus"``.
        grid: Learn-then-Test's number of candidate thresholds.
        score: the score's name, stored in the gate (a mapping's keys name themselves).
        choose: with several scores: ``"split"`` (choose on a random half — the score whose procedure certifies
            the largest coverage there, ties by AURC — and fit its threshold on the other half) or ``"family"``
            (``ltt`` only: every score's fixed sequence at ``δ/K`` for ``K`` scores, Bonferroni, so that all
            (score, threshold) pairs form one family with error ≤ δ; the score certifying the largest coverage
            wins). Default: ``"family"`` for ``ltt``, ``"split"`` for ``sgr``.
        seed: the random split of ``choose="split"``.

    Raises:
        InfeasibleTargetError: no threshold meets the target (the message says how close it came).
        InputError: bad targets, shapes or correctness values.
    """
    method = str(method).lower()
    _check_target(risk, coverage, delta, method, p_value)
    columns, several = _as_columns(scores)
    c = correctness(correct).ravel()
    for name, values in columns.items():
        if values.shape != c.shape:
            raise InputError(
                f"scores{' ' + repr(name) if name else ''} and correct differ in length: {values.size} and {c.size}"
            )
    if not several:
        return _fit_one(score, columns[""], c, risk, coverage, delta, method, p_value, grid, {})
    choose = choose or ("family" if method == "ltt" else "split")
    if choose not in ("split", "family"):
        raise InputError(f"choose must be 'split' or 'family', got {choose!r}")
    if choose == "family" and method != "ltt":
        raise InputError(
            "choose='family' tests every (score, threshold) pair in one Learn-then-Test family: "
            "use method='ltt', or choose='split' with SGR"
        )
    names = list(columns)
    if len(names) == 1:
        return _fit_one(
            names[0],
            columns[names[0]],
            c,
            risk,
            coverage,
            delta,
            method,
            p_value,
            grid,
            {"how": "given", "candidates": names},
        )
    coverage_only = risk is None
    if choose == "family":
        share = delta / len(names)
        gates: dict[str, Gate | None] = {}
        for name in names:
            try:
                gates[name] = _fit_one(name, columns[name], c, risk, coverage, share, method, p_value, grid, {})
            except InfeasibleTargetError:
                gates[name] = None
        ranked = sorted(names, key=lambda k: _criterion(gates[k], columns[k], c, coverage_only), reverse=True)
        best = gates[ranked[0]]
        if best is None:
            raise _infeasible(
                None,
                columns[ranked[0]],
                c,
                risk,
                share,
                f"none of the {len(names)} scores is certified at δ/{len(names)} = {share:.4g} each "
                "(Bonferroni over the scores). Raise the risk target or δ, or use more calibration data.",
            )
        best.delta = float(delta)
        best.selection = {
            "how": "family",
            "candidates": names,
            "delta_per_score": share,
            "criterion": "the largest certified coverage" if not coverage_only else "the lowest risk bound",
        }
        return best
    rng = np.random.default_rng(seed)
    order = rng.permutation(c.size)
    half = c.size // 2
    choose_idx, fit_idx = np.sort(order[:half]), np.sort(order[half:])
    if half < 2:
        raise InputError(f"choosing among scores on a split needs more calibration samples (got {c.size})")
    trial: dict[str, Gate | None] = {}
    for name in names:
        try:
            trial[name] = _fit_one(
                name, columns[name][choose_idx], c[choose_idx], risk, coverage, delta, method, p_value, grid, {}
            )
        except InfeasibleTargetError:
            trial[name] = None
    ranked = sorted(
        names, key=lambda k: _criterion(trial[k], columns[k][choose_idx], c[choose_idx], coverage_only), reverse=True
    )
    chosen = ranked[0]
    selection = {
        "how": "split",
        "candidates": names,
        "seed": int(seed),
        "choice_samples": int(half),
        "fit_samples": int(c.size - half),
        "criterion": "the largest certified coverage on the choice half, ties by AURC"
        if not coverage_only
        else "the lowest risk bound on the choice half, ties by AURC",
    }
    return _fit_one(
        chosen, columns[chosen][fit_idx], c[fit_idx], risk, coverage, delta, method, p_value, grid, selection
    )
