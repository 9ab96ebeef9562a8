"""Detecting challenging inputs (adversarial, corrupted, out-of-distribution) from gradient features.

- :func:`gradient_features` (:mod:`.features`): Purview's per-sample ``‖∂J/∂θ_j‖²`` feature vectors.
- :class:`Detector` (:mod:`.detector`): the detector ``H`` fitted on known vs challenging features.
- :mod:`.challenges`: challenge sets (torchattacks attacks, corruptions, OOD sets).
- :mod:`.mahalanobis`: the Mahalanobis baseline on penultimate features.
- :mod:`.experiment`: seeded splits, features, evaluation tables (``gradtrust detect``).

See ``docs/detection.md``.
"""

from gradtrust.detection.detector import DETECTOR_KINDS, Detector
from gradtrust.detection.features import FeatureLayout, feature_layout, gradient_features

__all__ = ["DETECTOR_KINDS", "Detector", "FeatureLayout", "feature_layout", "gradient_features"]
