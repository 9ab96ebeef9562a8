"""``gradtrust score``: score a dataset with a model into ``scores.parquet`` + ``manifest.json``."""

from __future__ import annotations

import os
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

import click

from gradtrust.cli.memory import check_batch_memory, keep_freed_memory_option
from gradtrust.cli.options import Command, data_or_digits, device_of, load_cli_model, model_options, rank, shared
from gradtrust.errors import InputError, UnknownNameError
from gradtrust.scores import available_methods

__all__ = ["parse_option_pairs", "score_command"]

DEFAULT_DIGITS_OUT = "runs/digits"


def _epilog() -> str:
    from gradtrust.scores.options import known_params

    def wrap(items: list[str], sep: str) -> list[str]:  # one "\b" paragraph, lines of at most 100 characters
        return textwrap.wrap(sep.join(items), 98, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False,
                             break_long_words=False)

    lines = ["\b", "Methods (--methods, default all that apply to the model; `gradtrust methods` for formulas):",
             *wrap(available_methods(), ", "), "", "\b", "Options (--option KEY=VALUE, repeatable; the defaults shown):",
             *wrap([param.describe() for param in known_params().values()], " "),
        "",
        "\b",
        "Examples:",
        "  gradtrust score                                   # every bundled digits network -> runs/digits/<net>/",
        "  gradtrust score --model digits:digits_cnn --data digits:test:blur:2 --out runs/cnn-blur",
        "  gradtrust score --model torchvision:resnet50 --weights DEFAULT --data /data/imagenet/val \\",
        "      --labels LOC_val_solution.csv --out runs/resnet50 --workers 8 --device cuda",
        "  gradtrust score --model torchvision:resnet18 --weights my_head.pth --data ./my_images \\",
        "      --out runs/mine --methods softmax,gradtrust,gradtrust_topk --option topk=5",
        "  gradtrust score --model torchvision:r3d_18 --weights DEFAULT --data /data/kinetics400/val --out runs/r3d",
        "  torchrun --nproc_per_node 4 -m gradtrust score --model ... --data ... --out ...   # 4 processes",
        "",
        "\b",
        "Output: <out>/scores.parquet (one row per scored sample), <out>/manifest.json, <out>/run.json and",
        "<out>/chunks/. Interrupted? Run the same command again: complete chunks are kept (resume).",
    ]
    return "\n".join(lines)


