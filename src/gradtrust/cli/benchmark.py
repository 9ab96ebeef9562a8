"""``gradtrust benchmark``: every model on every dataset (:mod:`gradtrust.benchmark`), then the report."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from gradtrust.benchmark import DEFAULT_DATA, DEFAULT_OUT, run_benchmark
from gradtrust.cli.memory import keep_freed_memory_option


@click.command("benchmark")
@keep_freed_memory_option
@click.option("--models", "models", multiple=True, metavar="SPEC[,SPEC…]",
              help="Model specs (repeatable or comma-separated): torchvision:<name>, timm:<name>, digits:<name>, "
                   "a model file. Default: every bundled digits network.")
@click.option("--weights", metavar="W", default=None,
              help="Weights for every model: DEFAULT (the default), an enum name, a local file, or 'random'.")
@click.option("--data", "data", multiple=True, metavar="DIR|digits:…",
              help="Datasets (repeatable or comma-separated): image/video folders or built-in digits specs. "
                   f"Default: {', '.join(DEFAULT_DATA)}.")
@click.option("--labels", type=click.Path(dir_okay=False), metavar="FILE",
              help="Labels of flat image folders (ImageNet validation layout); ignored for the built-in digits.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT,
              show_default=True, help="Folder for the runs (<out>/runs/) and the report (<out>/report/).")
@click.option("--methods", default=None, metavar="a,b,c|all",
              help="Comma-separated trust scores; default all that apply to each model.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True, metavar="N")
@click.option("--device", metavar="D", default=None, help="cpu, cuda, cuda:1 … (default: cuda when available, else cpu).")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="DataLoader worker processes.")
@click.option("--force", is_flag=True, help="Score every run again, discarding what --out holds.")
@click.option("--resamples", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Bootstrap resamples of the report's confidence intervals (0 = none).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap resamples.")
@click.option("--figures/--no-figures", default=True, show_default=True, help="Draw the report's figures.")
def benchmark_command(models, weights, data, labels, out, methods, batch_size, device, workers, force, resamples,
                      seed, figures):
    """Score every model on every dataset (runs already complete in --out are skipped), then write the report
    to <out>/report/ and print its table.

    With no arguments: every bundled digits network on the clean digits test split and on its
    gaussian_noise and blur copies (severity 1): twelve runs on the CPU in about a minute.
    """
    from gradtrust.cli.report import echo_report

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
    outcomes, report = run_benchmark(models, data, out, weights=weights, labels=labels, methods=methods,
                                     batch_size=batch_size, device=device, workers=workers, force=force,
                                     resamples=resamples, seed=seed, figures=figures)
    click.echo("")
    echo_report(report, print_table=True)
    scored = sum(o.status == "scored" for o in outcomes)
    skipped = sum(o.status == "skipped" for o in outcomes)
    failed = [o for o in outcomes if o.status == "failed"]
    click.echo(f"Benchmark: {len(outcomes)} run(s): {scored} scored, {skipped} skipped (already complete), "
               f"{len(failed)} failed; {time.perf_counter() - t0:.1f} s in all.")
    for o in failed:
        click.echo(f"failed: {o.job.name}: {o.message}", err=True)
    if failed or not report.ok:
        sys.exit(1)
