"""One run engine: a run folder (identity, conflicts, ``--force``, resume, atomic fsynced writes, a manifest
with ``kind`` and ``format``), chunks, ``torchrun`` sharding with failure broadcast, and the task protocol
every dataset-scale command implements (:mod:`gradtrust.runs.task`).

``score_dataset(model, dataset, out)`` scores a whole dataset (``gradtrust score``: :mod:`gradtrust.cli.score`).
"""

from gradtrust.runs.folder import RUN_FILE, RunConflictError, RunFolder
from gradtrust.runs.score import LOGITS_FILE, MANIFEST_FILE, SCORES_FILE, RunSummary, ScoreTask, score_dataset
from gradtrust.runs.task import DEFAULT_CHUNK_SAMPLES, PeerError, Task, default_chunk_size, run_task

__all__ = ["DEFAULT_CHUNK_SAMPLES", "LOGITS_FILE", "MANIFEST_FILE", "RUN_FILE", "SCORES_FILE", "PeerError",
           "RunConflictError", "RunFolder", "RunSummary", "ScoreTask", "Task", "default_chunk_size", "run_task",
           "score_dataset"]
