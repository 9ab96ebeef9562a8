"""The registry of trust-score methods (timm style): the CLI and the API list the same names.

A method is a small pure function of per-batch quantities. It declares which *passes* of the network it
needs (``"forward"``, ``"odin"``, ``"per_sample_gradients"``, ``"mc_dropout"``); the engine
(:mod:`gradtrust.scores.engine`) computes each needed pass once per batch and hands every method the same
:class:`~gradtrust.scores.passes.BatchPasses`. Adding a method means adding one function and one
``@register_method`` line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch

from gradtrust.errors import UnknownNameError

if TYPE_CHECKING:
    from gradtrust.scores.passes import BatchPasses

class MethodOutput(NamedTuple):
    """What a method function returns, left on the model's device: the engine copies every method's
    output to the CPU in one transfer and applies the NaN policy there.

    ``values``: (B,) one value per sample; ``undefined``: ``{reason: (B,) bool mask}``, in priority order
    (a sample's recorded reason is the first mask that holds). Samples with non-finite logits, and values
    that come out NaN for any other reason, are handled by the engine for every method.
    """

    values: torch.Tensor
    undefined: dict[str, torch.Tensor]


@dataclass(frozen=True)
class Method:
    """A registered trust score: its function, the passes it needs and the options it reads."""

    name: str
    fn: Callable[[BatchPasses], MethodOutput]
    needs: frozenset[str]
    options: tuple[str, ...] = ()
    summary: str = ""
    source: str = ""

    def __call__(self, passes: BatchPasses) -> MethodOutput:
        return self.fn(passes)


_REGISTRY: dict[str, Method] = {}


def register_method(name: str, *, needs: set[str] | frozenset[str], options: tuple[str, ...] = (), summary: str = "",
                    source: str = ""):
    """Decorator registering ``fn(passes) -> (values, reasons)`` as the trust score ``name``."""

    def decorate(fn: Callable[[BatchPasses], MethodOutput]):
        if name in _REGISTRY:
            raise ValueError(f"a trust-score method named {name!r} is already registered")
        _REGISTRY[name] = Method(name=name, fn=fn, needs=frozenset(needs), options=tuple(options),
                                 summary=summary or _first_paragraph(fn.__doc__), source=source)
        return fn

    return decorate


def _first_paragraph(doc: str | None) -> str:
    """The docstring's first paragraph on one line (its first line alone can stop mid-sentence)."""
    lines = []
    for line in (doc or "").strip().splitlines():
        if not line.strip():
            break
        lines.append(line.strip())
    return " ".join(lines)


def available_methods() -> list[str]:
    """Names of every registered trust score, in registration order (cheap forward-pass scores first)."""
    _ensure_loaded()
    return list(_REGISTRY)


def get_method(name: str) -> Method:
    """The :class:`Method` called ``name``; an unknown name raises an error listing the valid ones."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownNameError(
            f"unknown trust-score method {name!r}.{hint} Valid methods: {', '.join(_REGISTRY)}."
        ) from None


def _ensure_loaded() -> None:
    # The method modules register themselves on import; importing them here keeps registry.py free of
    # import cycles while guaranteeing the registry is complete whenever it is read.
    from gradtrust.scores import methods  # noqa: F401
