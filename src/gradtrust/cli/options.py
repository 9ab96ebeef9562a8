"""One command-line convention for every ``gradtrust`` command: each shared option declared once in
:data:`DEFINITIONS` (added with :func:`shared`; ``tests/test_cli_options.py`` walks every command and checks it),
one error handler and one help layout (:class:`Command`), old spellings as hidden aliases (:func:`alias`), and the
steps every command repeats (:func:`load_cli_model`, :func:`data_or_digits`).
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from gradtrust.errors import GradTrustError, InputError

__all__ = ["DEFINITIONS", "MODEL_SPEC_FORMS", "SECTIONS", "Command", "Group", "SharedOption", "alias", "device_of",
           "model_options", "shared", "user_error_line"]

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}
#: The sections of every command's ``--help``, in order; options that are the command's own come under "Options".
SECTIONS = ("Model", "Data", "Options", "Output", "Run")
#: What one command may set differently for a shared option; type, help and flag stay the definition's.
PER_COMMAND = frozenset({"default", "required", "multiple", "show_default"})
_TYPED = "gradtrust.typed_options"  # ctx.meta: the option spellings on the command line
RANDOM_INIT_SEED = 0  # random-weight models are initialised from torch.manual_seed(0): every run, every rank

def _option(section: str, decls: str, help: str, **kwargs: Any) -> tuple[str, dict[str, Any]]:  # noqa: A002
    return section, {"param_decls": decls.split(), "help": help, **kwargs}


_SIZE, _FILE, _N = "S|H,W", click.Path(dir_okay=False), click.IntRange(min=1)
#: Every form a model spec takes, for the help of each option that reads one (``--model``, ``--models``).
MODEL_SPEC_FORMS = ("torchvision:<name>, timm:<name>, digits:<name>, cifar:<name>, hf:<folder>, package.module:factory, "
                    "or a TorchScript/pickled model file (`gradtrust models` lists them)")
#: name → (help section, click.Option arguments). The name is the parameter the command's callback receives.
DEFINITIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "model_spec": _option("Model", "--model model_spec", MODEL_SPEC_FORMS + ".", metavar="SPEC"),
    "weights": _option("Model", "--weights", "DEFAULT or a torchvision enum name (from the torch hub cache, as is a "
                       "cifar: model's published file; never downloaded), a local .pth/.safetensors file, or "
                       "'random'. Default: the bundled weights for digits:*; random initialisation (seed 0) otherwise "
                       "(`benchmark`: DEFAULT).", metavar="W"),
    "num_classes": _option("Model", "--num-classes", "Outputs of a fine-tuned head (inferred from a weights file "
                           "when omitted).", type=_N, metavar="N"),
    "borrow": _option("Model", "--preprocessing borrow", "Borrow the preprocessing of a known model "
                      "(torchvision:resnet18, timm:<name>); the options below override its fields.", metavar="SPEC"),
    "input_size": _option("Model", "--input-size", "Final input size. The model's (or borrowed) normalisation is "
                          "kept and its resize scaled to match (resize = round(S x resize/crop), crop = S); a model "
                          "without preprocessing: every image resized to SxS.", metavar=_SIZE),
    "resize": _option("Model", "--resize", "Resize the shorter side to S (aspect kept), or to H,W exactly.",
                      metavar=_SIZE),
    "crop": _option("Model", "--crop", "Centre crop after resizing.", metavar=_SIZE),
    "mean": _option("Model", "--mean", "Per-channel mean of the normalisation (x - mean) / std, [0, 1] units.",
                    metavar="M,M,M"),
    "std": _option("Model", "--std", "Per-channel std of the normalisation.", metavar="S,S,S"),
    "interpolation": _option("Model", "--interpolation", "bilinear (default), bicubic, nearest or nearest-exact.",
                             metavar="NAME"),
    "class_names": _option("Model", "--class-names", "The model's class names, one per line in output order; class "
                           "folders are matched by name.", type=_FILE, metavar="FILE"),
    "trust_model_file": _option("Model", "--trust-model-file", "Allow a whole pickled nn.Module file as --model. "
                                "Unpickling runs any code hidden in the file: only for files you trust (TorchScript "
                                "and state dicts need no such flag).", is_flag=True),
    "output_index": _option("Model", "--output-index", "For a model returning several outputs (a tuple or dict): "
                            "which one holds the logits (0, ...).", metavar="I"),
    "data": _option("Data", "--data", "The dataset: class-folder images (DIR/<class>/<img>), the built-in "
                    "digits[:SPLIT[:CORRUPTION[:SEVERITY]]], or a data set in its distributed format "
                    "(cifar10:DIR:test, cifar10c:DIR:fog:3, svhn:FILE.mat, mnist:DIR, imagenet-r:DIR, wds:PATTERN, "
                    "...: see `gradtrust datasets`); where a model reads it, also a flat image folder with "
                    "--labels or Kinetics-style videos (DIR/<class>/<clip>.mp4).", metavar="DIR|SPEC"),
    "labels": _option("Data", "--labels", "Labels of a flat image folder (ImageNet validation layout): "
                      "LOC_val_solution.csv or one label (WordNet ID or class index) per line in sorted file order.",
                      type=_FILE, metavar="FILE"),
    "out_dir": _option("Output", "--out out_dir", "Output folder (created).", metavar="DIR",
                       type=click.Path(file_okay=False, path_type=Path)),
    "force": _option("Output", "--force", "Discard results in --out that this run would otherwise refuse to "
                     "replace (benchmark: score every run again).", is_flag=True),
    "device": _option("Run", "--device", "cpu, cuda, cuda:1 ... (default: cuda when available, else cpu; under "
                      "torchrun cuda:LOCAL_RANK).", metavar="D"),
    "batch_size": _option("Run", "--batch-size", "Samples per batch (per training step in a fit).", type=_N,
                          metavar="N", show_default=True),
    "workers": _option("Run", "--workers", "DataLoader worker processes reading the files (4-8 for large folders).",
                       type=click.IntRange(min=0), default=0, show_default=True, metavar="N"),
    "resamples": _option("Run", "--resamples", "Bootstrap resamples of the confidence intervals (0 = none).",
                         type=click.IntRange(min=0), default=1000, show_default=True, metavar="N"),
    "seed": _option("Run", "--seed", "Seed of everything random the command draws (initialisation, sample order "
                    "and subsets, bootstrap).", type=click.IntRange(min=0), default=0, show_default=True, metavar="N"),
    "no_progress": _option("Run", "--no-progress", "No progress bars.", is_flag=True),
    "threads": _option("Run", "--threads", "CPU threads of torch's operators (torch.set_num_threads); default: "
                       "$GRADTRUST_THREADS, else torch's own (one per core). Set it below the core count when other "
                       "jobs share the cores. Recorded in the manifest.", type=_N, envvar="GRADTRUST_THREADS",
                       metavar="N"),
}
#: The options that say how a model is loaded, as ``load_model`` keyword arguments (see :func:`model_options`).
PREPROCESSING = ("input_size", "resize", "crop", "mean", "std", "interpolation")
LOAD_OPTIONS = ("borrow", *PREPROCESSING, "class_names", "trust_model_file", "output_index")


class SharedOption(click.Option):
    """A click option that knows its help section and, for a shared one, the :data:`DEFINITIONS` entry it comes from."""

    def __init__(self, *args: Any, section: str = "Options", definition: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.section = section
        self.definition = definition

    @property
    def human_readable_name(self) -> str:  # an old spelling is named as typed, not by the parameter it fills
        return self.opts[0] if self.deprecated else super().human_readable_name

    def handle_parse_result(self, ctx: click.Context, opts: Any, args: list[str]) -> Any:
        """An old spelling warns only when it was typed: it shares its parameter with the new option, whose
        value click would otherwise take for the old one's (and warn whenever the new spelling is used)."""
        deprecated = self.deprecated
        if deprecated and not set(self.opts) & ctx.meta.get(_TYPED, set()):
            self.deprecated = False
        try:
            return super().handle_parse_result(ctx, opts, args)
        finally:
            self.deprecated = deprecated


