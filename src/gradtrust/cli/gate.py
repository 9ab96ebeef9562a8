"""``gradtrust gate fit | apply``: from trust scores to decisions (``docs/decisions.md``, SPEC §11)."""

from __future__ import annotations

from pathlib import Path

import click

from gradtrust.cli.options import Group, shared
from gradtrust.errors import InputError

__all__ = ["gate_command"]

_LEVEL = click.FloatRange(0, 1, min_open=True, max_open=True)


@click.group("gate", cls=Group)
def gate_command() -> None:
    """Which predictions to refuse so that the accepted ones are wrong at most r* of the time, with probability
    at least 1 - delta over the calibration data (SGR or Learn-then-Test). `fit` on a labelled calibration run,
    `apply` to any run (labelled: realised coverage and risk; unlabelled: an accept column). The bounds hold
    for data exchangeable with the calibration data, not under distribution shift."""


@gate_command.command("fit")
@click.argument("run", type=click.Path(path_type=Path))
@click.option(
    "--score",
    "score_name",
    default="auto",
    show_default=True,
    metavar="NAME|auto",
    help="The score column to threshold; 'auto' chooses among every score of the run so that the "
    "guarantee holds after the choice (--choose).",
)
@click.option(
    "--risk",
    type=_LEVEL,
    default=None,
    metavar="R",
    help="Target selective risk r*: the most permissive threshold with P(risk <= r*) >= 1 - delta.",
)
@click.option(
    "--coverage",
    type=_LEVEL,
    default=None,
    metavar="C",
    help="Target coverage c*: alone, keep at least c* of the inputs (with a risk bound there); with "
    "--risk, fail when the certified threshold keeps less than c*.",
)
@click.option(
    "--delta",
    type=_LEVEL,
    default=0.05,
    show_default=True,
    metavar="D",
    help="Probability that the bound fails over the calibration draw.",
)
@click.option(
    "--method",
    type=click.Choice(["sgr", "ltt"]),
    default="sgr",
    show_default=True,
    help="sgr: Selection with Guaranteed Risk (Geifman & El-Yaniv 2017); ltt: Learn-then-Test "
    "(Angelopoulos et al. 2021).",
)
@click.option(
    "--p-value",
    type=click.Choice(["clopper-pearson", "hoeffding-bentkus"]),
    default="clopper-pearson",
    show_default=True,
    help="Learn-then-Test's p-value.",
)
@click.option(
    "--choose",
    type=click.Choice(["split", "family"]),
    default=None,
    help="With --score auto: choose on a random half and fit on the other (split; default for sgr), or "
    "test every (score, threshold) pair in one Learn-then-Test family (family; default for ltt).",
)
@shared("out_file", required=True)
@shared("seed")
def fit_command(run, score_name, risk, coverage, delta, method, p_value, choose, out_file, seed) -> None:
    """Fit a gate on the labelled calibration run RUN and save it as JSON (--out)."""
    from gradtrust import schema
    from gradtrust.selective import fit_gate

    if risk is None and coverage is None:
        raise InputError("give a target: --risk R (selective risk) and/or --coverage C.")
    frame = schema.read_results(run)
    labelled = frame["label"].to_numpy() >= 0
    if not labelled.any():
        raise InputError(
            f"{run} has no labelled row: a gate is fitted on a labelled calibration run (score one with "
            "labels, e.g. a class-folder dataset or digits:test)."
        )
    if not labelled.all():
        click.echo(f"note: {int((~labelled).sum())} row(s) of {run} without a label are left out of the fit.", err=True)
    frame = frame.loc[labelled]
    correct = frame["label"].to_numpy() == frame["prediction"].to_numpy()
    methods = schema.method_columns(frame)
    if score_name == "auto":
        scores = {m: frame[m].to_numpy(dtype=float) for m in methods}
    elif score_name in methods:
        scores = frame[score_name].to_numpy(dtype=float)
    else:
        raise InputError(
            f"--score {score_name!r} is not a score column of {run}; it has: {', '.join(methods)} "
            "(or use --score auto)."
        )
    gate = fit_gate(
        scores,
        correct,
        risk=risk,
        coverage=coverage,
        delta=delta,
        method=method,
        p_value=p_value,
        score=None if score_name == "auto" else score_name,
        choose=choose,
        seed=seed,
    )
    gate.save(out_file)
    if gate.selection.get("how") in ("split", "family"):
        click.echo(
            f"chose {gate.score!r} among {len(gate.selection['candidates'])} scores "
            f"({gate.selection['how']}: {gate.selection['criterion']})"
        )
    click.echo(gate.describe())
    click.echo(f"saved: {out_file}")


@gate_command.command("apply")
@click.argument("gate_file", metavar="GATE", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("runs", metavar="RUN...", nargs=-1, required=True, type=click.Path(path_type=Path))
def apply_command(gate_file, runs) -> None:
    """Apply the gate GATE to each score run RUN: writes RUN/decisions.parquet (an accept column) and
    RUN/decisions.json; on labelled rows, the realised coverage and selective risk."""
    from gradtrust.runs.decisions import DECISIONS_FILE, apply_gate
    from gradtrust.selective import SHIFT_NOTE, Gate

    gate = Gate.load(gate_file)
    for run in runs:
        summary = apply_gate(gate, run)
        line = (
            f"{run}: accepts {summary['accepted']} of {summary['rows']} ({summary['coverage']:.4f}) with "
            f"{gate.score} >= {gate.threshold:.6g}"
        )
        real = summary["realised"]
        if real is not None:
            line += (
                f"; on {real['n']} labelled rows: coverage {real['coverage']:.4f} [{real['coverage_ci'][0]:.4f}, "
                f"{real['coverage_ci'][1]:.4f}], selective risk {real['risk']:.4f} [{real['risk_ci'][0]:.4f}, "
                f"{real['risk_ci'][1]:.4f}] (bound {gate.risk_bound:.4f})"
            )
        click.echo(line)
        click.echo(f"  decisions: {Path(run) / DECISIONS_FILE}")
    click.echo(f"note: {SHIFT_NOTE}.")
