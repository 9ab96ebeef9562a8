"""The Mahalanobis baseline: class-conditional Gaussians with one shared covariance on penultimate features.

Fitted on features ``h`` of known data with labels ``y``: class means ``μ_c``, shared covariance
``Σ = (1/N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ``; the score of a sample is

    s(h) = −min_c (h − μ_c)ᵀ Σ⁻¹ (h − μ_c)        (higher = more like the known data)

Lee, Lee, Lee & Shin, "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
Adversarial Attacks", NeurIPS 2018, without input pre-processing (``eps = 0``) and on the penultimate layer
only. ``pytorch_ood.detector.Mahalanobis`` (0.4) computes the same ranking: its covariance is the
un-normalised ``N·Σ`` (+ a 1e-6 ridge) and its ``predict_features`` returns ``½ min_c (h − μ_c)ᵀ (NΣ)⁻¹
(h − μ_c) = −s / (2N)``, a positive multiple of ``−s`` (no ranking metric changes; the tests compare the two).
``Σ⁻¹`` is the pseudo-inverse here, so that collinear features (e.g. dead ReLUs) do not break the fit.
See ``docs/detection.md``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradtrust.errors import InputError
from gradtrust.estimator import Estimator, as_matrix

__all__ = ["MahalanobisDetector"]


class MahalanobisDetector(Estimator):
    """``fit(features, labels)`` on known data, then ``score_samples(features)`` = −(min class Mahalanobis
    distance) (``score`` is its old name, kept for one release)."""

    format_name = "gradtrust.mahalanobis"
    fitted_attribute = "precision_"
    fit_call = "fit(features, labels)"
    saved_by = "fitted Mahalanobis detector (MahalanobisDetector.save)"

    def fit(self, features: Any, labels: Any) -> MahalanobisDetector:
        h = as_matrix(features, "features")
        y = np.asarray(labels).astype(np.int64)
        if y.shape != (h.shape[0],):
            raise InputError(f"Mahalanobis needs features (N, D) and labels (N,), got {h.shape} and {y.shape}.")
        classes = np.unique(y)
        means = np.stack([h[y == c].mean(0) for c in classes])
        centred = h - means[np.searchsorted(classes, y)]
        cov = centred.T @ centred / h.shape[0]
        self.classes_, self.means_, self.precision_ = classes, means, np.linalg.pinv(cov, hermitian=True)
        return self

    def distances(self, features: Any) -> np.ndarray:
        """``(h − μ_c)ᵀ Σ⁻¹ (h − μ_c)`` for every sample and class, (N, classes)."""
        precision = self.check_fitted()
        h = np.asarray(features, dtype=np.float64)  # NaN features (of NaN logits) score NaN, as before
        if h.ndim != 2 or h.shape[1] != self.means_.shape[1]:
            raise InputError(f"features must be (N, {self.means_.shape[1]}) as in fit, got shape {h.shape}.")
        diff = h[:, None, :] - self.means_[None]  # (N, K, D)
        return np.einsum("nkd,de,nke->nk", diff, precision, diff)

    def score_samples(self, features: Any) -> np.ndarray:
        """``−min_c`` Mahalanobis distance per sample (N,): higher = more like the known data."""
        return -self.distances(features).min(axis=1)

    score = score_samples  # the old name, kept for one release

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {}, {"classes": self.classes_, "means": self.means_, "precision": self.precision_}

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.classes_, self.means_, self.precision_ = arrays["classes"], arrays["means"], arrays["precision"]
