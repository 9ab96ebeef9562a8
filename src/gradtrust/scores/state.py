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
    """
    training = {module: module.training for module in model.modules()}
    requires_grad = [(p, p.requires_grad) for p in model.parameters()]
    grads_before = {p: p.grad for p, _ in requires_grad}
    try:
        model.eval()
        for p, _ in requires_grad:
            p.requires_grad_(False)
        yield model
    finally:
        for module, flag in training.items():
            module.training = flag
        for p, flag in requires_grad:
            p.requires_grad_(flag)
            p.grad = grads_before[p]
