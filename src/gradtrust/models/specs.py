"""Model specs: the families (``torchvision:``, ``timm:``, ``digits:``, ``cifar:``, files) and the registry of their
sources, `available_models`, argument checks and the wording of spec errors (close matches), shared by the
loader modules."""

from __future__ import annotations

import difflib
import operator
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from gradtrust.errors import ModelError, UnknownNameError

if TYPE_CHECKING:  # pragma: no cover
    from gradtrust.models.base import LoadedModel

SPEC_FAMILIES = ("torchvision", "timm", "digits", "cifar")
WEIGHTS_SUFFIXES = (".pth", ".pt", ".th", ".bin", ".ckpt", ".safetensors", ".tar", ".pkl")
MODEL_FILE_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".pkl", ".torchscript")
MAX_LISTED = 8

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class ModelSource:
    """A family of named models, spelled ``<family>:<name>``: ``load(name, weights, num_classes)`` builds one
    (a :class:`~gradtrust.models.base.LoadedModel`), ``names()`` lists the valid names (raising
    :class:`~gradtrust.errors.ModelError` when the family's package is missing), and ``listed_by_default``
    says whether ``available_models()`` without a family includes them (timm has over a thousand)."""

    family: str
    load: Callable[[str, Any, int | None], LoadedModel]
    names: Callable[[], list[str]]
    listed_by_default: bool = True


#: The model sources by family, filled by the loader modules when they are imported (``timm``'s
#: ``register_model`` style): specs reads them, so it never imports a loader.
SOURCES: dict[str, ModelSource] = {}


def register_source(source: ModelSource) -> ModelSource:
    """Make ``<source.family>:<name>`` specs load through ``source``; returns it. A family is one of
    `SPEC_FAMILIES`, whose order is the order of `available_models()`."""
    if source.family not in SPEC_FAMILIES:
        raise ModelError(f"unknown model family {source.family!r}: add it to SPEC_FAMILIES first")
    SOURCES[source.family] = source
    return source


def available_models(family: str | None = None) -> list[str]:
    """Valid specs (``"torchvision:resnet18"``, …) of one family or of all installed ones.

    ``timm`` is listed only when asked for explicitly (over a thousand names) and installed.
    """
    if family is None:
        return [spec for f in SPEC_FAMILIES if f in SOURCES and SOURCES[f].listed_by_default
                for spec in available_models(f)]
    family = family.lower()
    source = SOURCES.get(family)
    if source is None:
        raise UnknownNameError(unknown_message("model family", family, list(SPEC_FAMILIES)))
    return [f"{family}:{n}" for n in source.names()]


def random_meta() -> dict[str, Any]:
    """The ``meta`` entries of a randomly initialised (untrained) network."""
    return {
        "weights_kind": "random",
        "pretrained": False,
        "random_init": "randomly initialised from the global torch RNG: an untrained network",
    }


def check_num_classes(num_classes: Any) -> int | None:
    """``num_classes`` as a positive int (or None); a `ModelError` for anything else (bools, floats, < 1)."""
    if num_classes is None:
        return None
    try:
        value = operator.index(num_classes)  # ints and NumPy integers, not floats
    except TypeError:
        value = None
    if value is None or isinstance(num_classes, bool) or value < 1:
        raise ModelError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(value)


def normalise_weights_arg(weights: Any) -> Any:
    """A weights argument with paths as strings and blank strings as None; enums and others unchanged."""
    if isinstance(weights, os.PathLike):
        return os.fspath(weights)
    if isinstance(weights, str):
        weights = weights.strip()
        return weights or None
    return weights


def is_existing_file(weights: Any) -> bool:
    """Whether ``weights`` is a string naming an existing file."""
    return isinstance(weights, str) and os.path.isfile(weights)


def refuse_missing_weights_file(weights: Any) -> None:
    """A `ModelError` when ``weights`` is a string meant as a weights file path (see `looks_like_path`)."""
    if isinstance(weights, str) and looks_like_path(weights, WEIGHTS_SUFFIXES):
        raise ModelError(f"weights file not found: {weights}")


def std_meta(std: Any) -> dict[str, Any]:
    """The ``normalization_std`` meta entry (for ODIN's ε in pixel units); empty without a std."""
    return {} if std is None else {"normalization_std": [float(s) for s in std]}


def looks_like_path(text: str, suffixes: tuple[str, ...]) -> bool:
    """Whether ``text`` was meant as a path: it has a separator or ends with one of ``suffixes``."""
    return "/" in text or "\\" in text or text.lower().endswith(suffixes)


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's message (its type name when there is none)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def short_list(items: list[Any], limit: int = MAX_LISTED) -> str:
    """The first ``limit`` items joined by commas, with a count of the rest."""
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", … ({len(items) - limit} more)" if len(items) > limit else "")


def did_you_mean(name: str, valid: list[str], prefix: str = "") -> str:
    """``". Did you mean: …?"`` with up to five close matches (difflib, case-insensitive second try), or ``""``."""
    close = difflib.get_close_matches(name, valid, n=5, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(name.lower(), [v.lower() for v in valid], n=5, cutoff=0.6)
    return f". Did you mean: {', '.join(prefix + c for c in close)}?" if close else ""


def unknown_message(what: str, name: str, valid: list[str], prefix: str = "") -> str:
    """The message of an unknown name: the close matches, then every valid name."""
    suggestion = did_you_mean(name, valid, prefix) or "."
    return f"unknown {what} {name!r}{suggestion} Valid names: {', '.join(prefix + v for v in valid)}."


def spec_message(spec: str) -> str:
    """The message of a spec no source understands: the accepted forms and close matches."""
    message = (
        f"unknown model spec {spec!r}: use 'torchvision:<name>', 'timm:<name>', 'digits:<name>', 'cifar:<name>', "
        "'hf:<folder>', your own 'package.module:factory', or the path of a TorchScript model file"
    )
    family, sep, _ = spec.partition(":")
    if sep:
        message += did_you_mean(family, list(SPEC_FAMILIES))
    else:
        try:
            names = SOURCES["torchvision"].names()
        except Exception:  # pragma: no cover
            names = []
        close = difflib.get_close_matches(spec, names, n=3, cutoff=0.75)
        if close:
            message += f". Did you mean: {', '.join('torchvision:' + c for c in close)}?"
    return message
