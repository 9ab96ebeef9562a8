"""Per-sample convolution weight gradients as one matrix product per kernel offset (the "shift" strategy).

Sample ``i``'s weight gradient at kernel offset ``k`` is ``∂L_i/∂W[:, :, k] = g_i A_{i,k}ᵀ``, with ``g_i``
(O × T) the output gradient and ``A_{i,k}`` (C × T) the input read at offset ``k`` from every output
position. Unfolding materialises all ``A_{i,k}`` (``|k|`` copies of the input); this form reads them in
place instead. With the padded input flattened over its spatial dimensions and the output gradient padded
with zeros to the padded input's extent (all but the first dimension), position ``t`` of the output reads
flat input position ``t + off_k``: ``A_{i,k}`` is the contiguous window ``a_flat[off_k : off_k + L]``, a valid
operand of a batched matrix product, and the zero columns of the padded gradient cancel the positions that
wrap around a row. One ``bmm`` per offset, ``(B·G, O_g, L) @ (B·G, L, C_g)``, gives every sample's gradient
at that offset; ``L`` exceeds ``T`` by the padding columns only.

A stride ``s > 1`` is reduced to stride 1 by splitting the padded input into its phases ``a[r::s]`` per
dimension (polyphase decomposition): offsets ``k`` with ``k·d ≡ r (mod s)`` read phase ``r`` at offset
``(k·d − r)/s``. docs/per_sample.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import product

import torch
import torch.nn.functional as F
from torch.nn.modules.conv import _ConvNd

from gradtrust.errors import InputError


def shift_weight_grads(conv: _ConvNd, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients of ``conv`` (B, O, C_g, *kernel), float32, one ``bmm`` per kernel offset.

    ``a`` is the layer input (B, C, *spatial), ``g`` the output gradient (B, O, *out_spatial); explicit
    zero padding only (the hook path's condition). Formula and source: the module docstring.
    """
    if isinstance(conv.padding, str):
        raise InputError(f"convolution padding {conv.padding!r} is not supported; use explicit padding")
    batch, channels = a.shape[:2]
    groups, out_channels = conv.groups, g.shape[1]
    out_spatial = tuple(g.shape[2:])
    kernel, stride, dilation = tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.dilation)
    a, g = a.float(), g.float()
    pads = [p for pad in reversed(conv.padding) for p in (pad, pad)]
    padded = F.pad(a, pads) if any(conv.padding) else a
    grads = a.new_empty(batch, out_channels, channels // groups, *kernel)
    # offsets of each dimension grouped by phase r = k·d mod s: {r: [(k, u = (k·d − r) / s)]}
    per_dim = []
    for k_size, s, d in zip(kernel, stride, dilation, strict=True):
        phases: dict[int, list[tuple[int, int]]] = {}
        for k in range(k_size):
            phases.setdefault(k * d % s, []).append((k, k * d // s))
        per_dim.append(sorted(phases.items()))
    for combo in product(*per_dim):
        index = (slice(None), slice(None), *(slice(r, None, s) for (r, _), s in zip(combo, stride, strict=True)))
        phase = padded[index]
        # zero padding: the phase grows one slab in its first dimension (the last window runs past its end by
        # less than one slab), the output gradient grows to the phase's extent in the other dimensions
        extent = list(phase.shape[2:])
        extent[0] = max(extent[0], out_spatial[0] + max(u for _, u in combo[0][1])) + 1
        phase = F.pad(phase, [p for n, m in zip(reversed(extent), reversed(phase.shape[2:]), strict=True)
                              for p in (0, n - m)])
        flat_a = phase.reshape(batch * groups, channels // groups, -1)
        g_extent = [out_spatial[0], *extent[1:]]
        g_ext = F.pad(g, [p for n, m in zip(reversed(g_extent), reversed(out_spatial), strict=True) for p in (0, n - m)])
        flat_g = g_ext.reshape(batch * groups, out_channels // groups, -1)
        length = flat_g.shape[-1]
        steps = [math.prod(extent[j + 1:]) for j in range(len(extent))]
        for offsets in product(*(offs for _, offs in combo)):
            start = sum(u * step for (_, u), step in zip(offsets, steps, strict=True))
            window = flat_a[:, :, start:start + length]
            part = torch.bmm(flat_g, window.transpose(1, 2))  # (B·G, O_g, C_g)
            at: tuple[int | slice, ...] = (slice(None), slice(None), slice(None), *(k for k, _ in offsets))
            grads[at] = part.reshape(batch, out_channels, channels // groups)
    return grads


def shift_weight_sq_norms(conv: _ConvNd, a: torch.Tensor, g: torch.Tensor, chunk_bytes: int,
                          reduce: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``reduce`` of each block of per-sample gradients by :func:`shift_weight_grads` (with
    ``conv_strategy.squared_norm``: ``‖∂L_i/∂W‖²_F`` per sample, (B,) float32), in blocks of samples whose
    padded input, padded output gradient and gradients stay under ``chunk_bytes``."""
    per_sample_bytes = 4 * (2 * a[0].numel() + 2 * g[0].numel() + conv.weight.numel())
    step = max(1, chunk_bytes // per_sample_bytes)
    return torch.cat([reduce(shift_weight_grads(conv, a[i:i + step], g[i:i + step]))
                      for i in range(0, a.shape[0], step)])
