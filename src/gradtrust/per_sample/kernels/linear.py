"""``nn.Linear``: ``∂L_i/∂W = Σ_t g_{i,t} a_{i,t}ᵀ``, ``∂L_i/∂b = Σ_t g_{i,t}`` (``t`` runs over any extra
dimensions, e.g. tokens); the weight norm in Gram ("ghost") form where that is cheaper."""

from __future__ import annotations

import torch
from torch import nn

from gradtrust.per_sample.registry import Kernel, register_kernel


def as_tokens(t: torch.Tensor) -> torch.Tensor:
    """(B, ..., F) → (B, T, F) in float32, T the product of the middle dimensions."""
    return t.reshape(t.shape[0], -1, t.shape[-1]).float()


def linear_weight_grads(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-sample ``∂L_i/∂W = Σ_t g_{i,t} a_{i,t}ᵀ`` of an ``nn.Linear``: shape (B, out, in)."""
    return torch.einsum("bto,bti->boi", as_tokens(g), as_tokens(a))


def linear_weight_sq_norms(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``‖Σ_t g_t a_tᵀ‖²_F`` per sample without forming the gradient when that is cheaper.

    With one token this is ``‖g‖²·‖a‖²``; with ``T`` tokens it is ``Σ_{t,t'} (a_t·a_t')(g_t·g_t')``
    ("ghost norm", Goodfellow 2015; Li et al. 2022), cheaper than materialising when ``T² < out·in``.
    """
    a3, g3 = as_tokens(a), as_tokens(g)
    tokens = a3.shape[1]
    if tokens == 1:
        return (g3.square().sum((1, 2))) * (a3.square().sum((1, 2)))
    if tokens * tokens < a3.shape[2] * g3.shape[2]:
        return (torch.bmm(a3, a3.transpose(1, 2)) * torch.bmm(g3, g3.transpose(1, 2))).sum((1, 2))
    return linear_weight_grads(a, g).square().sum((1, 2))


def token_sum_sq_norms(g: torch.Tensor) -> torch.Tensor:
    """``‖Σ_t g_{i,t}‖²`` per sample: the squared norm of a token-wise bias's per-sample gradient."""
    return as_tokens(g).sum(1).square().sum(1)


@register_kernel(nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear)
class LinearKernel(Kernel):
    """``nn.Linear`` (and the attention's out-projection class, which keeps its forward)."""

    def grads(self, module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"weight": linear_weight_grads(a, g)}
        if module.bias is not None:
            out["bias"] = as_tokens(g).sum(1)
        return out

    def sq_norms(self, module: nn.Module, a: torch.Tensor, g: torch.Tensor, chunk_bytes: int,
                 conv_strategy: str | None) -> dict[str, torch.Tensor]:
        out = {"weight": linear_weight_sq_norms(a, g)}
        if module.bias is not None:
            out["bias"] = token_sum_sq_norms(g)
        return out
