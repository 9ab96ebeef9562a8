"""One forward pass that captures the explained layer's output (and, when gradients are needed, starts the
autograd graph there, so the backward never goes further back than that layer)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gradtrust.explanations.layers import LayerSpec, run_model
from gradtrust.nn.hooks import graph_root, recording


@dataclass
class Captured:
    """The logits and the layer's activations of one batch.

    ``leaf`` is the raw layer output as an autograd leaf (``None`` without a graph); ``activations`` is its
    canonical ``(B, K, *spatial)`` view (:meth:`LayerSpec.canonical`); ``logits`` keep their graph to
    ``leaf`` when one was recorded.
    """

    logits: torch.Tensor
    activations: torch.Tensor
    leaf: torch.Tensor | None
    #: name → (input, output) of the last call of every ``nn.Linear`` (closed-form candidates)
    linears: dict[str, tuple[torch.Tensor, torch.Tensor]]


def capture(module: nn.Module, inputs: torch.Tensor, spec: LayerSpec, graph: bool) -> Captured:
    """Run ``module`` on ``inputs`` once, capturing layer ``spec.name`` (its last call when it runs twice).

    With ``graph=True`` the layer's output is replaced by a fresh leaf that requires grad (and a clone of it
    goes on through the network, so that an in-place operation after the layer — ``ReLU(inplace=True)`` —
    neither fails on the leaf nor changes the captured values). Parameters are frozen by the caller, so the
    graph holds only the part of the network after the layer.
    """
    seen: list[torch.Tensor] = []

    def hook(mod, args, output):
        if not isinstance(output, torch.Tensor):
            return None
        if graph:
            seen.clear()  # the last call's leaf
            return graph_root(output, seen)
        # A copy: an in-place operation downstream (ReLU(inplace=True)) must not change what was captured.
        seen[:] = [output.clone()]
        return None

    handle = module.get_submodule(spec.name).register_forward_hook(hook)
    try:
        with recording({n: m for n, m in module.named_modules() if isinstance(m, nn.Linear)}) as calls, \
                torch.set_grad_enabled(graph):
            logits = run_model(module, inputs.detach())
    finally:
        handle.remove()
    out = seen[-1]
    return Captured(logits=logits, activations=spec.canonical(out.detach() if graph else out),
                    leaf=out if graph else None, linears={c.name: (c.input, c.output) for c in calls})

