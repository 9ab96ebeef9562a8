"""Calibration: how far a classifier's confidence matches how often it is right.

Plain functions on NumPy arrays (torch tensors and lists are converted), in the style of torchmetrics;
formulas, sources and conventions are in ``docs/calibration.md``. Notation: ``N`` samples, ``C`` classes,
``p_i ∈ Δ^C`` the predicted probabilities of sample ``i``, ``y_i`` its label, ``ŷ_i = argmax_c p_ic`` (the
first maximum), ``conf_i = max_c p_ic`` (top-label confidence), ``c_i = 1[ŷ_i = y_i]``.

Equal-width binning (every binned metric here): ``B`` bins with edges ``e_k = k / B`` (the float64 value of
the quotient), bin ``b = [e_b, e_{b+1})``; a confidence of exactly 1.0 goes to the last bin. Empty bins
add nothing.

Each function's docstring gives its formula and source. :func:`fit_temperature` / :class:`TemperatureScaling`
fit on a **held-out** split (never the test split).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from gradtrust.errors import InputError
from gradtrust.estimator import Estimator, as_array, as_matrix, check_int, check_number

__all__ = [
    "DEFAULT_BINS",
    "ReliabilityDiagram",
    "TemperatureScaling",
    "adaptive_calibration_error",
    "brier_score",
    "classwise_calibration_error",
    "expected_calibration_error",
    "fit_temperature",
    "negative_log_likelihood",
    "reliability_diagram",
    "softmax",
    "top_label",
]

DEFAULT_BINS = 15
_T_RANGE = (1e-3, 1e3)  # the fitted temperature is clipped to this range (1/T is searched in its inverse)


def _probabilities(x: Any, name: str = "probs") -> np.ndarray:
    p = as_matrix(x, name, "classes")
    if np.any(p < 0) or np.any(p > 1):
        raise InputError(f"`{name}` must be probabilities in [0, 1]; got values in [{p.min():g}, {p.max():g}] "
                         "(pass softmax(logits), e.g. gradtrust.evaluation.softmax).")
    sums = p.sum(axis=1)
    if not np.allclose(sums, 1.0, rtol=0, atol=1e-4):
        worst = int(np.argmax(np.abs(sums - 1.0)))
        raise InputError(f"each row of `{name}` must sum to 1; row {worst} sums to {sums[worst]:.6g}.")
    return p


def _labels(x: Any, n: int, num_classes: int, name: str = "labels") -> np.ndarray:
    a = as_array(x, name)
    if a.ndim != 1:
        raise InputError(f"`{name}` must be 1-D (one class index per sample); got shape {a.shape}.")
    if a.shape[0] != n:
        raise InputError(f"`{name}` has {a.shape[0]} entries for {n} samples: one label per sample is needed.")
    if a.dtype.kind not in "iub":
        if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        else:
            raise InputError(f"`{name}` must hold integer class indices; got dtype {a.dtype}.")
    a = a.astype(np.int64, copy=False)
    bad = (a < 0) | (a >= num_classes)
    if np.any(bad):
        raise InputError(f"`{name}` must be class indices in [0, {num_classes}); found {int(bad.sum())} outside, "
                         f"e.g. {a[bad][:5].tolist()} (drop unlabelled samples, label < 0, first).")
    return a


def _confidence_correct(confidences: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    c = as_array(confidences, "confidences")
    k = as_array(correct, "correct")
    if c.ndim != 1 or k.ndim != 1:
        raise InputError(f"`confidences` and `correct` must be 1-D; got shapes {c.shape} and {k.shape}.")
    if c.shape[0] != k.shape[0]:
        raise InputError(f"`confidences` has {c.shape[0]} entries, `correct` {k.shape[0]}: one per sample each.")
    if c.shape[0] == 0:
        raise InputError("no samples (0 confidences): a calibration metric needs at least one.")
    if c.dtype == object or not np.issubdtype(c.dtype, np.number):
        raise InputError(f"`confidences` must hold numbers; got dtype {c.dtype}.")
    c = c.astype(np.float64, copy=False)
    if not np.all(np.isfinite(c)) or np.any(c < 0) or np.any(c > 1):
        raise InputError("`confidences` must be probabilities in [0, 1] (no NaN); drop undefined samples first.")
    if k.dtype != bool:
        if not np.all((k == 0) | (k == 1)):
            raise InputError("`correct` must be booleans or 0/1.")
        k = k.astype(bool)
    return c, k


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """``softmax(z / T)`` row by row in float64, shifted by the row maximum so that it never overflows."""
    if not temperature > 0:
        raise InputError(f"temperature must be > 0, got {temperature!r}.")
    z = as_matrix(logits, "logits", "classes") / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def top_label(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(conf_i, c_i)``: the top-label confidence ``max_c p_ic`` and whether ``argmax_c p_ic`` (the first
    maximum when several classes tie) equals the label."""
    p = _probabilities(probs)
    y = _labels(labels, p.shape[0], p.shape[1])
    return p.max(axis=1), p.argmax(axis=1) == y


