"""Reporting: the tables, figures and one HTML page of GradTrust runs of every kind, built from their
run folders without re-running a network. :func:`build_report` is what ``gradtrust report`` calls; see
``docs/reporting.md`` for the output files and how to read them.
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
