"""The old name of :mod:`gradtrust.runs` (kept for one release): ``gradtrust.runner.score_dataset`` is
:func:`gradtrust.runs.score_dataset`."""

from gradtrust.runs import RunConflictError, RunSummary, score_dataset

__all__ = ["RunConflictError", "RunSummary", "score_dataset"]
