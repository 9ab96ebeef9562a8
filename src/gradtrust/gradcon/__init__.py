"""GradCON: one-class anomaly detection with gradient constraints (Kwon et al., ECCV 2020; ``docs/gradcon.md``).

* :class:`GradCON` (:mod:`.estimator`): ``fit(inlier_images)``, ``score(images)`` (higher = more normal),
  ``save``/``load``.
* :class:`GradConAE` (:mod:`.model`): the convolutional autoencoder.
* :func:`per_sample_terms` (:mod:`.gradients`): batched per-sample reconstruction errors and decoder-gradient
  cosines; :func:`per_sample_terms_loop` is its per-image reference.

The run folder's format and reader live below this package (:mod:`gradtrust.anomaly_runs`): the report
never imports it.
"""

from gradtrust.gradcon.estimator import GradCON, GradConScores
from gradtrust.gradcon.gradients import per_sample_terms, per_sample_terms_loop
from gradtrust.gradcon.model import WORKING_SIZE, GradConAE, to_working_size

__all__ = ["WORKING_SIZE", "GradCON", "GradConAE", "GradConScores", "per_sample_terms", "per_sample_terms_loop",
           "to_working_size"]
