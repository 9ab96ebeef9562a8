"""Model specs: the families (``torchvision:``, ``timm:``, ``digits:``, files), `available_models`, argument
checks and the wording of spec errors (close matches)."""

from __future__ import annotations

import difflib
import operator
import os
from typing import Any, Union

from gradtrust.errors import ModelError, UnknownNameError

SPEC_FAMILIES = ("torchvision", "timm", "digits")
WEIGHTS_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".tar", ".pkl")
MODEL_FILE_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".pkl", ".torchscript")
_MAX_LISTED = 8

PathLike = Union[str, "os.PathLike[str]"]


def available_models(family: str | None = None) -> list[str]:
    """Valid specs (``"torchvision:resnet18"``, …) of one family or of all installed ones.

    ``timm`` is listed only when asked for explicitly (over a thousand names) and installed.
    """
    from gradtrust.models.digits_loader import _import_digits
    from gradtrust.models.timm_models import _import_timm
    from gradtrust.models.torchvision_models import _torchvision_names

    if family is None:
        return available_models("torchvision") + available_models("digits")
    family = family.lower()
    if family == "torchvision":
        return [f"torchvision:{n}" for n in _torchvision_names()[0]]
    if family == "timm":
        timm = _import_timm()
        return [f"timm:{n}" for n in timm.list_models()]
    if family == "digits":
        try:
            digits = _import_digits()
        except ModelError:
            return []
        return [f"digits:{n}" for n in digits.available_digits_models()]
    raise UnknownNameError(_unknown_message("model family", family, list(SPEC_FAMILIES)))


def _random_meta() -> dict[str, Any]:
    return {
        "weights_kind": "random",
        "pretrained": False,
        "random_init": "randomly initialised from the global torch RNG: an untrained network",
    }


def _check_num_classes(num_classes: Any) -> int | None:
    if num_classes is None:
        return None
    try:
        value = operator.index(num_classes)  # ints and NumPy integers, not floats
    except TypeError:
        value = None
    if value is None or isinstance(num_classes, bool) or value < 1:
        raise ModelError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(value)


def _normalise_weights_arg(weights: Any) -> Any:
    if isinstance(weights, os.PathLike):
        return os.fspath(weights)
    if isinstance(weights, str):
        weights = weights.strip()
        return weights or None
    return weights


def _is_existing_file(weights: Any) -> bool:
    return isinstance(weights, str) and os.path.isfile(weights)


def _looks_like_path(text: str, suffixes: tuple[str, ...]) -> bool:
    return "/" in text or "\\" in text or text.lower().endswith(suffixes)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _short_list(items: list[Any], limit: int = _MAX_LISTED) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", … ({len(items) - limit} more)" if len(items) > limit else "")


def _did_you_mean(name: str, valid: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, valid, n=5, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(name.lower(), [v.lower() for v in valid], n=5, cutoff=0.6)
    return f". Did you mean: {', '.join(prefix + c for c in close)}?" if close else ""


def _unknown_message(what: str, name: str, valid: list[str], prefix: str = "") -> str:
    suggestion = _did_you_mean(name, valid, prefix) or "."
    return f"unknown {what} {name!r}{suggestion} Valid names: {', '.join(prefix + v for v in valid)}."


def _spec_message(spec: str) -> str:
    message = (
        f"unknown model spec {spec!r}: use 'torchvision:<name>', 'timm:<name>', 'digits:<name>' or the path "
        "of a TorchScript / pickled model file"
    )
    family, sep, _ = spec.partition(":")
    if sep:
        message += _did_you_mean(family, list(SPEC_FAMILIES))
    else:
        try:
            from gradtrust.models.torchvision_models import _torchvision_names

            names = _torchvision_names()[0]
        except Exception:  # pragma: no cover
            names = []
        close = difflib.get_close_matches(spec, names, n=3, cutoff=0.75)
        if close:
            message += f". Did you mean: {', '.join('torchvision:' + c for c in close)}?"
    return message
