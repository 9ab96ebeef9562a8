"""The explanation-evaluation part of the explain section: ``gradtrust explain --evaluate`` wrote
``evaluation_summary.csv`` (per map and metric: mean, bootstrap CI, paired difference to the random map) and
``evaluation.parquet`` (per sample and map, with the deletion/insertion curves); this renders one table per run,
a row per map, and a figure of the mean curves (``docs/explanations.md``). Nothing is re-run; no torch."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

SUMMARY_FILE = "evaluation_summary.csv"
EVALUATION_FILE = "evaluation.parquet"
#: (metric, header, better) in table order
COLUMNS = (
    ("deletion_auc", "deletion AUC", "↓"),
    ("insertion_auc", "insertion AUC", "↑"),
    ("average_drop", "Average Drop %", "↓"),
    ("increase_in_confidence", "Increase in Conf. %", "↑"),
    ("road_morf", "ROAD MoRF", "↓"),
    ("road_lerf", "ROAD LeRF", "↑"),
    ("variance_explained", "V[E(y|S)]", ""),
    ("variance_remaining", "E[V(y|S)]", ""),
)


def read_summary(folder: Path) -> Any:
    """The run's ``evaluation_summary.csv`` as a DataFrame, or None when it was not evaluated."""
    import pandas as pd

    path = folder / SUMMARY_FILE
    return pd.read_csv(path) if path.is_file() else None


def _cell(row: Any, metric: str) -> str:
    """``mean [low, high]``: percentages with 1 decimal, the rest with 3 decimals."""
    if row is None or not np.isfinite(row["mean"]):
        return "—"
    digits = 1 if metric in ("average_drop", "increase_in_confidence") else 3
    text = f"{row['mean']:.{digits}f}"
    if np.isfinite(row["ci_low"]):
        text += f" <small>[{row['ci_low']:.{digits}f}, {row['ci_high']:.{digits}f}]</small>"
    return text


def summary_table(summary: Any) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per map (baselines last, in italics), each metric ``mean [CI]``; the deletion AUC's
    paired difference to the random map with its CI in its own column."""
    present = [c for c in COLUMNS if c[0] in set(summary["metric"])]
    header = ["map"] + [f"{h} {b}".strip() for _, h, b in present]
    if "deletion_auc" in set(summary["metric"]) and "vs_random" in summary.columns:
        header.insert(2, "deletion − random")
    rows = []
    methods = list(dict.fromkeys(summary["method"]))
    for method in [m for m in methods if m not in ("random", "centre")] + [
        m for m in methods if m in ("random", "centre")
    ]:
        part = summary[summary["method"] == method].set_index("metric")
        name = html.escape(method)
        row = [f"<em>{name}</em>" if method in ("random", "centre") else name]
        for metric, _, _ in present:
            row.append(_cell(part.loc[metric] if metric in part.index else None, metric))
        if header[2:3] == ["deletion − random"]:
            d = part.loc["deletion_auc"] if "deletion_auc" in part.index else None
            diff = (
                "—"
                if d is None or not np.isfinite(d["vs_random"])
                else (f"{d['vs_random']:+.3f} <small>[{d['vs_random_low']:+.3f}, {d['vs_random_high']:+.3f}]</small>")
            )
            row.insert(2, diff)
        rows.append(row)
    return header, rows


def curves_figure(folder: Path, path: Path) -> Path | None:
    """Mean deletion and insertion curves per map (x: fraction of the pixels changed) into ``path``."""
    import pyarrow.parquet as pq

    from gradtrust.reporting.figures import new_figure, save_png

    source = folder / EVALUATION_FILE
    if not source.is_file():
        return None
    table = pq.read_table(source).to_pandas()
    kinds = [k for k in ("deletion", "insertion") if f"{k}_curve" in table.columns]
    if not kinds:
        return None
    fig = new_figure(4.2 * len(kinds), 3.2)
    axes = np.atleast_1d(fig.subplots(1, len(kinds)))
    for ax, kind in zip(axes, kinds, strict=True):
        for method, part in table.groupby("method", sort=False):
            curve = np.stack(part[f"{kind}_curve"].to_numpy()).mean(0)
            style = {"linestyle": ":", "color": "0.4"} if method in ("random", "centre") else {}
            if method == "centre":
                style["linestyle"] = "--"
            ax.plot(np.linspace(0, 1, curve.size), curve, label=str(method), linewidth=1.2, **style)
        ax.set_xlabel(
            "fraction of pixels "
            + ("removed (most relevant first)" if kind == "deletion" else "inserted into the blurred image"),
            fontsize=7.5,
        )
        ax.set_ylabel("mean P(target)", fontsize=7.5)
        ax.set_title(f"{kind} ({'lower' if kind == 'deletion' else 'higher'} area = better map)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_ylim(0, 1.02)
    axes[-1].legend(fontsize=6.5, frameon=False)
    fig.tight_layout()
    return save_png(fig, path)


def evaluation_html(name: str, summary: Any, figure: Path | None) -> str:
    """One run's evaluation table (and curves figure, as a collapsible detail)."""
    from gradtrust.reporting.html import figure_details, table_html

    header, rows = summary_table(summary)
    parts = [f"<h3>Judging the maps by masking: {html.escape(name)}</h3>", table_html(header, rows, "evaluation")]
    if figure is not None:
        parts.append(figure_details(f"{name}: deletion and insertion curves", figure, f"{name} curves"))
    return "\n".join(parts)
