"""The ``gradtrust`` command. Each sub-command is a module of this package (the top layer: it may import every
capability, and none imports it), imported only when it runs, so ``gradtrust --help`` answers without importing
torch. A new sub-command is one entry in :data:`COMMANDS` (its name, where it lives, its one-line help) and uses
the shared options, error handler and help layout of :mod:`gradtrust.cli.options`.
"""

from __future__ import annotations

import importlib
import sys

import click

from gradtrust._version import __version__
from gradtrust.cli.options import Command, Group

#: name → ("module:attribute" of the click command, the one-line help ``gradtrust --help`` shows).
COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("gradtrust.cli.score:score_command",
              "Score every sample of a dataset with a model: scores.parquet + manifest.json."),
    "report": ("gradtrust.cli.report:report_command",
               "Tables, figures and an HTML page from one or more score runs."),
    "benchmark": ("gradtrust.cli.benchmark:benchmark_command",
                  "Score several models on one dataset, then report (default: the bundled digits benchmark)."),
    "explain": ("gradtrust.cli.explain:explain_command",
                "Grad-CAM, Counterfactual/Contrast-CAM, occlusion, RISE, SHAPE, VOICE per sample; --evaluate judges them."),
    "gradcon": ("gradtrust.cli.gradcon:gradcon_command",
                "GradCON anomaly detection: fit / score / benchmark (default: the bundled digits benchmark)."),
    "detect": ("gradtrust.cli.detect:detect_command",
               "Detect adversarial, corrupted and OOD inputs from gradient features (default: bundled digits)."),
    "introspect": ("gradtrust.cli.introspect:introspect_command",
                   "Introspective learning: fit H on f's gradient features, score with both, the digits comparison."),
    "gate": ("gradtrust.cli.gate:gate_command",
             "Decide which predictions to refuse: fit a threshold with a guaranteed selective risk, apply it."),
    "methods": ("gradtrust.cli:methods_command", "List the trust-score methods, with their formula and source."),
    "models": ("gradtrust.cli:models_command", "List the model specs --model accepts."),
    "datasets": ("gradtrust.cli:datasets_command",
                 "List the --data specs for data sets in their distributed formats, with the layout each reads."),
}


class LazyGroup(Group):
    """A click group whose sub-commands are imported on first use (the help text comes from COMMANDS)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        if cmd_name not in COMMANDS:
            return None
        module_name, attr = COMMANDS[cmd_name][0].split(":")
        command = getattr(importlib.import_module(module_name), attr)
        self.add_command(command, cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx) if name in COMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="gradtrust")
def main() -> None:
    """GradTrust: how far to trust each prediction of a PyTorch classifier.

    Scores every prediction with GradTrust (counterfactual gradients, MIPR 2024) and the comparison
    methods, stores per-sample results, and evaluates which score best separates right from wrong.
    """


@click.command("methods", cls=Command)
def methods_command() -> None:
    """List the trust-score methods: formula, passes, options (with defaults) and source."""
    import textwrap

    from gradtrust.scores import Pass, method_specs
    from gradtrust.scores.options import known_params

    params = known_params()
    for spec in method_specs():
        click.echo(f"{spec.name}  ({spec.display_name})")
        for line in textwrap.wrap(spec.summary.replace("``", ""), 100):
            click.echo(f"    {line}")
        passes = [p.name for p in Pass if p in spec.needs and p is not Pass.FORWARD]
        click.echo(f"    passes: FORWARD{''.join(', ' + p for p in passes)}")
        if spec.parameter_names:
            click.echo(f"    options: {'  '.join(params[n].describe() for n in spec.parameter_names)}")
        if spec.source:
            click.echo(f"    source: {spec.source}")


@click.command("models", cls=Command)
@click.option("--family", type=click.Choice(["torchvision", "digits", "cifar", "timm"]), default=None,
              help="Only this family of model specs.")
def models_command(family: str | None) -> None:
    """List the model specs `--model` accepts (torchvision:<name>, digits:<name>, cifar:<name>, timm:<name>, or a
    file)."""
    from gradtrust.models import available_models

    for spec in available_models(family):
        click.echo(spec)
    if family is None:  # what the list leaves out, on stderr so that stdout stays one spec per line
        try:
            count = len(available_models("timm"))
            timm = f"timm:<name>: {count} timm models, listed by `gradtrust models --family timm`"
        except Exception:  # noqa: BLE001 - timm missing: say how to get it
            timm = "timm:<name>: needs timm (pip install 'gradtrust[timm]'), then `gradtrust models --family timm`"
        click.echo(f"also: {timm}; hf:<folder> (a transformers save_pretrained folder); package.module:factory "
                   "(your own builder, with --weights); a TorchScript file", err=True)


@click.command("datasets", cls=Command)
@click.argument("name", required=False)
@click.option("--names", "names_only", is_flag=True, help="Only the spec names, one per line.")
def datasets_command(name: str | None, names_only: bool) -> None:
    """List the `--data` specs (NAME:ARG...) with the exact file layout each reads; NAME: only that one."""
    import textwrap

    from gradtrust.data.specs import data_spec, data_specs

    specs = [data_spec(name)] if name else data_specs()
    for spec in specs:
        if names_only:
            click.echo(spec.name)
            continue
        click.echo(spec.usage)
        click.echo(f"    {spec.summary}")
        for line in textwrap.wrap(f"layout: {spec.layout}", 96):
            click.echo(f"    {line}")
    if not name and not names_only:  # the forms outside the registry, on stderr so that stdout lists the registry
        click.echo("also: DIR (class folders DIR/<class>/<image>), DIR with --labels FILE (the flat ImageNet validation "
                   "layout), DIR of Kinetics-style videos for a video model, digits[:SPLIT[:CORRUPTION[:SEVERITY]]]",
                   err=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
