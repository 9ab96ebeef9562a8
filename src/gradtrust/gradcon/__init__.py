"""GradCON: one-class anomaly detection with gradient constraints (Kwon et al., ECCV 2020; ``docs/gradcon.md``).

* :class:`GradCON` (:mod:`.estimator`): ``fit(inlier_images)``, ``score(images)`` (higher = more normal),
  ``save``/``load``.
* :class:`GradConAE` (:mod:`.model`): the convolutional autoencoder.
* :func:`per_sample_terms` (:mod:`.gradients`): batched per-sample reconstruction errors and decoder-gradient
  cosines; :func:`per_sample_terms_loop` is its per-image reference.

Names are imported on first use, so ``gradtrust gradcon --help`` does not import torch. The run folder's
format and reader live below this package (:mod:`gradtrust.anomaly_runs`): the report never imports it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "GradCON": "gradtrust.gradcon.estimator",
    "GradConScores": "gradtrust.gradcon.estimator",
    "per_sample_terms": "gradtrust.gradcon.gradients",
    "per_sample_terms_loop": "gradtrust.gradcon.gradients",
    "WORKING_SIZE": "gradtrust.gradcon.model",
    "GradConAE": "gradtrust.gradcon.model",
    "to_working_size": "gradtrust.gradcon.model",
}

__all__ = ["WORKING_SIZE", "GradCON", "GradConAE", "GradConScores", "per_sample_terms", "per_sample_terms_loop",
           "to_working_size"]

if TYPE_CHECKING:  # pragma: no cover
    from gradtrust.gradcon.estimator import GradCON, GradConScores
    from gradtrust.gradcon.gradients import per_sample_terms, per_sample_terms_loop
    from gradtrust.gradcon.model import WORKING_SIZE, GradConAE, to_working_size


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gradtrust.gradcon' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
