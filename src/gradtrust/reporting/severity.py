"""Accuracy and trust scores per corruption severity: the tables of a corruption benchmark (CIFAR-10-C's protocol,
Hendrycks & Dietterich 2019: every corruption at severities 1–5 beside the clean test set).

For each model, a severity's cell is the mean over the corruptions at that severity of the per-run value
(accuracy, or a trust score's AUAC or AUROC as :mod:`gradtrust.reporting.results` computes it per run); the
``clean`` column is the model's one run without a corruption. Runs without a severity in their manifest's dataset
description take part only as that clean column. Pure NumPy/pandas over the evaluated runs: no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gradtrust.catalogue import display_name, order_methods
from gradtrust.reporting.datasets import dataset_description, dataset_fields
from gradtrust.reporting.results import RunResult

__all__ = [
    "SEVERITY_LEGEND",
    "SEVERITY_METRICS",
    "severity_frame",
    "severity_markdown",
    "severity_of",
    "severity_tables",
]

#: The trust-score metrics tabulated per severity: the paper's AUAC and misclassification AUROC.
SEVERITY_METRICS = ("auac", "auroc")
_METRIC_TITLES = {
    "auac": "AUAC (area under the accuracy-vs-percentile curve, ×100 as in the main table)",
    "auroc": "AUROC ×100 (correct vs. wrong predictions told apart by the score)",
}
#: How each quantity is printed: accuracy and AUROC are fractions, AUAC is already ×100 (gradtrust.evaluation).
_SCALE = {"accuracy": 100.0, "auac": 1.0, "auroc": 100.0}


def severity_of(result: RunResult) -> int | None:
    """The run's corruption severity (an integer ≥ 1), ``0`` for a run without a corruption, ``None`` when unknown."""
    fields = dataset_fields(dataset_description(result.run.manifest))
    if fields.get("corruption") in (None, "", "clean", "none"):
        return 0
    try:
        level = int(fields.get("severity"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return level if level >= 1 else None


def severity_frame(results: Sequence[RunResult]):
    """One row per (model, severity column, quantity, method): ``value`` (the mean over the corruptions; accuracy and
    AUROC in [0, 1], AUAC ×100, as :mod:`~gradtrust.reporting.results` gives them) and ``runs`` (how many runs it averages).
    ``None`` when no run has a severity. Columns: model, severity (``"clean"``, ``"1"`` …), quantity
    (``accuracy`` or a metric of :data:`SEVERITY_METRICS`), method (empty for accuracy), value, runs."""
    import pandas as pd

    levels = [(r, severity_of(r)) for r in results]
    models = list(dict.fromkeys(r.run.model for r, s in levels if s is not None and s >= 1))
    if not models:
        return None
    rows: list[dict[str, Any]] = []
    for model in models:
        mine = [(r, s) for r, s in levels if r.run.model == model and s is not None]
        clean = [r for r, s in mine if s == 0]
        columns: dict[str, list[RunResult]] = {"clean": clean if len(clean) == 1 else []}
        for level in sorted({s for _, s in mine if s >= 1}):
            columns[str(level)] = [r for r, s in mine if s == level]
        methods = order_methods(m for r, _ in mine for m in r.run.methods)
        for column, runs in columns.items():
            rows.append(_row(model, column, "accuracy", "", [r.accuracy for r in runs]))
            for metric in SEVERITY_METRICS:
                for method in methods:
                    values = [r.value(method, metric) for r in runs if method in r.methods]
                    rows.append(_row(model, column, metric, method, values))
    return pd.DataFrame(rows, columns=["model", "severity", "quantity", "method", "value", "runs"])


def _row(model: str, column: str, quantity: str, method: str, values: list[float]) -> dict[str, Any]:
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    return {
        "model": model,
        "severity": column,
        "quantity": quantity,
        "method": method,
        "value": float(np.mean(finite)) if finite else float("nan"),
        "runs": len(finite),
    }


def _cell(value: float, quantity: str) -> str:
    return "n/a" if not np.isfinite(value) else f"{_SCALE[quantity] * value:.2f}"


SEVERITY_LEGEND = (
    "Each severity's cell: the mean over the corruptions at that severity; `clean`: the model's run "
    "without a corruption. n/a: no run (or the score is undefined on every run)."
)


def severity_tables(frame) -> list[tuple[str, list[str], list[list[str]]]]:
    """The tables of :func:`severity_frame` as (title, header, rows) with formatted cells: accuracy per model,
    then each metric of :data:`SEVERITY_METRICS` per model, methods as rows."""
    columns = list(dict.fromkeys(frame["severity"]))
    names = ["clean" if c == "clean" else f"severity {c}" for c in columns]

    def cells(part, quantity: str) -> list[str]:
        by = dict(zip(part["severity"], part["value"], strict=True))
        return [_cell(by.get(c, float("nan")), quantity) for c in columns]

    accuracy = frame[frame["quantity"] == "accuracy"]
    tables = [
        (
            "Accuracy (%)",
            ["model", *names],
            [[str(model), *cells(part, "accuracy")] for model, part in accuracy.groupby("model", sort=False)],
        )
    ]
    for metric in SEVERITY_METRICS:
        for model, part in frame[frame["quantity"] == metric].groupby("model", sort=False):
            rows = [[display_name(method), *cells(r, metric)] for method, r in part.groupby("method", sort=False)]
            tables.append((f"{_METRIC_TITLES[metric]}: {model}", ["method", *names], rows))
    return tables


def severity_markdown(frame) -> str:
    """:func:`severity_tables` as Markdown under a title and the legend."""
    lines = ["# Accuracy and trust scores per corruption severity", "", SEVERITY_LEGEND]
    for title, header, rows in severity_tables(frame):
        lines += ["", f"## {title}", "", "| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
