"""``gradtrust report RESULTS… --out DIR``: one HTML page over score, explain, detect, introspect and GradCON runs
(a section per kind), the score runs' tables and figures; written atomically."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from gradtrust.cli.options import Command, shared

__all__ = ["report_command", "echo_report"]


def echo_report(report, *, print_table: bool = False) -> None:
    """Print a report's problems, warnings, top-2 line and where its files are (problems to stderr)."""
    for p in report.problems:
        click.echo(f"error: {p.source}: {p.message}", err=True)
    for w in report.warnings:
        click.echo(f"WARNING: {w}", err=True)
    if not report.ok:
        return
    others = [f"{len(s.runs)} {k}" for k, s in report.sections.items() if k not in ("score", "gradcon") and s.runs]
    if others:
        click.echo(f"Other runs in the report: {', '.join(others)}")
    gradcon = report.sections.get("gradcon")
    if gradcon is not None and gradcon.runs:
        if print_table:
            click.echo(report.files["anomaly_md"].read_text(encoding="utf-8"))
        click.echo(f"{len(gradcon.runs)} GradCON anomaly run(s): anomaly.md, anomaly.csv, figures/anomaly/")
    if report.results:
        if print_table:
            click.echo(report.table_markdown)
        for line in report.summary_lines[:2]:
            click.echo(line)
        click.echo(f"Report of {len(report.results)} run(s) written to {report.out_dir} ({report.elapsed_s:.1f} s): "
                   "table.md, table.csv, selective.md, selective.csv, summary.md, calibration.md, figures/, "
                   "report.json")
    click.echo(f"HTML page: {report.files['html'].resolve()}")


@click.command("report", cls=Command)
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--confidence", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.95,
              show_default=True, help="Level of the bootstrap confidence intervals.")
@click.option("--figures/--no-figures", default=True, show_default=True, help="Draw the PNG figures.")
@click.option("--max-images", type=click.IntRange(min=1), default=16, show_default=True,
              help="Most images in each run's qualitative grid.")
@click.option("--title", default="GradTrust report", show_default=True, help="Title of the HTML page.")
@click.option("--print-table", is_flag=True, help="Print the Markdown table to stdout.")
@click.option("--allow-outside-images", is_flag=True,
              help="Show sample images whose paths lie outside the runs' data roots (absolute elsewhere, or with "
                   "..). Off by default: results from someone else could name any file; the page lists those left "
                   "out.")
@shared("out_dir", required=True)
@shared("resamples", "seed", "force")
def report_command(results, confidence, figures, max_images, title, print_table, allow_outside_images, out_dir,
                   resamples, seed, force):
    """Report on runs of every kind: RESULTS are run folders written by gradtrust score, explain, detect,
    introspect or gradcon score, score parquet files, or folders holding runs (searched a few levels deep).
    Each run's kind comes from its manifest.json; the page has one section per kind and lists failed files.

    Writes into --out: table.md / table.csv (the paper's AUAC / AUFC table, rows by accuracy, top two of
    each row in bold, random and oracle references), selective.md / selective.csv (AURC, AUGRC, AUROC,
    FPR@95 with bootstrap CIs), summary.md (winner of each cell, GradTrust's top-2 count), figures/*.png
    and index.html (one self-contained page), report.json (the inputs and what was read). The folder is
    written whole or not at all. An unreadable input is reported and skipped; the exit code is 1 when no run
    could be read, 2 when the report cannot be written (or --out holds another report, without --force).
    """
    from gradtrust.reporting.report import build_report

    report = build_report(results, out_dir, resamples=resamples, confidence=confidence, seed=seed,
                          figures=figures, max_images=max_images, title=title, force=force,
                          allow_outside_images=allow_outside_images)
    echo_report(report, print_table=print_table)
    if not report.ok:
        click.echo(f"error: none of the {len(results)} input(s) could be read as a run; "
                   f"nothing to report (the page {report.files['html']} lists why).", err=True)
        sys.exit(1)
