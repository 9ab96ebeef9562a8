"""What a method function sees of a batch: the quantities of the passes it declared, and nothing else.

Reading a quantity whose pass the method did not declare raises :class:`UndeclaredPassError`: without this
guard a method that read per-sample gradients while declaring only the forward pass got ``-0.0``, or another
value when another method in the same call had asked for the pass.
"""

from __future__ import annotations

from typing import Any

from gradtrust.errors import GradTrustError
from gradtrust.scores.spec import BATCH_ATTRIBUTES, Pass, PassSpec, pass_providing


class UndeclaredPassError(GradTrustError):
    """A method read a quantity of a pass it did not declare in ``needs``."""


class BatchView:
    """The per-batch quantities a method may read, each checked against the method's declared passes.

    Always there: ``options``, ``model`` (in its scoring state), ``inputs`` (on the model's device and dtype),
    ``sample_ids`` and ``batch_size``. Every other attribute is a quantity of a registered pass (``batch.logits``
    of ``Pass.FORWARD``…; documented in the passes' modules).
    """

    __slots__ = ("_method", "_needs", "_passes")

    def __init__(self, passes: Any, method: str, needs: frozenset[PassSpec]):
        self._passes = passes
        self._method = method
        self._needs = needs | {Pass.FORWARD}

    def __getattr__(self, quantity: str) -> Any:
        if quantity in BATCH_ATTRIBUTES:
            return getattr(self._passes, quantity)
        needed = pass_providing(quantity)
        if needed is None:
            raise AttributeError(f"a batch has no quantity {quantity!r}: no registered pass provides it")
        if needed not in self._needs:
            declared = ", ".join(sorted(f"Pass.{p.name}" for p in self._needs))
            raise UndeclaredPassError(
                f"method {self._method!r} read {quantity}, which comes from Pass.{needed.name}, but declared "
                f"needs={{{declared}}}. Add Pass.{needed.name} to its needs in register_method(...).")
        return getattr(self._passes, quantity)
