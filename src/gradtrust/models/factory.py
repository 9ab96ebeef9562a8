"""``package.module:factory`` specs: a model built by the user's own code, with weights from a state-dict file.

``factory`` is any callable in an importable module that returns an ``nn.Module`` (a class or a function).
It is called with ``num_classes=N`` when ``num_classes`` is given (else with no argument). The module is
imported as Python would (the current directory is searched first, as ``python -m`` does), so this runs
the user's own code, never code from a weights file: the weights are read with ``weights_only=True``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from typing import Any

from torch import nn

from gradtrust.errors import ModelError, UnknownNameError
from gradtrust.models.base import LoadedModel
from gradtrust.models.files import wrap_module
from gradtrust.models.specs import first_line, spec_message

__all__ = ["FACTORY_SPEC", "is_factory_spec", "load_factory"]

FACTORY_SPEC = re.compile(r"^[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")


def is_factory_spec(spec: str) -> bool:
    """Whether ``spec`` reads as ``package.module:callable``."""
    return FACTORY_SPEC.match(spec) is not None


def load_factory(spec: str, weights: Any, num_classes: int | None) -> LoadedModel:
    """Import ``package.module``, call ``factory`` (``num_classes=`` when given), load ``weights`` into it."""
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the user's package in the current folder
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if getattr(exc, "name", None) == module_name.split(".")[0]:  # nothing of that name: a mistyped family?
            raise UnknownNameError(f"{spec_message(spec)} (no importable module {module_name!r} either: run from the "
                                   "folder that holds your package, or add it to PYTHONPATH)") from None
        raise ModelError(
            f"cannot import {module_name!r} for the model factory {spec!r}: {first_line(exc)}. Run from the folder "
            "that holds the package, or add it to PYTHONPATH"
        ) from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            callables = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
            raise ModelError(f"{module_name} has no {attr!r}; its callables: {', '.join(callables[:20]) or 'none'}")
        target = getattr(target, part)
    if not callable(target):
        raise ModelError(f"{spec} is a {type(target).__name__}, not a callable that builds a model")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if kwargs and not _accepts(target, "num_classes"):
        raise ModelError(f"{spec} takes no num_classes argument; drop --num-classes or add the parameter")
    try:
        built = target(**kwargs)
    except Exception as exc:
        raise ModelError(f"{spec}({', '.join(f'{k}={v}' for k, v in kwargs.items())}) failed: "
                         f"{type(exc).__name__}: {first_line(exc)}") from exc
    if not isinstance(built, nn.Module):
        raise ModelError(f"{spec} returned a {type(built).__name__}, not a torch.nn.Module")
    meta = {"family": "factory", "factory": spec,
            "module_class": f"{type(built).__module__}.{type(built).__qualname__}"}
    return wrap_module(built, weights, num_classes, meta, spec, "as built by the factory")


def _accepts(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
