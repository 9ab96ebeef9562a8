"""Scoring a whole dataset: chunked atomic Parquet writes, resume, manifest, ``torch.distributed`` sharding.

>>> from gradtrust.models import load_model
>>> from gradtrust.data.open import open_dataset
>>> from gradtrust.runner import score_dataset
>>> model = load_model("digits:digits_cnn", "DEFAULT")
>>> summary = score_dataset(model, open_dataset("digits", model), "runs/cnn")   # doctest: +SKIP
>>> summary.scores_path, summary.accuracy                                         # doctest: +SKIP

The command line is ``gradtrust score`` (:mod:`gradtrust.cli.score`).
"""

from gradtrust.runner.finish import LOGITS_FILE, MANIFEST_FILE, RUN_FILE, SCORES_FILE, RunSummary
from gradtrust.runner.run import DEFAULT_CHUNK_SAMPLES, PeerError, RunConflictError, default_chunk_size, score_dataset

__all__ = ["DEFAULT_CHUNK_SAMPLES", "LOGITS_FILE", "MANIFEST_FILE", "RUN_FILE", "SCORES_FILE", "PeerError", "RunConflictError",
           "RunSummary", "default_chunk_size", "score_dataset"]
