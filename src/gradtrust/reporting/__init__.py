"""Reporting: the paper's table, the selective-classification table, figures and an HTML page, built from
score runs (``scores.parquet`` + ``manifest.json``). Never re-runs a network.

* :func:`build_report` (:mod:`.report`): everything at once; what ``gradtrust report`` calls.
* :func:`load_runs` / :func:`load_run` (:mod:`.runs`): reading and validating runs.
* :func:`evaluate_run`, :func:`group_runs`, :func:`summarise` (:mod:`.results`: the numbers) and the table
  builders (:mod:`.tables`: their rendering).
* The figures (:mod:`.figures`) and the page (:mod:`.html`).

See ``docs/reporting.md`` for the output files and how to read them.
"""

from gradtrust.reporting.report import build_report
from gradtrust.reporting.results import (
    Group,
    Report,
    RunResult,
    Summary,
    evaluate_run,
    group_runs,
    summarise,
)
from gradtrust.reporting.runs import LoadProblem, Run, load_run, load_runs

__all__ = [
    "Group",
    "LoadProblem",
    "Report",
    "Run",
    "RunResult",
    "Summary",
    "build_report",
    "evaluate_run",
    "group_runs",
    "load_run",
    "load_runs",
    "summarise",
]
