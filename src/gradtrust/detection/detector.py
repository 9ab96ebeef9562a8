"""The detector ``H`` of Purview: tells features of known (trained-distribution) data from challenging data.

``Detector(kind="mlp")`` is the paper's small multi-layer perceptron, ``kind="logistic"`` logistic
regression, each behind a standardisation step (a scikit-learn ``Pipeline``: ``StandardScaler`` on
``log(ε + d)``, then the classifier). The gradient features span many orders of magnitude from layer to
layer, so they are log-transformed first (``log1p`` of non-negative values would flatten the small ones).
Source: Lee, Prabhushankar & AlRegib, IEEE Access 2023; ``docs/detection.md``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradtrust.errors import InputError, UnknownNameError

__all__ = ["DETECTOR_KINDS", "Detector"]

DETECTOR_KINDS = ("mlp", "logistic")
_EPS = 1e-30


def _as_features(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise InputError(f"{name} must be a 2-D array (samples, features), got shape {a.shape}.")
    if a.shape[0] == 0:
        raise InputError(f"{name} is empty: at least one sample is needed.")
    if not np.isfinite(a).all():
        raise InputError(f"{name} holds NaN or infinite values; drop those samples first.")
    return a


class Detector:
    """A scikit-learn-style detector: ``fit(known, challenge)`` then ``score(x)`` (higher = more like known).

    Args:
        kind: ``"mlp"`` (hidden layers ``hidden``, Adam, early stopping off, ``max_iter`` epochs) or
            ``"logistic"`` (L2-regularised logistic regression, ``C``).
        log_features: take ``log(1e-30 + d)`` of the (non-negative) features before standardising.
        seed: the random state of the classifier (weight initialisation, shuffling).
    """

    def __init__(self, kind: str = "mlp", *, hidden: tuple[int, ...] = (64, 32), max_iter: int = 300,
                 C: float = 1.0, log_features: bool = True, seed: int = 0):
        if kind not in DETECTOR_KINDS:
            raise UnknownNameError(f"detector kind {kind!r} is unknown; use one of {', '.join(DETECTOR_KINDS)}.")
        self.kind = kind
        self.hidden = tuple(hidden)
        self.max_iter = int(max_iter)
        self.C = float(C)
        self.log_features = bool(log_features)
        self.seed = int(seed)
        self.pipeline_: Any = None
        self.n_features_: int | None = None

    def _transform(self, a: np.ndarray) -> np.ndarray:
        return np.log(_EPS + np.maximum(a, 0.0)) if self.log_features else a

    def _build(self) -> Any:
        from sklearn.linear_model import LogisticRegression
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if self.kind == "logistic":
            clf = LogisticRegression(C=self.C, max_iter=max(self.max_iter, 1000), random_state=self.seed)
        else:
            clf = MLPClassifier(hidden_layer_sizes=self.hidden, max_iter=self.max_iter, alpha=1e-3,
                                random_state=self.seed, early_stopping=False)
        return make_pipeline(StandardScaler(), clf)

    def fit(self, known: Any, challenge: Any) -> Detector:
        """Fit on features of known data (label 1) and of challenging data (label 0); returns ``self``."""
        a = _as_features(known, "known features")
        b = _as_features(challenge, "challenge features")
        if a.shape[1] != b.shape[1]:
            raise InputError(f"known features have {a.shape[1]} columns but challenge features {b.shape[1]}; "
                             "compute both with the same model, layers and grouping.")
        x = self._transform(np.concatenate([a, b]))
        y = np.concatenate([np.ones(len(a), dtype=np.int64), np.zeros(len(b), dtype=np.int64)])
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        pipeline = self._build()
        with warnings.catch_warnings():  # a fixed epoch budget is the design here, not a failure
            warnings.simplefilter("ignore", ConvergenceWarning)
            pipeline.fit(x, y)
        self.pipeline_ = pipeline
        self.n_features_ = a.shape[1]
        return self

    def score(self, features: Any) -> np.ndarray:
        """``P(known | d)`` per sample (B,) float64: higher = more like the known data."""
        if self.pipeline_ is None:
            raise InputError("this Detector is not fitted yet: call fit(known, challenge) first.")
        a = _as_features(features, "features")
        if a.shape[1] != self.n_features_:
            raise InputError(f"features have {a.shape[1]} columns; the detector was fitted on {self.n_features_}.")
        proba = self.pipeline_.predict_proba(self._transform(a))
        return proba[:, list(self.pipeline_.classes_).index(1)].astype(np.float64)

    def __repr__(self) -> str:
        return f"Detector(kind={self.kind!r}, seed={self.seed}, fitted={self.pipeline_ is not None})"
