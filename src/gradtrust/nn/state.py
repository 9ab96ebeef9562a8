"""Scoring leaves the model exactly as it found it: training flags, ``requires_grad``, ``.grad`` and hooks."""

from __future__ import annotations

import torch
from torch import nn

from gradtrust.errors import ModelError
from gradtrust.nn.cache import submodules
from gradtrust.nn.outputs import logits_of


class ScoringState:
    """Context manager: ``model`` in eval mode (and, once :meth:`freeze` is called, every parameter frozen);
    both restored afterwards, even on error.

    Why frozen: every gradient GradTrust needs is taken with respect to the input or per sample from hooks,
    so freezing stops autograd from wasting time on batch-summed parameter gradients and guarantees that no
    ``.grad`` is written. The engine freezes only before it records a graph.

    Only what differs is touched (setting ``training`` and ``requires_grad`` on each of resnet50's modules and
    parameters, twice, cost a third of the forward-pass scores' time at batch 32 on a GPU).

    With ``output_index``, ``model(x)`` returns ``logits_of(its output, output_index)`` inside, by a forward hook
    (a wrapper module would change the model's names and cache entries).
    """

    def __init__(self, model: nn.Module, freeze: bool = True, output_index: int | str | None = None):
        if output_index is not None and isinstance(model, torch.jit.ScriptModule):  # hooks raise on these
            raise ModelError("output_index cannot be applied to a TorchScript module; wrap it instead: "
                             f"gradtrust.models.SelectOutput(model, {output_index!r}) or load_model(..., output_index=…).")
        self.model = model
        self._output_index = output_index
        self._select: torch.utils.hooks.RemovableHandle | None = None
        self._freeze_on_enter = freeze
        self._training: list[nn.Module] = []
        self._unfrozen: list[nn.Parameter] = []
        self._grads: list = []
        self._frozen = False

    def __enter__(self) -> nn.Module:
        self._training = [module for module in submodules(self.model) if module.training]
        if self._training:
            self.model.eval()
        if self._freeze_on_enter:
            self.freeze()
        if self._output_index is not None:
            index = self._output_index
            self._select = self.model.register_forward_hook(lambda module, args, out: logits_of(out, index))
        return self.model

    def freeze(self) -> None:
        """Set ``requires_grad=False`` on every parameter (once; restored on exit)."""
        if self._frozen:
            return
        self._frozen = True
        self._unfrozen = [p for p in self.model.parameters() if p.requires_grad]
        self._grads = [p.grad for p in self._unfrozen]
        for p in self._unfrozen:
            p.requires_grad_(False)

    def __exit__(self, *exc) -> None:
        if self._select is not None:
            self._select.remove()
        for module in self._training:
            module.training = True
        for p, grad in zip(self._unfrozen, self._grads, strict=True):
            p.requires_grad_(True)
            p.grad = grad


#: ``with scoring_state(model):`` — ``model`` in eval mode with every parameter frozen; ``freeze=False`` leaves
#: the parameters until ``state.freeze()`` is called; ``output_index`` selects the logits among several outputs.
scoring_state = ScoringState
