"""What a trust-score method *is*: the passes it needs, its parameters, its formula and source.

Everything else reads these declarations — the engine (which passes to run, whether a method applies),
``gradtrust methods`` and the CLI help, the manifest's parameters, the report's column order and names,
and the tests. A method is declared once, with :func:`gradtrust.scores.register_method`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

if TYPE_CHECKING:
    from gradtrust.scores.view import BatchView


class Pass(enum.Enum):
    """A pass of the network over one batch; each one needed by any method runs once per batch.

    =============================  ===================================================================
    ``FORWARD``                    logits, probabilities, prediction, penultimate features (1 forward;
                                   every method gets it, declared or not)
    ``COUNTERFACTUAL_GRADIENTS``   per-sample gradient statistics of the final (or ``layer=``) weights
                                   under the confounding-label losses: closed forms from the forward
                                   pass, or per-sample autograd on another layer
    ``ODIN``                       the input gradient of ODIN's loss and a forward on the perturbed input
    ``PARAMETER_GRADIENTS``        per-sample squared gradient norm of every parameter tensor (Purview)
    ``MC_DROPOUT``                 ``T`` forward passes with seeded dropout masks
    =============================  ===================================================================
    """

    FORWARD = "forward"
    COUNTERFACTUAL_GRADIENTS = "counterfactual_gradients"
    ODIN = "odin"
    PARAMETER_GRADIENTS = "parameter_gradients"
    MC_DROPOUT = "mc_dropout"


_KIND = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


@dataclass(frozen=True)
class Param:
    """One scoring option: its name, type, default, help text and validity check.

    ``check(value)`` returns an error message for a bad value (or None). ``parse`` turns the text of a
    ``--option name=value`` into the value (``None`` for the text "none" where the default is None).
    """

    name: str
    type: type
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None
    choices: tuple[str, ...] = ()

    def validate(self, value: Any) -> Any:
        """The value, converted to this parameter's type where that is lossless; a clear error otherwise."""
        if value is None and self.default is None:
            return None
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise ValueError(f"{self.name} must be {_KIND.get(self.type, self.type.__name__)}"
                             f"{' or None' if self.default is None else ''} (got {value!r})")
        if self.choices and value not in self.choices:
            raise ValueError(f"{self.name} must be one of {', '.join(map(repr, self.choices))} (got {value!r})")
        problem = self.check(value) if self.check is not None else None
        if problem:
            raise ValueError(f"{self.name} {problem} (got {value!r})")
        return value

    def parse(self, text: str) -> Any:
        """Parse the command-line text of a value (``--option name=text``)."""
        if text.lower() == "none" and self.default is None:
            return None
        if self.type is bool:
            if text.lower() in ("1", "true", "yes"):
                return True
            if text.lower() in ("0", "false", "no"):
                return False
            raise ValueError(f"option {self.name} must be true or false, got {text!r}")
        try:
            value = self.type(text)
        except (TypeError, ValueError):
            expected = _KIND.get(self.type, self.type.__name__)
            raise ValueError(f"{self.name} must be {expected}{' (or none)' if self.default is None else ''}") from None
        return self.validate(value)

    def describe(self) -> str:
        """``name=default`` as the CLI help shows it (choices with ``|``)."""
        shown = "|".join(self.choices) if self.choices else ("none" if self.default is None else self.default)
        return f"{self.name}={shown}"


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
class MethodSpec:
    """A registered trust score. Higher values always mean *more trustworthy*.

    Attributes:
        name: the registry name (``result[name]``, the results column, ``--methods``).
        fn: ``fn(batch: BatchView) -> MethodOutput``; reads only the passes in ``needs``.
        needs: the passes the method reads (:class:`Pass`); ``FORWARD`` is always included.
        display_name: the name tables and figures show.
        summary: the formula, one sentence (``gradtrust methods`` prints it).
        source: the paper (and the release) the definition follows.
        params: the method's own options (a pass's options, e.g. ODIN's temperature, belong to the pass).
        applies: optional ``applies(batch) -> reason | None``: why the method does not apply to a model,
            beyond what its passes already check.
        resolve: optional ``resolve(batch, name, value) -> value``: the value of a parameter actually used
            (e.g. ``topk=None`` → ``min(10, C − 1)``), recorded in the manifest.
        in_paper: whether the GradTrust paper's table compares this method (the report's summary ranks
            GradTrust among these as well as among all methods).
    """

    name: str
    fn: Callable[[BatchView], MethodOutput]
    needs: frozenset[Pass]
    display_name: str
    summary: str
    source: str = ""
    params: tuple[Param, ...] = ()
    applies: Callable[[BatchView], str | None] | None = None
    resolve: Callable[[BatchView, str, Any], Any] | None = None
    in_paper: bool = False
    module: str = field(default="", compare=False)

    def __call__(self, batch: BatchView) -> MethodOutput:
        return self.fn(batch)

    @cached_property
    def parameter_names(self) -> tuple[str, ...]:
        """The options this method reads: its own, then those of the passes it needs (computed once: the
        engine asks for every method of every batch)."""
        from gradtrust.scores.options import PASS_PARAMS

        names = [p.name for p in self.params]
        for needed in Pass:  # enum order, so the list is stable
            if needed in self.needs:
                names += [p.name for p in PASS_PARAMS.get(needed, ()) if p.name not in names]
        return tuple(names)