def _add(command: Callable[..., Any], option: click.Option) -> None:
    command.__dict__.setdefault("__click_params__", []).append(option)


def shared(*names: str, **per_command: Any) -> Callable[[F], F]:
    """Add the shared options ``names`` (keys of :data:`DEFINITIONS`) to a command, in that order, with the
    :data:`PER_COMMAND` settings ``per_command`` (e.g. ``default=64``) applied to each of them."""
    unknown = set(per_command) - PER_COMMAND
    if unknown:
        raise TypeError(f"a command may not change {sorted(unknown)} of a shared option")

    def decorate(command: F) -> F:
        for name in reversed(names):  # click lists __click_params__ in reverse order of addition
            section, spec = DEFINITIONS[name]
            kwargs = {**spec, **per_command}
            _add(command, SharedOption(kwargs.pop("param_decls"), section=section, definition=name, **kwargs))
        return command

    return decorate


def alias(old: str, name: str, new: str, **kwargs: Any) -> Callable[[F], F]:
    """A hidden, deprecated old spelling ``old`` of the option ``new`` whose parameter is ``name``: given on the
    command line it fills that parameter (click gives a parameter given by the user precedence over a default)
    and warns once. ``kwargs``: the type of the value, as the new option has it."""

    def decorate(command: F) -> F:
        _add(command, SharedOption([old, name], hidden=True, deprecated=f"Use {new}.", **kwargs))
        return command

    return decorate


