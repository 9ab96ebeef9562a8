"""Per-sample convolution weight gradients as one depthwise convolution (the "correlate" strategy).

For a ``ConvNd`` with ``G`` groups, ``C_g`` input and ``O_g`` output channels per group, stride ``s``,
dilation ``d`` and zero padding, sample ``i``'s weight gradient at kernel offset ``k`` is the correlation of
its (padded) input with its own output gradient:

    ∂L_i/∂W[γ·O_g + o, c, k] = Σ_t g_i[γ·O_g + o, t] · a_i[γ·C_g + c, t·s + k·d].

Read with the output gradient as the kernel, this is a depthwise convolution: every one of the ``B·C``
input planes is one channel, the ``O_g`` output gradients of its group are that channel's ``O_g`` kernels
(channel multiplier ``O_g``), the kernel is dilated by ``s`` and strided by ``d``. One call of the native
depthwise kernel (oneDNN on a CPU) gives all ``B·O·C_g·|k|`` entries with ``B·O·C_g·|k|·T`` multiply-adds,
as many as the forward pass of the layer, and reads the input once instead of once per kernel offset.

A stride ``s > 1`` would make that kernel ``s``-dilated, which native kernels handle poorly; the input is
split into its ``s`` phases per dimension instead (polyphase decomposition): offsets ``k`` with
``k·d ≡ r (mod s)`` read only the phase ``a[r::s]``, where they are an undilated correlation strided by
``d / gcd(s, d)``.

The output gradient is repeated ``C_g`` times as kernels, so this suits depthwise layers (``C_g = 1``:
MobileNet, EfficientNet, ConvNeXt's 7×7), where it is up to 10× faster than the grouped weight-gradient
kernel. docs/per_sample.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import product

import torch
import torch.nn.functional as F
from torch.nn.modules.conv import _ConvNd

from gradtrust.errors import InputError


def _phases(kernel: int, stride: int, dilation: int) -> list[tuple[int, int, int, int, int]]:
    """The polyphase plan of one spatial dimension: (phase r, first offset k0, offset step, u0, count).

    Offsets ``k0, k0 + step, …`` (``count`` of them) read ``a[(t + u0 + m·D)·s + r]`` for the ``m``-th of
    them, ``D = d / gcd(s, d)``: a correlation of the phase ``a[r::s]`` from ``u0``, strided by ``D``.
    """
    step = stride // math.gcd(stride, dilation)  # offsets k0 + m·step share the phase (k0·d) mod s
    return [((k0 * dilation) % stride, k0, step, (k0 * dilation) // stride, len(range(k0, kernel, step)))
            for k0 in range(min(step, kernel))]


def correlate_weight_grads(conv: _ConvNd, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients of ``conv`` (B, O, C_g, *kernel), float32, by depthwise correlation.

    ``a`` is the layer input (B, C, *spatial), ``g`` the output gradient (B, O, *out_spatial); explicit
    zero padding only (the hook path's condition). Formula and source: the module docstring.
    """
    batch, channels = a.shape[:2]
    dims = a.dim() - 2
    groups, out_channels = conv.groups, g.shape[1]
    per_group_in, per_group_out = channels // groups, out_channels // groups
    out_spatial = tuple(g.shape[2:])
    kernel = tuple(conv.kernel_size)
    padding = conv.padding
    if isinstance(padding, str):
        raise InputError(f"convolution padding {padding!r} is not supported; use explicit padding")
    a, g = a.float(), g.float()
    # kernels: plane (b, γ, c) gets the O_g output gradients of its group, g[b, γ·O_g:(γ+1)·O_g]
    kernels = g.reshape(batch, groups, 1, per_group_out, *out_spatial)
    kernels = kernels.expand(batch, groups, per_group_in, per_group_out, *out_spatial)
    kernels = kernels.reshape(batch * channels * per_group_out, 1, *out_spatial)
    planes = a.reshape(1, batch * channels, *a.shape[2:])
    result = a.new_empty(batch * channels * per_group_out, *kernel)
    if all(s == 1 for s in conv.stride):  # one call; the convolution pads by itself
        out = torch.convolution(planes, kernels, None, list(conv.dilation), list(padding), [1] * dims,
                                False, [0] * dims, batch * channels)
        first: tuple[int | slice, ...] = (0, slice(None), *(slice(0, k) for k in kernel))
        result.copy_(out[first])
    else:
        pads = [p for pad in reversed(padding) for p in (pad, pad)]
        planes = F.pad(planes, pads) if any(padding) else planes
        per_dim = [_phases(k, s, d) for k, s, d in zip(kernel, conv.stride, conv.dilation, strict=True)]
        for combo in product(*per_dim):
            phase_index = (slice(None), slice(None),
                           *(slice(u0 * s + r, None, s) for (r, _, _, u0, _), s in zip(combo, conv.stride, strict=True)))
            phase = planes[phase_index]
            out = torch.convolution(phase, kernels, None, [c[2] * conv.dilation[j] // conv.stride[j]
                                                           for j, c in enumerate(combo)],
                                    [0] * dims, [1] * dims, False, [0] * dims, batch * channels)
            target = (slice(None), *(slice(k0, None, step) for (_, k0, step, _, _) in combo))
            wanted: tuple[int | slice, ...] = (0, slice(None), *(slice(0, count) for (*_, count) in combo))
            result[target] = out[wanted]
    grads = result.reshape(batch, groups, per_group_in, per_group_out, *kernel).transpose(2, 3)
    return grads.reshape(batch, out_channels, per_group_in, *kernel)


def correlate_weight_sq_norms(conv: _ConvNd, a: torch.Tensor, g: torch.Tensor, chunk_bytes: int,
                              reduce: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``reduce`` of each block of per-sample gradients by :func:`correlate_weight_grads` (with
    ``conv_strategy.squared_norm``: ``‖∂L_i/∂W‖²_F`` per sample, (B,) float32), in blocks of samples whose
    repeated output gradients stay under ``chunk_bytes``."""
    per_group_in = a.shape[1] // conv.groups
    per_sample_bytes = 4 * (per_group_in * g[0].numel() + a[0].numel())
    step = max(1, chunk_bytes // per_sample_bytes)
    return torch.cat([reduce(correlate_weight_grads(conv, a[i:i + step], g[i:i + step]))
                      for i in range(0, a.shape[0], step)])
