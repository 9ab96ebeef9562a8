"""Scoring leaves the model exactly as it found it: training flags, ``requires_grad`` and ``.grad``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def scoring_state(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with every parameter frozen; restore both afterwards, even on error.

    Why frozen: every gradient GradTrust needs is taken with ``torch.autograd.grad`` with respect to the
    input or computed per sample from hooks, so no parameter needs ``requires_grad``. Freezing them stops
    autograd from computing (and wasting time on) batch-summed parameter gradients and guarantees that no
    ``.grad`` is ever written.

    Only what differs is touched: a model already in eval mode with frozen parameters costs a walk over its
    modules and nothing else (on a GPU this context is entered once per batch, and setting ``training`` on
    every one of resnet50's 151 modules twice cost about as much as the forward-pass scores themselves).
    """
    training = [module for module in model.modules() if module.training]
    unfrozen = [p for p in model.parameters() if p.requires_grad]
    grads_before = [p.grad for p in unfrozen]
    try:
        if training:
            model.eval()
        for p in unfrozen:
            p.requires_grad_(False)
        yield model
    finally:
        for module in training:
            module.training = True
        for p, grad in zip(unfrozen, grads_before, strict=True):
            p.requires_grad_(True)
            p.grad = grad
