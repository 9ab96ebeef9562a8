"""The ``gradtrust`` command. Each sub-command lives beside the code it drives:

* ``gradtrust score``     — :mod:`gradtrust.runner.command` (score a dataset → scores.parquet + manifest.json)
* ``gradtrust report``    — :mod:`gradtrust.reporting.command` (tables, figures, HTML from score runs)
* ``gradtrust benchmark`` — :mod:`gradtrust.reporting.benchmark` (score several models, then report)
* ``gradtrust methods`` / ``gradtrust models`` — what can be asked for.
"""

from __future__ import annotations

import sys

import click

from gradtrust import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="gradtrust")
def main() -> None:
    """GradTrust: how far to trust each prediction of a PyTorch classifier.

    Scores every prediction with GradTrust (counterfactual gradients, MIPR 2024) and the comparison
    methods, stores per-sample results, and evaluates which score best separates right from wrong.
    """


@main.command("methods")
def methods_command() -> None:
    """List the trust-score methods, with their formula and source."""
    from gradtrust.scores import available_methods, get_method

    for name in available_methods():
        method = get_method(name)
        click.echo(f"{name:16s} {method.summary.replace('``', '')}")
        if method.source:
            click.echo(f"{'':16s}   source: {method.source}")


@main.command("models")
@click.option("--family", type=click.Choice(["torchvision", "digits", "timm"]), default=None,
              help="Only this family of model specs.")
def models_command(family: str | None) -> None:
    """List the model specs `--model` accepts (torchvision:<name>, digits:<name>, timm:<name>, or a file)."""
    from gradtrust.models import available_models

    for spec in available_models(family):
        click.echo(spec)


def _register_subcommands() -> None:
    from gradtrust.runner.command import score_command

    main.add_command(score_command)
    try:
        from gradtrust.reporting.benchmark import benchmark_command
        from gradtrust.reporting.command import report_command
    except ImportError:  # reporting is optional until its dependencies (matplotlib) are importable
        return
    main.add_command(report_command)
    main.add_command(benchmark_command)


_register_subcommands()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
