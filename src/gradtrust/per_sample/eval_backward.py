"""A cheaper backward for eval-mode BatchNorm in the passes that need only activation gradients.

In eval mode a BatchNorm layer is a fixed per-channel affine map, ``y = (x − μ)/√(σ² + ε) · γ + β`` with the
running statistics ``μ, σ²`` (Ioffe & Szegedy, ICML 2015), so its input gradient is one multiplication,
``∂L/∂x = g · γ/√(σ² + ε)``. PyTorch's CPU kernel ``native_batch_norm_backward`` takes 2–5× the forward's time
for it (it reduces over the batch for the parameter gradients' sake; measured at 16–576 channels, batch
8–128, ``benchmarks/bench_networks.py`` on mobilenet_v3_small: 13% of the input-gradient pass).

The gradient passes freeze every parameter, so while their forward pass is recorded :func:`cheap_batch_norm`
makes each eval-mode BatchNorm run :class:`EvalBatchNorm`: the module's own ``F.batch_norm`` forward (bit for
bit), the multiplication above as backward. Only on a CPU (cuDNN's kernel is fast), only for BatchNorm1d/2d/3d
with running statistics in eval mode and frozen affine parameters. docs/performance.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from gradtrust.nn.cache import submodules
from gradtrust.per_sample.kernels.normalisation import BATCH_NORM_TYPES


class EvalBatchNorm(torch.autograd.Function):
    """``F.batch_norm`` with fixed statistics, whose backward gives only ``∂L/∂x = g · γ/√(σ² + ε)``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
                weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
        ctx.save_for_backward(running_var, weight)
        ctx.eps = eps
        return F.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, eps)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        running_var, weight = ctx.saved_tensors
        dtype = torch.promote_types(g.dtype, torch.float32)  # at least float32, as the native kernel
        scale = torch.rsqrt(running_var.to(dtype) + ctx.eps)
        if weight is not None:
            scale = scale * weight.to(dtype)
        shape = (1, -1) + (1,) * (g.dim() - 2)
        return g * scale.to(g.dtype).view(shape), None, None, None, None, None


def _applies(module: nn.Module) -> bool:
    return (type(module) in BATCH_NORM_TYPES and not module.training and module.running_mean is not None
            and module.running_var is not None)


def _forward(module: nn.Module):
    original = type(module).forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        params = [p for p in (module.weight, module.bias) if p is not None]
        if x.device.type != "cpu" or any(p.requires_grad for p in params) or x.dim() < 2:
            return original(module, x)
        module._check_input_dim(x)  # type: ignore[operator]  # (a _BatchNorm: see _applies)
        return EvalBatchNorm.apply(x, module.running_mean, module.running_var, module.weight, module.bias,
                                   module.eps)

    return forward


@contextmanager
def cheap_batch_norm(model: nn.Module) -> Iterator[None]:
    """Within this context every eval-mode BatchNorm of ``model`` runs :class:`EvalBatchNorm` (see the module
    docstring); each module's own ``forward`` is back afterwards, even on error."""
    patched = [m for m in submodules(model) if _applies(m) and "forward" not in m.__dict__]
    for module in patched:
        module.forward = _forward(module)  # an instance attribute shadows the method until removed
    try:
        yield
    finally:
        for module in patched:
            module.__dict__.pop("forward", None)
