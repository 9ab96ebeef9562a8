"""``gradtrust benchmark``: every model on every dataset (:mod:`gradtrust.benchmark`), then the report."""

from __future__ import annotations

import os
import sys
import time

import click

from gradtrust.benchmark import DEFAULT_OUT, SUITES, run_benchmark
from gradtrust.cli.memory import keep_freed_memory_option
from gradtrust.cli.options import MODEL_SPEC_FORMS, Command, shared


@click.command("benchmark", cls=Command)
@keep_freed_memory_option
@click.option("--models", "models", multiple=True, metavar="SPEC[,SPEC…]",
              help=f"Model specs (repeatable or comma-separated): {MODEL_SPEC_FORMS}. Default: every bundled "
                   "digits network.")
@shared("weights")
@shared("data", multiple=True)
@shared("labels")
@click.option("--methods", default=None, metavar="a,b,c|all",
              help="Comma-separated trust scores; default all that apply to each model.")
@click.option("--suite", type=click.Choice(list(SUITES)), default=None,
              help="A corruption protocol: the clean test split + every corruption x severity (1 + 19 x 5 runs per "
                   "model); --data says where the files are (cifar10:DIR and cifar10c:DIR, or one DIR holding both).")
@click.option("--corruptions", default=None, metavar="a,b", help="With --suite: only these corruptions.")
@click.option("--severities", default=None, metavar="1,2", help="With --suite: only these severities.")
@click.option("--figures/--no-figures", default=None,
              help="Draw the report's figures (default: yes, except with --suite: two per run).")
@shared("out_dir", default=DEFAULT_OUT, show_default=True)
@shared("force")
@shared("batch_size", default=64)
@shared("device", "workers", "resamples", "seed")
def benchmark_command(models, weights, data, labels, methods, suite, corruptions, severities, figures, out_dir, force,
                      batch_size, device, workers, resamples, seed):
    """Score every model on every dataset (runs already complete in --out are skipped), then write the report
    to <out>/report/ and print a short summary: the tally, the headline, each distinct note once with the
    number of runs it concerns, and where the files are (the tables are in the files, not on the console).

    --data: repeatable or comma-separated (default: the digits test split and two corrupted copies). With no
    arguments: every bundled digits network on the clean digits test split and on its
    gaussian_noise and blur copies (severity 1): twelve runs on the CPU in about a minute.

    --suite cifar10c: every model on CIFAR-10's test split and on CIFAR-10-C (19 corruptions x severities 1-5),
    then the report with the accuracy and trust-score tables per severity (severity.md).
    """
    if labels is not None and not os.path.isfile(labels):
        raise click.BadParameter(f"labels file {os.path.abspath(labels)} does not exist.", param_hint="--labels")
    if methods is not None:
        from gradtrust.errors import GradTrustError
        from gradtrust.scores.engine import resolve_methods

        try:
            resolve_methods(methods)
        except GradTrustError as exc:
            raise click.BadParameter(str(exc), param_hint="--methods") from None
    t0 = time.perf_counter()
    draw = suite is None if figures is None else figures
    outcomes, report = run_benchmark(models, data, out_dir, weights=weights, labels=labels, methods=methods,
                                     batch_size=batch_size, device=device, workers=workers, force=force,
                                     resamples=resamples, seed=seed, figures=draw, suite=suite,
                                     corruptions=corruptions, severities=severities)
    scored = sum(o.status == "scored" for o in outcomes)
    skipped = sum(o.status == "skipped" for o in outcomes)
    failed = [o for o in outcomes if o.status == "failed"]
    click.echo("")
    click.echo(f"Benchmark: {len(outcomes)} run(s): {scored} scored, {skipped} skipped (already complete), "
               f"{len(failed)} failed; {time.perf_counter() - t0:.1f} s in all.")
    for o in failed:
        click.echo(f"failed: {o.job.name}: {o.message}", err=True)
    echo_summary(report)
    if suite is not None and "severity_md" in report.files:
        click.echo(f"Per corruption severity: {report.files['severity_md'].resolve()} (accuracy, AUAC, AUROC; + .csv)")
    if failed or not report.ok:
        sys.exit(1)


def distinct_notes(report) -> list[tuple[str, int]]:
    """The report's notes on its score runs (the table's, the warnings, the problems), each once with how many
    runs it was written for: ``[(note without the run's name, count)]`` in order of first appearance."""
    from gradtrust.reporting.tables import paper_cells

    counts: dict[str, int] = {}
    names = sorted((r.name for r in report.results), key=len, reverse=True)
    notes = [f"warning: {w}" for w in report.warnings] + [f"error: {p}" for p in report.problems]
    for group in report.groups:
        notes += paper_cells(group)[2]
    for note in notes:
        for name in names:  # "<run>: …" and "<run>, <method>: …" lose the run's name
            if note.startswith((f"{name}: ", f"{name}, ")):
                note = note[len(name) + 2:]
                break
        counts[note] = counts.get(note, 0) + 1
    return list(counts.items())


def echo_summary(report) -> None:
    """The console's end of ``gradtrust benchmark``: headline, distinct notes with counts, where the files are."""
    if not report.ok:
        for p in report.problems:
            click.echo(f"error: {p}", err=True)
        return
    if report.summary_lines:
        click.echo(report.summary_lines[0])
    notes = distinct_notes(report)
    if notes:
        click.echo(f"{len(notes)} distinct note(s), each with the number of times it occurs (in full: table.md):")
        for note, count in notes:
            click.echo(f"  {count}× {note}")
    click.echo(f"Report written to {report.out_dir}: table.md, selective.md, summary.md, calibration.md (+ .csv), "
               "figures/")
    click.echo(f"HTML page: {report.files['html'].resolve()}")
