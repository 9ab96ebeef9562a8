"""The declarations everything else reads: a scoring option (:class:`Param`), what a method returns
(:class:`MethodOutput`), and a pass of the network (:class:`PassSpec`, registered with :func:`register_pass`,
named ``Pass.<NAME>``).

The set of passes is open: a capability or a plug-in adds one as the engine adds its own
(``gradtrust.explanations`` adds ``VOICE``). This module imports nothing of :mod:`gradtrust.scores`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from gradtrust.errors import OptionError, RegistrationError

if TYPE_CHECKING:
    import torch

_KIND = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


@dataclass(frozen=True)
class Param:
    """One scoring option: its name, type, default, help text and validity check (``check(value)`` returns an
    error message for a bad value, or None)."""

    name: str
    type: type
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None
    choices: tuple[str, ...] = ()

    def validate(self, value: Any) -> Any:
        """The value, converted to this parameter's type where that is lossless; an :class:`OptionError` otherwise."""
        if value is None and self.default is None:
            return None
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise OptionError(f"{self.name} must be {_KIND.get(self.type, self.type.__name__)}"
                              f"{' or None' if self.default is None else ''} (got {value!r})")
        if self.choices and value not in self.choices:
            raise OptionError(f"{self.name} must be one of {', '.join(map(repr, self.choices))} (got {value!r})")
        problem = self.check(value) if self.check is not None else None
        if problem:
            raise OptionError(f"{self.name} {problem} (got {value!r})")
        return value

    def parse(self, text: str) -> Any:
        """Parse the command-line text of a value (``--option name=text``)."""
        if text.lower() == "none" and self.default is None:
            return None
        if self.type is bool:
            if text.lower() in ("1", "true", "yes", "0", "false", "no"):
                return text.lower() in ("1", "true", "yes")
            raise OptionError(f"option {self.name} must be true or false, got {text!r}")
        try:
            value = self.type(text)
        except (TypeError, ValueError):
            expected = _KIND.get(self.type, self.type.__name__)
            raise OptionError(f"{self.name} must be {expected}{' (or none)' if self.default is None else ''}") from None
        return self.validate(value)

    def describe(self) -> str:
        """``name=default`` as the CLI help shows it (choices with ``|``)."""
        shown = "|".join(self.choices) if self.choices else ("none" if self.default is None else self.default)
        return f"{self.name}={shown}"


class MethodOutput(NamedTuple):
    """What a method function returns, left on the model's device (:mod:`gradtrust.scores.packing`):
    ``values`` (B,) one value per sample; ``undefined``: ``{reason: (B,) bool mask}``, in priority order (a
    sample's recorded reason is the first mask that holds). Non-finite logits and NaN values are handled by
    the engine for every method.
    """

    values: torch.Tensor
    undefined: dict[str, torch.Tensor]


@dataclass(frozen=True, eq=False)  # compared by identity: a method's ``needs`` holds the registered objects
class PassSpec:
    """A pass of the network over one batch, which methods declare in ``needs`` as ``Pass.<name>``.

    Attributes:
        name: an upper-case identifier, ``Pass.<name>`` (``"ODIN"``).
        provides: ``{quantity: compute}``: what a method reads as ``batch.<quantity>``. ``compute(ctx)`` gets
            the batch's :class:`~gradtrust.scores.passes.BatchPasses` (where a pass reads other passes too) and
            runs at most once per batch.
        params: the options the pass reads (a method needing the pass reports them as its parameters).
        needs_graph: whether the shared forward pass must record an autograd graph for this pass: a bool, or
            ``needs_graph(options) -> bool``.
        unavailable: ``unavailable(ctx) -> reason | None``: why the pass cannot run on this model; every
            method needing it is then skipped with that reason (raised for an explicitly requested one).
        module: the module that registered the pass.
    """

    name: str
    provides: Mapping[str, Callable[[Any], Any]]
    params: tuple[Param, ...] = ()
    needs_graph: bool | Callable[[Any], bool] = False
    unavailable: Callable[[Any], str | None] | None = None
    module: str = field(default="")

    def records_graph(self, options: Any) -> bool:
        """Whether this pass, with these options, needs the forward pass to record an autograd graph."""
        return self.needs_graph(options) if callable(self.needs_graph) else bool(self.needs_graph)

    def __repr__(self) -> str:
        return f"Pass.{self.name}"


_PASSES: dict[str, PassSpec] = {}
_PROVIDERS: dict[str, PassSpec] = {}  # quantity → the pass that provides it
#: attributes every batch has, which no pass may provide
BATCH_ATTRIBUTES = frozenset({"model", "inputs", "options", "sample_ids", "needs", "batch_size"})


def register_pass(spec: PassSpec) -> PassSpec:
    """Register ``spec`` (its name and quantities must be new) and return it; ``Pass.<name>`` then names it.
    Registration order is the order of ``for p in Pass`` (of a method's passes' checks and options)."""
    if not isinstance(spec, PassSpec):
        raise RegistrationError(f"expected a PassSpec, got {type(spec).__name__}")
    if not (spec.name.isidentifier() and spec.name.isupper()):
        raise RegistrationError(f"a pass name must be an upper-case identifier (Pass.{spec.name}), got {spec.name!r}")
    if spec.name in _PASSES:
        raise RegistrationError(f"a pass named Pass.{spec.name} is already registered (by {_PASSES[spec.name].module})")
    for quantity in spec.provides:
        owner = _PROVIDERS.get(quantity)
        if not quantity.isidentifier() or quantity.startswith("_") or quantity in BATCH_ATTRIBUTES or owner:
            why = f"Pass.{owner.name} provides it already" if owner else "it must be a public identifier"
            raise RegistrationError(f"Pass.{spec.name} cannot provide {quantity!r}: {why}.")
    _PASSES[spec.name] = spec
    _PROVIDERS.update(dict.fromkeys(spec.provides, spec))
    return spec


def unregister_pass(name: str) -> None:
    """Remove the pass ``Pass.<name>`` and its quantities (tests and interactive sessions that redefine one)."""
    spec = _PASSES.pop(name, None)
    for quantity in spec.provides if spec is not None else ():
        _PROVIDERS.pop(quantity, None)


def pass_providing(quantity: str) -> PassSpec | None:
    """The registered pass that provides ``quantity``, or None."""
    return _PROVIDERS.get(quantity)


class _PassNamespace(type):
    """``Pass.NAME`` is the registered pass of that name; ``for p in Pass`` runs over all, in registration order."""

    def __getattr__(cls, name: str) -> PassSpec:
        try:
            return _PASSES[name]
        except KeyError:
            raise AttributeError(f"no pass Pass.{name} is registered (registered: "
                                 f"{', '.join('Pass.' + n for n in _PASSES)})") from None

    def __iter__(cls) -> Iterator[PassSpec]:
        return iter(list(_PASSES.values()))


class Pass(metaclass=_PassNamespace):
    """The registered passes, by name: ``Pass.FORWARD``, ``Pass.ODIN``… (an open set: :func:`register_pass`;
    :mod:`gradtrust.scores.passes` tabulates what the built-in ones provide and cost)."""