def model_options(*, required: bool = False, multiple: bool = False) -> Callable[[F], F]:
    """``--model``, ``--weights``, ``--num-classes`` and how the model is loaded (preprocessing, class names,
    model files, output index). The callback receives ``model_spec``, ``weights``, ``num_classes`` and
    ``load_options``: the keyword arguments of :func:`gradtrust.models.load_model` the user gave
    (``preprocessing``, ``class_names``, ``trust_model_file``, ``output_index``)."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in LOAD_OPTIONS}
            preprocessing = {k: given[k] for k in PREPROCESSING if given[k] is not None}
            if given["borrow"] is not None:
                preprocessing["borrow"] = given["borrow"]
            index = given["output_index"]
            kwargs["load_options"] = {
                k: v for k, v in (("preprocessing", preprocessing or None), ("class_names", given["class_names"]),
                                  ("trust_model_file", given["trust_model_file"] or None),
                                  ("output_index", int(index) if index and index.lstrip("-").isdigit() else index))
                if v is not None}
            return command(*args, **kwargs)

        shared("weights", "num_classes", *LOAD_OPTIONS)(wrapper)
        return shared("model_spec", required=required, multiple=multiple)(wrapper)  # type: ignore[return-value]

    return decorate


def device_of(device: str | None) -> Any:
    """``--device`` as a ``torch.device``: the one default everywhere is CUDA (the current device) when it is
    available, else the CPU; under torchrun ``cuda:LOCAL_RANK`` (:func:`gradtrust.runs.distributed.resolve_device`)."""
    import torch

    from gradtrust.runs.distributed import resolve_device

    default = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return resolve_device(device, default)


def rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    return int(os.environ.get("RANK", "0") or 0)


def weights_arg(spec: str, weights: str | None) -> str | None:
    """The ``--weights`` option as `load_model` takes it: ``random``/``none``/``null`` mean random
    initialisation (None); no option means the bundled weights for ``digits:`` models."""
    if weights is not None and weights.strip().lower() in ("random", "none", "null"):
        return None
    if weights is None and spec.startswith("digits:"):
        return "DEFAULT"  # the bundled, trained weights
    return weights


def load_cli_model(spec: str, weights: str | None, num_classes: int | None, device: Any,
                   load_options: dict[str, Any]) -> Any:
    """The model of ``--model``/``--weights`` (:func:`weights_arg`) and the shared loading options on ``device``,
    random weights drawn from ``torch.manual_seed(RANDOM_INIT_SEED)`` (the same network on every run and rank);
    its preprocessing echoed (:func:`echo_preprocessing`)."""
    import torch

    from gradtrust.models import load_model

    torch.manual_seed(RANDOM_INIT_SEED)
    model = load_model(spec, weights_arg(spec, weights), num_classes, device=device, **load_options)
    echo_preprocessing(model, load_options)
    return model


def echo_preprocessing(model: Any, load_options: dict[str, Any]) -> None:
    """Print, once at the start, the preprocessing the user's options produced (the manifest records it too)."""
    used = model.meta.get("preprocessing")
    if load_options.get("preprocessing") and isinstance(used, dict) and rank() == 0:
        fields = ", ".join(f"{k} {v}" for k, v in used.items() if k != "source" and v is not None)
        click.echo(f"preprocessing: {fields} ({used.get('source')})", err=True)


