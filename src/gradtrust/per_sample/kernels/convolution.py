"""``nn.ConvNd`` (and subclasses keeping its forward): the weight gradient of the convolution of sample ``i``
alone, its squared norm by the cheapest of several exact ways; the bias gradient ``Σ_t g_{i,·,t}``."""

from __future__ import annotations

import torch
from torch import nn

from gradtrust.per_sample import conv_strategy
from gradtrust.per_sample.conv_strategy import (
    CONV_TYPES,
    as_conv,
    conv_precision_matmul,
    conv_weight_grads,
    unfold_patches,
)
from gradtrust.per_sample.registry import Kernel, register_kernel


def conv_weight_sq_norms(module: nn.Module, a: torch.Tensor, g: torch.Tensor, chunk_bytes: int,
                         strategy: str | None = None) -> torch.Tensor:
    """``‖∂L_i/∂W‖²_F`` per sample for a ``ConvNd``, (B,) float32, by the cheapest of the exact ways of
    :mod:`.conv_strategy` (a fixed rule on the shapes, on a CPU). ``strategy`` forces one wherever it applies;
    elsewhere the rule chooses (never a timing).

    On a GPU: the Gram form ``⟨g_iᵀ g_i, U_iᵀ U_i⟩`` (Goodfellow 2015; Bu et al. 2022) costs ``T²(K + O)``, the
    gradient ``g_i U_iᵀ`` itself ``T·K·O``; late layers of a CNN have few positions and many channels, where
    the Gram form is ~10× cheaper.
    """
    conv = as_conv(module)
    if strategy not in (None, "auto") and conv_strategy.applies(strategy, conv, a, g, chunk_bytes):
        return conv_strategy.sq_norms(strategy, conv, a, g, chunk_bytes)
    if g[0, 0].numel() == 1 and conv.groups == 1 and conv_strategy.is_pointwise(conv):
        # one output position (squeeze-excitation): ∂L_i/∂W = g_i a_iᵀ, so ‖∂L_i/∂W‖² = ‖g_i‖²·‖a_i‖²
        first = a.float().flatten(2)[:, :, 0]  # the position it reads: the first of every spatial dimension
        return g.float().flatten(1).square().sum(1) * first.square().sum(1)
    if a.device.type == "cpu":
        return conv_strategy.auto_sq_norms(conv, a, g, chunk_bytes)
    out_positions = g[0, 0].numel()
    k = conv.weight[0].numel()
    o = conv.weight.shape[0]
    ghost_cost = out_positions * out_positions * (k + o)
    # The unfolded patches cost memory traffic the FLOP count ignores: take the Gram form only when it is
    # at most half the work (resnet18: layer4 and its downsample, not layer3).
    if type(conv) is nn.Conv2d and conv.groups == 1 and 2 * ghost_cost <= out_positions * k * o:
        norms = []
        per_sample_bytes = 4 * (out_positions * (k + out_positions) + a[0].numel())
        step = max(1, chunk_bytes // per_sample_bytes)
        for start in range(0, a.shape[0], step):
            patches = unfold_patches(conv, a[start:start + step])  # (b, K, T)
            grads = g[start:start + step].float().flatten(2)  # (b, O, T)
            with conv_precision_matmul(a.device):
                gram_u = torch.bmm(patches.transpose(1, 2), patches)
                gram_g = torch.bmm(grads.transpose(1, 2), grads)
            norms.append((gram_u * gram_g).sum((1, 2)))
        return torch.cat(norms)
    per_sample_bytes = 4 * (conv.weight.numel() + k * out_positions)  # gradient + unfolded patches
    step = max(1, chunk_bytes // per_sample_bytes)
    return torch.cat([conv_weight_grads(module, a[i:i + step], g[i:i + step]).flatten(1).square().sum(1)
                      for i in range(0, a.shape[0], step)])


@register_kernel(*CONV_TYPES, subclasses=True)
class ConvKernel(Kernel):
    """A convolution with explicit zero padding (string padding and other padding modes go to a unit)."""

    def supports(self, module: nn.Module) -> bool:
        return isinstance(module.padding, tuple) and module.padding_mode == "zeros"

    def grads(self, module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"weight": conv_weight_grads(module, a, g)}
        if module.bias is not None:
            out["bias"] = g.float().flatten(2).sum(-1)
        return out

    def sq_norms(self, module: nn.Module, a: torch.Tensor, g: torch.Tensor, chunk_bytes: int,
                 conv_strategy: str | None) -> dict[str, torch.Tensor]:
        out = {"weight": conv_weight_sq_norms(module, a, g, chunk_bytes, conv_strategy)}
        if module.bias is not None:
            out["bias"] = g.float().flatten(2).sum(-1).square().sum(1)
        return out
