"""The output contract: which part of a model's output is its logits — one rule for every capability.

:func:`logits_of` reads a model's output as its logits ``(B, C)``:

* with ``output_index`` given: ``output[output_index]`` (a position in a tuple or list, a key of a dict), read
  by the rules below; a single tensor output with an ``output_index`` is refused (indexing it would pick samples);
* a tensor: itself;
* an object with a ``.logits`` tensor (a Hugging Face ``ModelOutput``, torchvision's ``GoogLeNetOutputs``): that;
* a one-element tuple or list holding a tensor: that tensor;
* anything else — several outputs in particular — raises :class:`ModelError` saying to pass ``output_index``.

``gradtrust.score``, ``gradtrust.explain``, ``gradtrust.gradient_features`` and ``Introspective`` take
``output_index`` and run the model under :func:`selecting_output`, so every pass inside them (hooks, vmap,
per-sample loops) sees the logits tensor; :class:`SelectOutput` makes the choice part of the model instead
(``load_model(..., output_index=…)``, ``gradtrust score --output-index``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from gradtrust.errors import ModelError

__all__ = ["SelectOutput", "logits_of", "model_logits", "selecting_output"]


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
    raise ModelError(f"the model returned {type(output).__name__}, not a logits tensor"
                     + (f" at output_index={output_index!r}." if output_index is not None else "."))


def model_logits(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Run ``model`` on ``inputs`` and return its logits (:func:`logits_of` without ``output_index``: inside
    :func:`selecting_output` the model already returns the selected tensor)."""
    return logits_of(model(inputs))


@contextlib.contextmanager
def selecting_output(module: nn.Module, output_index: int | str | None) -> Iterator[nn.Module]:
    """While inside, ``module(x)`` returns ``logits_of(its output, output_index)``: a forward hook on the root
    module, removed on exit (also on error). ``output_index=None`` changes nothing.

    A hook rather than a wrapper module, so that parameter and layer names, hooks on submodules and the
    per-model cache all see the user's model as it is."""
    if output_index is None:
        yield module
        return
    if isinstance(module, torch.jit.ScriptModule):
        raise ModelError("output_index cannot be applied to a TorchScript module by a hook; wrap it instead: "
                         f"gradtrust.models.SelectOutput(model, {output_index!r}) or load_model(..., output_index=…).")
    handle = module.register_forward_hook(lambda mod, args, out: logits_of(out, output_index))
    try:
        yield module
    finally:
        handle.remove()


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