def data_or_digits(model_spec: str, data: str | None, labels: str | None) -> str:
    """``--data``, checked with ``--labels``: a ``digits:`` model without ``--data`` reads the built-in digits."""
    if labels is not None and not os.path.isfile(labels):
        raise InputError(f"labels file {os.path.abspath(labels)} does not exist.")
    if data is None:
        if not model_spec.startswith("digits:"):
            raise InputError("--data is required with this --model (a dataset folder).")
        data = "digits"
    return data


_NO_SPACE, _NO_WRITE = "free space on that disk or choose another --out", "choose a folder you may write to (--out)"
_OS_ADVICE = {errno.ENOSPC: _NO_SPACE, errno.EDQUOT: _NO_SPACE, errno.EACCES: _NO_WRITE, errno.EPERM: _NO_WRITE,
              errno.EROFS: f"the file system is read-only: {_NO_WRITE}", errno.ENOENT: "check the path",
              errno.ENOTDIR: "a file stands where a folder is needed: check the path"}


def user_error_line(exc: BaseException) -> str:
    """The one line a user error ends with: the message (an error from a DataLoader worker without its
    traceback), or for an ``OSError`` the file, the reason and what to do."""
    if isinstance(exc, OSError) and not isinstance(exc, GradTrustError):
        where = f" {exc.filename}" if exc.filename else ""
        advice = _OS_ADVICE.get(exc.errno or 0, "check the path and try again")
        return f"cannot use{where}: {exc.strerror or exc}; {advice}."
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if "Original Traceback" in str(exc) and lines:  # raised in a DataLoader worker: keep the message
        return lines[-1].split(": ", 1)[-1]
    return " ".join(lines)


def _handled(callback: F) -> F:
    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except (GradTrustError, OSError) as exc:
            # Under torchrun the failing rank reports the cause; the others (PeerError) stay quiet.
            if type(exc).__name__ != "PeerError" or rank() == 0:
                click.echo(f"Error: {user_error_line(exc)}", err=True)
            raise click.exceptions.Exit(2) from None
        except KeyboardInterrupt:
            click.echo("\nInterrupted. Complete work is kept: run the same command again to resume.", err=True)
            raise click.exceptions.Exit(130) from None
        except RuntimeError as exc:
            if type(exc).__name__ != "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch
                raise
            click.echo("Error: out of GPU memory; use a smaller --batch-size (complete work is kept).", err=True)
            raise click.exceptions.Exit(2) from None

    return run  # type: ignore[return-value]


class Command(click.Command):
    """A ``gradtrust`` command: the help layout of :data:`SECTIONS`; every user error (a
    :class:`~gradtrust.errors.GradTrustError` or an ``OSError``) → one line that says what to do and exit code 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["context_settings"] = {**CONTEXT, **(kwargs.get("context_settings") or {})}
        super().__init__(*args, **kwargs)
        self.callback = None if self.callback is None else _handled(self.callback)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[_TYPED] = {arg.split("=", 1)[0] for arg in args if arg.startswith("-")}  # see SharedOption
        return super().parse_args(ctx, args)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The options under the headings of :data:`SECTIONS` (``--help`` last, under "Run")."""
        sections: dict[str, list[tuple[str, str]]] = {name: [] for name in SECTIONS}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                section = "Run" if param is self.get_help_option(ctx) else getattr(param, "section", "Options")
                sections[section].append(record)
        for name, rows in sections.items():
            if rows:
                with formatter.section(name):
                    formatter.write_dl(rows)


class Group(Command, click.Group):
    """A ``gradtrust`` command group with the layout and error handling of :class:`Command`."""

    command_class = Command

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_options(ctx, formatter)
        self.format_commands(ctx, formatter)
