"""Reporting: the tables, figures and one HTML page of GradTrust runs of every kind, built from their
run folders without re-running a network. :func:`build_report` is what ``gradtrust report`` calls; see
``docs/reporting.md`` for the output files and how to read them.
"""

from gradtrust.reporting.report import build_report
from gradtrust.reporting.results import Report
from gradtrust.reporting.runs import load_run

__all__ = ["Report", "build_report", "load_run"]
