"""The output contract: which part of a model's output is its logits — one rule for every capability.

:func:`logits_of` reads a model's output as its logits: with ``output_index`` given, ``output[output_index]``
(a position in a tuple or list, a key of a dict; refused for a single tensor, where it would pick samples), then:
a tensor is itself; an object with a ``.logits`` tensor (Hugging Face ``ModelOutput``, torchvision's
``GoogLeNetOutputs``) gives that; a one-element tuple or list its tensor; anything else — several outputs in
particular — raises :class:`ModelError` saying to pass ``output_index``. :class:`SelectOutput` makes the choice
part of the model (``load_model(..., output_index=…)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from gradtrust.errors import ModelError

__all__ = ["SelectOutput", "logits_of", "model_logits"]


def logits_of(output: Any, output_index: int | str | None = None) -> torch.Tensor:
    """The logits tensor of a model's ``output`` by the rules of the module docstring; :class:`ModelError`
    (a ``GradTrustError``) when they do not single one out."""
    if output_index is not None:
        if isinstance(output, torch.Tensor):
            raise ModelError(f"output_index={output_index!r} picks one of several outputs, but the model returned one "
                             "tensor: leave output_index out.")
        try:
            output = output[output_index]
        except (IndexError, KeyError, TypeError) as exc:
            size = f" of {len(output)} outputs" if isinstance(output, (tuple, list, Mapping)) else ""
            raise ModelError(f"output_index={output_index!r} does not select an output of the model: it returned "
                             f"a {type(output).__name__}{size}.") from exc
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(getattr(output, "logits", None), torch.Tensor):
        return output.logits
    if isinstance(output, (tuple, list)) and len(output) == 1 and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, (tuple, list, Mapping)) and output_index is None:
        key = next(iter(output)) if isinstance(output, Mapping) and output else 0
        raise ModelError(f"the model returned a {type(output).__name__} of {len(output)} outputs, not one logits "
                         f"tensor; say which output holds the logits: output_index={key!r} (gradtrust.score, "
                         "explain, gradient_features and Introspective take it; or load_model(..., "
                         f"output_index={key!r}), gradtrust score --output-index {key}).")
    where = "" if output_index is None else f" at output_index={output_index!r}"
    raise ModelError(f"the model returned {type(output).__name__}{where}, not a logits tensor.")


def model_logits(model: nn.Module, inputs: torch.Tensor, output_index: int | str | None = None) -> torch.Tensor:
    """Run ``model`` on ``inputs`` and return its logits (:func:`logits_of`), checked to be ``(B, C)``."""
    logits = logits_of(model(inputs), output_index)
    if logits.dim() != 2 or logits.shape[0] != inputs.shape[0]:
        raise ModelError(f"the model returned logits of shape {tuple(logits.shape)}; expected (batch={inputs.shape[0]}, "
                         "classes). GradTrust reads classifiers whose output is one logit per class.")
    return logits


class SelectOutput(nn.Module):
    """``forward(x) = logits_of(model(x), index)``: a model whose forward returns several outputs (a tuple, a
    list, a dict) as a classifier; its layers are named ``model.<name>``."""

    def __init__(self, model: nn.Module, index: int | str) -> None:
        super().__init__()
        self.model = model
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(x), self.index)

    def extra_repr(self) -> str:
        return f"index={self.index!r}"
