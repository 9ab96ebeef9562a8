"""Per-sample convolution weight gradients, formed: the grouped, per-sample and unfold ways.

Sample ``i``'s gradient is the weight gradient of the convolution of sample ``i`` alone. The squared norms
built on these (and the strategies that never form them) are :mod:`gradtrust.per_sample.conv_strategy`'s;
the convolution kernel (:mod:`gradtrust.per_sample.kernels.convolution`) chooses among them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd

from gradtrust.per_sample.registry import UnsupportedForHooks

#: The convolution classes the kernel covers (and their subclasses that keep the forward).
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_plain_conv(module: nn.Module) -> bool:
    """Whether ``module`` is a ``ConvNd`` or a subclass that keeps its forward (torchvision's
    ``Conv3DSimple``, ``Conv3DNoTemporal``…), so that its output is the convolution of its input."""
    return any(isinstance(module, base) and type(module).forward is base.forward for base in CONV_TYPES)


def as_conv(module: nn.Module) -> _ConvNd:
    """``module`` as the convolution it must be (``nn.Module`` attributes are untyped until narrowed)."""
    if not isinstance(module, _ConvNd):
        raise UnsupportedForHooks(f"expected a convolution layer, got {type(module).__name__}")
    return module


def conv_padding(conv: _ConvNd) -> tuple[int, ...]:
    """The explicit padding of ``conv``; string padding ("same"/"valid") is not hook-supported."""
    if isinstance(conv.padding, str):
        raise UnsupportedForHooks(f"convolution padding {conv.padding!r} is not supported; use explicit padding")
    return conv.padding


def conv_weight_grads(module: nn.Module, a: torch.Tensor, g: torch.Tensor, strategy: str | None = None) -> torch.Tensor:
    """Per-sample weight gradients of a ``ConvNd``, shape (B, out, in/groups, *kernel).

    Sample ``i``'s gradient is the weight gradient of the convolution of sample ``i`` alone. All of them
    come from one grouped ``convolution_backward`` (the batch folded into the channel groups: input
    (1, B·C_in, …), output gradient (1, B·C_out, …), groups × B); on a CPU with torch 2.15 this beats the
    native kernel at batch size 1 sample by sample (Purview on a CIFAR ResNet-20 at batch 128: 5.9 instead
    of 16.7 forward passes; resnet18 at batch 16: 3.9 instead of 4.8; benchmarks/bench_networks.py). A plain
    ``Conv2d`` (one group) on a GPU uses one batched matrix product of the output gradient with the
    unfolded input patches, ``g_i U_iᵀ``, the kind of work GPUs do best. ``strategy`` ("grouped",
    "per_sample" or "unfold") overrides the choice.
    """
    conv = as_conv(module)
    batch = a.shape[0]
    weight = conv.weight
    spatial = a.shape[2:]
    a, g = a.float(), g.float()
    padding = conv_padding(conv)
    conv_args = (list(conv.stride), list(padding), list(conv.dilation), False, [0] * len(spatial))
    strategy = strategy or default_conv_strategy(module, a.device)
    if strategy == "unfold":
        patches = unfold_patches(conv, a)  # (B, K, T)
        with conv_precision_matmul(a.device):
            return torch.bmm(g.float().flatten(2), patches.transpose(1, 2)).reshape(batch, *weight.shape)
    if strategy == "per_sample":
        return torch.stack([one_sample_conv_weight_grad(module, a[i:i + 1], g[i:i + 1]) for i in range(batch)])
    a1 = a.reshape(1, batch * a.shape[1], *spatial)
    g1 = g.reshape(1, batch * g.shape[1], *g.shape[2:])
    # Only grad_weight is asked for, so the kernel reads this weight argument for its shape alone.
    stacked = torch.empty((batch * weight.shape[0], *weight.shape[1:]), device=a.device, dtype=torch.float32)
    _, grad_weight, _ = torch.ops.aten.convolution_backward(g1, a1, stacked, None, *conv_args, conv.groups * batch,
                                                            [False, True, False])
    return grad_weight.reshape(batch, *weight.shape)


def unfold_patches(conv: _ConvNd, a: torch.Tensor) -> torch.Tensor:
    """The input patches ``U`` (B, C_in·kh·kw, T) of a 2-D convolution, float32: ``F.unfold``'s result.

    Built as one strided view of the padded input and one copy; ``F.unfold`` on a GPU launches one im2col
    kernel per sample (a quarter of Purview's GPU time on resnet18 at batch 32).
    """
    a = a.float()
    ph, pw = conv_padding(conv)
    if ph or pw:
        a = F.pad(a, (pw, pw, ph, ph))
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    batch, channels, height, width = a.shape
    out_h, out_w = (height - dh * (kh - 1) - 1) // sh + 1, (width - dw * (kw - 1) - 1) // sw + 1
    s_b, s_c, s_h, s_w = a.stride()
    view = a.as_strided((batch, channels, kh, kw, out_h, out_w), (s_b, s_c, s_h * dh, s_w * dw, s_h * sh, s_w * sw))
    return view.reshape(batch, channels * kh * kw, out_h * out_w)


@contextlib.contextmanager
def conv_precision_matmul(device: torch.device) -> Iterator[None]:
    """Matrix products standing in for a convolution's weight gradient run in the precision the convolution
    itself runs in on this device: TF32 on a GPU where cuDNN's convolutions use it
    (``torch.backends.cudnn.allow_tf32``, on by default, so the model's own forward and backward already
    do), full float32 otherwise. Without this the per-sample products ran ~8× slower than the
    convolutions they differentiate (plain float32 matmul; Purview on resnet50 at batch 128 on an H100)."""
    if device.type != "cuda" or not torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32:
        yield
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False


def one_sample_conv_weight_grad(module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The weight gradient of ``module`` for one sample (batch dimension 1), float32, shape of the weight."""
    conv = as_conv(module)
    conv_args = (list(conv.stride), list(conv_padding(conv)), list(conv.dilation), False, [0] * (a.dim() - 2))
    return torch.ops.aten.convolution_backward(g.float(), a.float(), conv.weight.detach().float(), None, *conv_args,
                                               conv.groups, [False, True, False])[1]


def default_conv_strategy(module: nn.Module, device: torch.device) -> str:
    """How :func:`conv_weight_grads` forms per-sample gradients by default on ``device``."""
    if device.type == "cpu":
        return "grouped"
    return "unfold" if type(module) is nn.Conv2d and module.groups == 1 else "grouped"