def _uniform_bins(confidences: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each confidence: ``b`` with ``k/B`` edges, ``[e_b, e_{b+1})``, 1.0 in the last bin."""
    edges = np.arange(n_bins + 1, dtype=np.float64) / n_bins
    return np.clip(np.searchsorted(edges, confidences, side="right") - 1, 0, n_bins - 1)


def _quantile_edges(confidences: np.ndarray, n_bins: int) -> np.ndarray:
    """Inner edges of equal-mass bins: the sorted confidences at positions ``ceil(k·N/B)``, k = 1…B−1."""
    s = np.sort(confidences)
    n = s.shape[0]
    positions = -(-np.arange(1, n_bins, dtype=np.int64) * n // n_bins)
    return s[np.minimum(positions, n - 1)]


def _binned_error(confidences: np.ndarray, hits: np.ndarray, bins: np.ndarray, n_bins: int) -> float:
    """``Σ_b (|B_b|/N) |mean(hits in b) − mean(conf in b)|`` = ``(1/N) Σ_b |Σ_{i∈b} (hits_i − conf_i)|``."""
    gap = np.bincount(bins, weights=hits.astype(np.float64) - confidences, minlength=n_bins)
    return float(np.abs(gap).sum() / confidences.shape[0])


class ReliabilityDiagram(NamedTuple):
    """Per bin (arrays of length ``n_bins``): edges ``lower``/``upper``, ``counts``, mean ``confidence`` and
    ``accuracy`` (NaN in an empty bin), and the ``ece`` they add up to."""

    lower: np.ndarray
    upper: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    ece: float


def reliability_diagram(confidences: Any, correct: Any, n_bins: int = DEFAULT_BINS,
                        strategy: str = "uniform") -> ReliabilityDiagram:
    """The data of a reliability diagram (DeGroot & Fienberg 1983; Guo et al., ICML 2017).

    ``strategy="uniform"``: equal-width bins ``[k/B, (k+1)/B)`` (1.0 in the last); ``"quantile"``: the
    equal-mass bins of :func:`adaptive_calibration_error` (edges at confidence quantiles, first lower edge
    0, last upper edge 1). ``ece = Σ_b (counts_b / N) |accuracy_b − confidence_b|``.
    """
    conf, hit = _confidence_correct(confidences, correct)
    n_bins = check_int("n_bins", n_bins)
    if strategy == "uniform":
        edges = np.arange(n_bins + 1, dtype=np.float64) / n_bins
        bins = _uniform_bins(conf, n_bins)
    elif strategy == "quantile":
        inner = _quantile_edges(conf, n_bins)
        edges = np.concatenate(([0.0], inner, [1.0]))
        bins = np.searchsorted(inner, conf, side="right")
    else:
        raise InputError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}.")
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(bins, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(bins, weights=hit.astype(np.float64), minlength=n_bins) / count
    return ReliabilityDiagram(edges[:-1], edges[1:], count, mean_conf, accuracy,
                              _binned_error(conf, hit, bins, n_bins))


def expected_calibration_error(confidences: Any, correct: Any, n_bins: int = DEFAULT_BINS) -> float:
    """Expected calibration error (Naeini et al., AAAI 2015; Guo et al., ICML 2017; ``docs/calibration.md``):

        ECE = Σ_b (|B_b| / N) · |acc(B_b) − conf(B_b)|

    over equal-width bins ``[k/B, (k+1)/B)`` of the top-label confidences (1.0 in the last bin), ``B = 15``.
    Take ``confidences, correct`` from :func:`top_label` (or a run's ``softmax`` score and ``correct``).
    """
    conf, hit = _confidence_correct(confidences, correct)
    n_bins = check_int("n_bins", n_bins)
    return _binned_error(conf, hit, _uniform_bins(conf, n_bins), n_bins)


def adaptive_calibration_error(confidences: Any, correct: Any, n_bins: int = DEFAULT_BINS) -> float:
    """Adaptive (equal-mass) ECE (Nixon et al., "Measuring Calibration in Deep Learning", CVPR-W 2019;
    ``docs/calibration.md``):

        aECE = Σ_b (|B_b| / N) · |acc(B_b) − conf(B_b)|

    with inner bin edges ``e_k = s_(⌈k·N/B⌉)`` (``s`` the confidences sorted ascending, 0-based), ``k = 1…B−1``,
    and bin ``b = [e_b, e_{b+1})``: every bin holds ``N/B`` samples when ``B`` divides ``N`` and no two
    confidences tie; tied confidences always share a bin (bins may then be uneven or empty).
    """
    conf, hit = _confidence_correct(confidences, correct)
    n_bins = check_int("n_bins", n_bins)
    bins = np.searchsorted(_quantile_edges(conf, n_bins), conf, side="right")
    return _binned_error(conf, hit, bins, n_bins)


def classwise_calibration_error(probs: Any, labels: Any, n_bins: int = DEFAULT_BINS) -> float:
    """Classwise ECE (Kull et al., NeurIPS 2019; ``docs/calibration.md``):

        cwECE = (1/C) Σ_c Σ_b (|B_cb| / N) · |mean_{i∈B_cb} 1[y_i = c] − mean_{i∈B_cb} p_ic|

    where ``B_cb`` are the samples whose ``p_ic`` falls in the equal-width bin ``b`` (1.0 in the last bin).
    """
    p = _probabilities(probs)
    n, k = p.shape
    y = _labels(labels, n, k)
    n_bins = check_int("n_bins", n_bins)
    onehot = (np.arange(k) == y[:, None]).astype(p.dtype)
    bins = _uniform_bins(p, n_bins) + n_bins * np.arange(k)[None, :]  # one block of bins per class
    gap = np.bincount(bins.ravel(), weights=(onehot - p).ravel(), minlength=n_bins * k)
    return float(np.abs(gap).sum() / (n * k))


def brier_score(probs: Any, labels: Any) -> float:
    """Multi-class Brier score (Brier, Monthly Weather Review 1950; ``docs/calibration.md``):

        BS = (1/N) Σ_i Σ_c (p_ic − 1[y_i = c])²        (0 = perfect, at most 2; lower is better)
    """
    p = _probabilities(probs)
    y = _labels(labels, *p.shape)
    onehot = (np.arange(p.shape[1]) == y[:, None]).astype(p.dtype)
    return float(np.square(p - onehot).sum(axis=1).mean())


def negative_log_likelihood(logits: Any, labels: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels (``docs/calibration.md``), from logits so it stays finite:

        NLL = −(1/N) Σ_i log softmax(z_i / T)_{y_i}
    """
    if not temperature > 0:
        raise InputError(f"temperature must be > 0, got {temperature!r}.")
    z = as_matrix(logits, "logits", "classes")
    y = _labels(labels, *z.shape)
    z = z / float(temperature)
    z = z - z.max(axis=1, keepdims=True)  # log softmax, shifted so that it never overflows
    return float(-(z[np.arange(z.shape[0]), y] - np.log(np.exp(z).sum(axis=1))).mean())


def fit_temperature(logits: Any, labels: Any, *, max_iter: int = 100, tol: float = 1e-10) -> float:
    """Temperature scaling (Guo et al., ICML 2017; ``docs/calibration.md``): ``T = argmin_T NLL(z / T)``.

    Fit it on a **held-out** split (a validation set), never on the split the calibration is then
    measured on. With ``β = 1/T`` the NLL ``(1/N) Σ_i [logsumexp(β z_i) − β z_{i,y_i}]`` is convex in ``β``
    (its second derivative is the mean variance of ``z`` under ``softmax(β z)``), so Newton's method on
    ``β`` with a backtracking line search finds the global minimum; ``T`` is clipped to ``[1e-3, 1e3]``
    (reached when the split is separable and the NLL keeps falling as ``T → 0``).
    """
    z = as_matrix(logits, "logits", "classes")
    y = _labels(labels, *z.shape)
    if z.shape[1] < 2:
        raise InputError("temperature scaling needs at least two classes (with one, every temperature gives "
                         "probability 1).")
    zy = z[np.arange(z.shape[0]), y]
    lo, hi = 1.0 / _T_RANGE[1], 1.0 / _T_RANGE[0]

    def nll(beta: float) -> float:
        s = beta * z
        m = s.max(axis=1)
        return float(np.mean(m + np.log(np.exp(s - m[:, None]).sum(axis=1)) - beta * zy))

    beta, value = 1.0, nll(1.0)
    for _ in range(max_iter):
        p = softmax(z * beta)
        ez = (p * z).sum(axis=1)
        grad = float(np.mean(ez - zy))
        hess = float(np.mean((p * z * z).sum(axis=1) - ez**2))
        step = -grad / hess if hess > 1e-300 else -np.sign(grad) * max(beta, 1.0)
        t = 1.0
        while True:
            cand = float(np.clip(beta + t * step, lo, hi))
            cand_value = nll(cand)
            if cand_value <= value or t < 1e-12:
                break
            t *= 0.5
        done = abs(cand - beta) <= tol * max(1.0, beta) or abs(value - cand_value) <= tol * max(1.0, abs(value))
        if cand_value <= value:
            beta, value = cand, cand_value
        if done:
            break
    return float(1.0 / beta)


class TemperatureScaling(Estimator):
    """A fitted temperature (scikit-learn style): ``TemperatureScaling().fit(val_logits, val_labels)``, then
    ``.predict_proba(test_logits)`` = ``softmax(z / T)``, ``.score_samples(test_logits)`` = its maximum (the
    calibrated confidence, higher = more trustworthy); ``temperature_`` is the fitted ``T``
    (:func:`fit_temperature`, whose ``max_iter`` and ``tol`` are the parameters; Guo et al., ICML 2017)."""

    format_name = "gradtrust.temperature_scaling"
    fitted_attribute = "temperature_"
    fit_call = ".fit(held_out_logits, held_out_labels)"
    saved_by = "fitted temperature (TemperatureScaling.save)"

    def __init__(self, *, max_iter: int = 100, tol: float = 1e-10) -> None:
        self.max_iter, self.tol = max_iter, tol

    def fit(self, logits: Any, labels: Any) -> TemperatureScaling:
        self.temperature_ = fit_temperature(logits, labels, max_iter=check_int("max_iter", self.max_iter),
                                            tol=check_number("tol", self.tol))
        return self

    def predict_proba(self, logits: Any) -> np.ndarray:
        return softmax(logits, self.check_fitted())

    def predict(self, logits: Any) -> np.ndarray:
        """The predicted class, ``argmax_c softmax(z / T)_c`` (the logits' own argmax: T > 0 keeps the order)."""
        return self.predict_proba(logits).argmax(axis=1)

    def score_samples(self, logits: Any) -> np.ndarray:
        """The calibrated confidence ``max_c softmax(z / T)_c`` per sample (N,) float64."""
        return self.predict_proba(logits).max(axis=1)

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"temperature": self.temperature_}, {}

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.temperature_ = float(state["temperature"])
