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
from gradtrust.estimator import Estimator, as_matrix, check_int, check_number

__all__ = ["DETECTOR_KINDS", "Detector"]

DETECTOR_KINDS = ("mlp", "logistic")
_EPS = 1e-30


class Detector(Estimator):
    """A scikit-learn-style detector: ``fit(known, challenge)`` then ``score_samples(x)`` (higher = more like known).

    ``kind``: ``"mlp"`` (hidden layers ``hidden``, Adam, early stopping off, ``max_iter`` epochs) or ``"logistic"``
    (L2-regularised logistic regression, ``C``); ``log_features``: take ``log(1e-30 + d)`` of the (non-negative)
    features before standardising; ``seed``: the classifier's random state (initialisation, shuffling).
    """

    format_name = "gradtrust.detector"
    fitted_attribute = "pipeline_"
    fit_call = "fit(known, challenge)"
    saved_by = "fitted detector (Detector.save)"

    def __init__(self, kind: str = "mlp", *, hidden: tuple[int, ...] = (64, 32), max_iter: int = 300,
                 C: float = 1.0, log_features: bool = True, seed: int = 0):
        self.kind, self.hidden, self.max_iter, self.C = kind, hidden, max_iter, C
        self.log_features, self.seed = log_features, seed

    def _transform(self, a: np.ndarray) -> np.ndarray:
        return np.log(_EPS + np.maximum(a, 0.0)) if self.log_features else a

    def _build(self) -> Any:
        """The unfitted pipeline, after checking the parameters."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if self.kind not in DETECTOR_KINDS:
            raise UnknownNameError(f"detector kind {self.kind!r} is unknown; use one of {', '.join(DETECTOR_KINDS)}.")
        hidden = tuple(check_int("hidden layer width", h) for h in self.hidden)
        max_iter, seed = check_int("max_iter", self.max_iter), check_int("seed", self.seed, minimum=0)
        if self.kind == "logistic":
            clf = LogisticRegression(C=check_number("C", self.C, strict=True), max_iter=max(max_iter, 1000),
                                     random_state=seed)
        else:
            clf = MLPClassifier(hidden_layer_sizes=hidden, max_iter=max_iter, alpha=1e-3, random_state=seed,
                                early_stopping=False)
        return make_pipeline(StandardScaler(), clf)

    def fit(self, known: Any, challenge: Any) -> Detector:
        """Fit on features of known data (label 1) and of challenging data (label 0); returns ``self``."""
        pipeline = self._build()
        a = as_matrix(known, "known features")
        b = as_matrix(challenge, "challenge features")
        if a.shape[1] != b.shape[1]:
            raise InputError(f"known features have {a.shape[1]} columns but challenge features {b.shape[1]}; "
                             "compute both with the same model, layers and grouping.")
        x = self._transform(np.concatenate([a, b]))
        y = np.concatenate([np.ones(len(a), dtype=np.int64), np.zeros(len(b), dtype=np.int64)])
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():  # a fixed epoch budget is the design here, not a failure
            warnings.simplefilter("ignore", ConvergenceWarning)
            pipeline.fit(x, y)
        self.pipeline_ = pipeline
        self.n_features_ = a.shape[1]
        return self

    def score_samples(self, features: Any) -> np.ndarray:
        """``P(known | d)`` per sample (B,) float64: higher = more like the known data."""
        pipeline = self.check_fitted()
        a = as_matrix(features, "features")
        if a.shape[1] != self.n_features_:
            raise InputError(f"features have {a.shape[1]} columns; the detector was fitted on {self.n_features_}.")
        proba = pipeline.predict_proba(self._transform(a))
        return proba[:, list(pipeline.classes_).index(1)].astype(np.float64)

    score = score_samples  # the old name, kept for one release

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Each step's public fitted attributes: arrays (and lists of arrays, as ``<key>.<j>``) to the weights,
        the rest to JSON. No pickle: ``load`` rebuilds the steps from the parameters and sets them back."""
        state: dict[str, Any] = {"n_features": self.n_features_}
        arrays: dict[str, np.ndarray] = {}
        for i, (_, step) in enumerate(self.pipeline_.steps):
            for name, value in ((n, v) for n, v in vars(step).items() if n.endswith("_") and n[0] != "_"):
                if isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value):
                    arrays.update({f"{i}.{name}.{j}": v for j, v in enumerate(value)})
                    value = {"arrays": len(value)}
                elif isinstance(value, np.ndarray):
                    arrays[f"{i}.{name}"] = value
                    continue
                state[f"{i}.{name}"] = value.item() if isinstance(value, np.generic) else value
        return state, arrays

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.pipeline_, self.n_features_ = self._build(), int(state.pop("n_features"))
        for key, value in [*state.items(), *((k, v) for k, v in arrays.items() if k.count(".") == 1)]:
            if isinstance(value, dict):  # a list of arrays
                value = [arrays[f"{key}.{j}"] for j in range(value["arrays"])]
            i, name = key.split(".", 1)
            setattr(self.pipeline_.steps[int(i)][1], name, value)