def parse_option_pairs(pairs: typing.Iterable[str]) -> dict[str, Any]:
    """``["odin_temperature=50", "topk=none"]`` → ``{"odin_temperature": 50.0, "topk": None}``.

    Each value is parsed by the option's declaration (:class:`gradtrust.scores.Param`: its type, ``none``
    for options whose default is none, its choices and checks); unknown keys raise
    :class:`UnknownNameError` listing the valid ones.
    """
    from gradtrust.scores.options import known_params

    params = known_params()
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = str(pair).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise InputError(f"--option takes KEY=VALUE (e.g. --option odin_temperature=50), got {pair!r}.")
        if key not in params:
            import difflib

            close = difflib.get_close_matches(key, list(params), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UnknownNameError(f"unknown scoring option {key!r}.{hint} Valid options: {', '.join(params)}.")
        text = value.strip()
        if text.lower() == "null":
            text = "none"
        try:
            out[key] = params[key].parse(text)
        except ValueError as exc:
            raise InputError(f"--option {key}={text!r}: {str(exc).split(' (got ')[0]}.") from None
    return out


def _echo_summary(summary, spec: str) -> None:
    acc = "n/a (no labels)" if summary.accuracy is None else f"{summary.accuracy:.4f}"
    click.echo(f"{spec}: scored {summary.num_scored} of {summary.num_samples} samples, {summary.num_failed} failed; "
               f"accuracy {acc}; {summary.elapsed_s:.1f} s"
               + (f" (resumed {summary.resumed_chunks} complete chunks)" if summary.resumed_chunks else ""))
    click.echo(f"  methods:  {', '.join(summary.methods)}")
    click.echo(f"  scores:   {summary.scores_path}")
    click.echo(f"  manifest: {summary.manifest_path}")


@click.command("score", cls=Command, epilog=_epilog())
@keep_freed_memory_option
@model_options()
@shared("data", "labels")
@click.option("--methods", default="all", show_default=True, metavar="a,b,c|all",
              help="Comma-separated trust scores (see below). Named methods that cannot apply are an error; "
                   "'all' skips them with the reason.")
@click.option("--option", "option_pairs", multiple=True, metavar="KEY=VALUE",
              help="A scoring option, repeatable (see below).")
@shared("out_dir", "force")
@click.option("--chunk-size", type=click.IntRange(min=1), metavar="N",
              help="Samples per resumable chunk file (default: smallest multiple of --batch-size >= 1024).")
@shared("batch_size", default=64)
@shared("workers", "device", "no_progress")
def score_command(model_spec, weights, num_classes, load_options, data, labels, methods, option_pairs, out_dir,
                  force, chunk_size, batch_size, workers, device, no_progress) -> None:
    """Score every sample of a dataset with trust scores -> scores.parquet + manifest.json.

    One row per sample: index, path, label (model class index, -1 if unknown), prediction, correct, one
    column per method (higher = more trustworthy, NaN with a nan_reason_<method> column when undefined).
    Unreadable files are skipped and listed in manifest.json. Runs are resumable and can be sharded over
    processes and machines with torchrun. Without --model: every bundled digits network on the digits,
    into --out (default runs/digits)/<network>.
    """
    from gradtrust.data.open import open_dataset
    from gradtrust.models import available_digits_models, model_for_dataset
    from gradtrust.runs.distributed import distributed_session
    from gradtrust.runs.score import check_score_options, score_dataset
    from gradtrust.scores.engine import resolve_methods

    # Everything that can be checked cheaply is checked before a model is built.
    options = parse_option_pairs(option_pairs)
    pending_std = options.get("odin_epsilon_space") == "pixel" and options.get("odin_input_std") is None
    check_score_options({**options, "odin_input_std": "1"} if pending_std else options)  # the std comes with the model
    resolve_methods(methods)
    if labels is not None and not os.path.isfile(labels):
        raise InputError(f"labels file {os.path.abspath(labels)} does not exist.")

    jobs: list[tuple[str, str | None, Path]]  # (model spec, --weights, output folder)
    if model_spec is None:
        data = data or "digits"
        if not data.startswith("digits") or os.path.isdir(data):
            raise InputError("--model is required with --data DIR (only the built-in digits data can be scored "
                             "without --model, by every bundled digits network).")
        if weights is not None or num_classes is not None:
            raise InputError("--weights and --num-classes need --model.")
        if load_options:
            raise InputError("--preprocessing, --input-size, --resize, --crop, --mean, --std, --interpolation, "
                             "--class-names, --trust-model-file and --output-index need --model.")
        jobs = [(f"digits:{name}", "DEFAULT", Path(out_dir or DEFAULT_DIGITS_OUT) / name)
                for name in available_digits_models()]
    else:
        data = data_or_digits(model_spec, data, labels)
        if out_dir is None:
            raise InputError("--out is required: the folder for scores.parquet and manifest.json.")
        jobs = [(model_spec, weights, Path(out_dir))]

    dev = device_of(device)
    summaries = []
    with distributed_session(dev):
        for spec, spec_weights, out in jobs:
            model = load_cli_model(spec, spec_weights, num_classes, dev, load_options)
            check_batch_memory(model, batch_size)
            if rank() == 0:
                if model.meta.get("weights_kind") == "random":
                    click.echo(f"note: {spec} has random weights (an untrained network); pass --weights DEFAULT "
                               "or a weights file for a trained one.", err=True)
                _warn_no_preprocessing(model, data)
            run_options = _odin_pixel_options(options, model)
            dataset = open_dataset(data, model, labels)
            model = model_for_dataset(model, dataset)  # ImageNet-A/R/O: the subset's logits, as their papers
            try:
                summary = score_dataset(model, dataset, out, methods=methods, options=run_options,
                                        batch_size=batch_size, num_workers=workers, device=str(dev), force=force,
                                        progress=not no_progress, chunk_size=chunk_size)
            except InputError as exc:
                if model.transform is None and model.input_kind == "tensor" and os.path.isdir(data):
                    raise InputError(f"{exc} {MISSING_PREPROCESSING[0].upper()}{MISSING_PREPROCESSING[1:]}.") from exc
                raise
            summaries.append((spec, summary))
            if rank() == 0:
                _echo_summary(summary, spec)
                _echo_notes(summary.manifest_path)
    if rank() == 0 and len(summaries) > 1:
        click.echo("")
        click.echo(f"{'network':28s} {'scored':>7s} {'failed':>7s} {'accuracy':>9s}")
        for spec, s in summaries:
            acc = "n/a" if s.accuracy is None else f"{s.accuracy:.4f}"
            click.echo(f"{spec:28s} {s.num_scored:7d} {s.num_failed:7d} {acc:>9s}")
        click.echo(f"results in {Path(jobs[0][2]).parent.resolve()}/<network>/")
    sys.stdout.flush()


MISSING_PREPROCESSING = ("pass the model's preprocessing: --input-size S (or --resize R --crop C), --mean and --std "
                         "(and --interpolation), or borrow a known one with --preprocessing torchvision:<name>")


def _warn_no_preprocessing(model, data: str) -> None:
    if model.transform is None and model.input_kind == "tensor" and os.path.isdir(data):
        click.echo(f"warning: {model.spec} has no preprocessing: images go in as [0, 1] RGB tensors at their own "
                   f"size, without resize or normalisation. If the model expects otherwise, {MISSING_PREPROCESSING}.",
                   err=True)


def _echo_notes(manifest_path: Path) -> None:
    """Say what the console would otherwise hide: skipped methods with their reasons, adjusted options."""
    from gradtrust.reporting.kinds import read_manifest

    manifest = read_manifest(Path(manifest_path).parent)
    for name, reason in (manifest.get("skipped") or {}).items():
        click.echo(f"  skipped:  {name}: {reason}")
    for note in manifest.get("notes") or []:
        click.echo(f"  note:     {note}")


def _odin_pixel_options(options: dict, model) -> dict:
    """``odin_epsilon_space=pixel``: ε is in [0, 1] pixel units; fill in the normalisation std the model uses."""
    if options.get("odin_epsilon_space", "input") != "pixel" or options.get("odin_input_std") is not None:
        return options
    std = model.meta.get("normalization_std")
    if not std:
        raise InputError(f"odin_epsilon_space=pixel needs the model's normalisation std, which is not known for "
                         f"{model.spec}: give --std (with --mean), or --option odin_input_std=S,S,S.")
    return {**options, "odin_input_std": ",".join(str(float(s)) for s in std)}
