"""The exact ways to per-sample convolution weight norms ``‖∂L_i/∂W‖²_F``, and the per-layer choice on a CPU.

Every strategy (:data:`STRATEGIES`) is exact; which is fastest depends on the layer and the machine far more
than a FLOP count tells (oneDNN's kernels, cache sizes, the batch): ``grouped``, ``per_sample`` and ``unfold``
form the gradients (:func:`conv_weight_grads`); ``matmul`` is ``g_i a_iᵀ`` for a pointwise convolution; ``gram``
is ``⟨g_iᵀ g_i, U_iᵀ U_i⟩`` without the gradient (the "ghost norm", Goodfellow 2015; Bu et al. 2022);
``correlate`` (:mod:`.conv_correlate`) and ``shift`` (:mod:`.conv_shift`) serve depthwise and grouped layers.

:func:`auto_sq_norms` takes the strategy :func:`choose` names: a fixed rule on the layer's configuration and
shapes (channels, kernel, stride, groups, positions, batch), drawn from per-layer timings of every strategy
on the paper's networks (docs/per_sample.md). Nothing is timed at run time, so the choice, and with it the
float rounding of the norms (strategies differ in the last bits), is the same in every process and on every
load: the same inputs give the same bits. A rule that misjudges a layer costs speed, never exactness.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd

from gradtrust.errors import InputError, UnknownNameError
from gradtrust.per_sample.conv_correlate import correlate_weight_sq_norms
from gradtrust.per_sample.conv_shift import shift_weight_sq_norms
from gradtrust.per_sample.registry import UnsupportedForHooks

#: What a strategy returns of each block of per-sample weight gradients (b, O, C_g, *kernel), first dimension
#: the block's samples. None: ``‖∂L_i/∂W‖²_F`` (b,), which ``gram`` alone gives without forming the gradients.
Reduce = Callable[[torch.Tensor], torch.Tensor]


def squared_norm(grads: torch.Tensor) -> torch.Tensor:
    """``‖∂L_i/∂W‖²_F`` of each sample's gradient in a block (b, …) → (b,)."""
    return grads.flatten(1).square().sum(1)

#: Every strategy :func:`sq_norms` knows, in the order :func:`candidates` lists them.
STRATEGIES = ("gram", "grouped", "correlate", "shift", "matmul", "per_sample", "unfold")

#: Samples are processed in blocks whose working set stays under this many bytes (or ``chunk_bytes`` if
#: smaller): large blocks leave the caches, and blocks over glibc's mmap threshold (32 MiB) are mapped and
#: page-faulted afresh on every call. Against one 256 MiB block, 4 MiB blocks made the grouped kernel 2.3×
#: faster on resnet56's 64-channel 3×3 layers at batch 256, ``correlate`` 2.4× on ConvNeXt's depthwise 7×7
#: at batch 8, ``shift`` 3× on ResNeXt's grouped 3×3 (8 MiB and 16 MiB were within noise of 4 MiB).
BLOCK_BYTES = 4 * 2**20

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
    """Per-sample weight gradients of a ``ConvNd`` (each that of the convolution of sample ``i`` alone), shape
    (B, out, in/groups, *kernel), by ``strategy`` ("grouped", "per_sample" or "unfold").

    ``grouped``: one ``convolution_backward`` with the batch folded into the channel groups; on a CPU with
    torch 2.15 this beats the native kernel sample by sample (Purview on a CIFAR ResNet-20 at batch 128: 5.9
    instead of 16.7 forward passes; resnet18 at batch 16: 3.9 instead of 4.8; benchmarks/bench_networks.py).
    ``unfold``: one batched product ``g_i U_iᵀ`` with the unfolded patches.
    """
    conv = as_conv(module)
    batch = a.shape[0]
    weight = conv.weight
    spatial = a.shape[2:]
    a, g = a.float(), g.float()
    padding = conv_padding(conv)
    conv_args = (list(conv.stride), list(padding), list(conv.dilation), False, [0] * len(spatial))
    if strategy is None:  # a plain Conv2d on a GPU: one batched product, the kind of work GPUs do best
        strategy = "unfold" if a.device.type != "cpu" and type(module) is nn.Conv2d and module.groups == 1 else "grouped"
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


def _positions(g: torch.Tensor) -> int:
    """T, the number of output positions of one sample."""
    return math.prod(g.shape[2:])


def is_pointwise(conv: _ConvNd) -> bool:
    """A 1×1 (×1) convolution without padding or dilation: a token-wise linear map (any stride)."""
    return all(k == 1 for k in conv.kernel_size) and not any(conv_padding(conv)) and all(d == 1 for d in conv.dilation)


def applies(strategy: str, conv: _ConvNd, a: torch.Tensor, g: torch.Tensor, chunk_bytes: int,
            reduce: Reduce | None = None) -> bool:
    """Whether ``strategy`` can compute (exactly, and in bounded memory) this layer's norms, or with ``reduce``
    that reduction of its per-sample gradients (which the Gram form never forms)."""
    if strategy not in STRATEGIES:
        raise UnknownNameError(f"unknown convolution strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if reduce is not None and strategy == "gram":
        return False
    if strategy in ("grouped", "per_sample", "shift"):
        return True
    if strategy == "correlate":  # the output gradient of a sample is repeated C_in/groups times
        return 4 * (conv.in_channels // conv.groups) * g[0].numel() <= chunk_bytes
    if conv.groups != 1:
        return False
    if strategy == "matmul":
        return is_pointwise(conv)
    if type(conv) is not nn.Conv2d:
        return False
    if strategy == "unfold":
        return True
    # gram: at most twice the work of the gradient itself, two T×T Gram matrices per sample within the bound
    t, k, o = _positions(g), conv.weight[0].numel(), conv.out_channels
    return t * t * (k + o) <= 2 * t * k * o and 4 * (2 * t * t + k * t) <= chunk_bytes


def candidates(conv: _ConvNd, a: torch.Tensor, g: torch.Tensor, chunk_bytes: int,
               reduce: Reduce | None = None) -> list[str]:
    """The strategies :func:`choose` picks among on this layer, in :data:`STRATEGIES` order.

    ``correlate`` only for depthwise layers: with 4 or more channels per group (ResNeXt) the grouped kernel
    was 1.5–10× faster in every layer measured (docs/per_sample.md); ``shift`` only where neither that
    (its products would be 1×1) nor ``matmul`` (the same product without the padding) applies.
    """
    depthwise = conv.in_channels == conv.groups
    found = [s for s in STRATEGIES if applies(s, conv, a, g, chunk_bytes, reduce)
             and (s != "correlate" or depthwise) and (s != "shift" or not depthwise)]
    return [s for s in found if s != "shift" or "matmul" not in found]


#: The version of :func:`choose`: a run's identity records it beside ``conv_strategy="auto"``, since another rule
#: may round differently (a run started under another rule, or under the timed choice before it, is not resumed).
RULE = 1

#: ``per_sample`` (the native weight-gradient kernel once per sample) instead of ``grouped`` for a one-group
#: layer with at most :data:`STEM_CHANNELS` input channels and at least :data:`STEM_POSITIONS` output
#: positions: an ImageNet stem, where the grouped kernel's batch-folded input is thin and long (resnet50's
#: 7×7 stem at batch 4: 24 ms against 38 ms; convnext_tiny's 4×4: 307 against 584; the timing picked it on
#: resnet18's and mobilenet_v3_small's stems every time on an idle machine). A CIFAR stem (32², batch 128)
#: is 5× faster grouped: a call per sample costs more than its 1,024 positions.
STEM_CHANNELS = 4
STEM_POSITIONS = 2048


def choose(conv: _ConvNd, a: torch.Tensor, g: torch.Tensor, chunk_bytes: int,
           reduce: Reduce | None = None) -> str:
    """The strategy of this layer for these shapes, one of :func:`candidates`: a fixed function of the inputs'
    shapes and the layer's configuration (no timing). With ``B`` samples, ``T`` output positions,
    ``K = C_g·|k|`` and ``O`` output channels:

    1. ``gram`` where it applies and its products ``T²(K + O)`` are at most the gradient's ``T·K·O`` (half of
       it for a pointwise layer, whose ``matmul`` reads no patches): late layers, few positions and many
       channels (resnet18's layer3 and layer4: 55 ms against 87 ms grouped at batch 32);
    2. ``correlate`` for a depthwise layer of stride 1 (ConvNeXt's 7×7: 3.5 ms against 250 ms grouped);
    3. ``matmul`` for a pointwise layer (a batched ``g_i a_iᵀ``);
    4. ``per_sample`` for a one-group stem (``C_in ≤`` :data:`STEM_CHANNELS`, ``T ≥`` :data:`STEM_POSITIONS`);
    5. else ``grouped`` (which always applies).

    The rules come from per-layer timings of every strategy on the paper's networks on a 2-core CPU and from
    what the timed choice this rule replaced picked on an idle one (docs/per_sample.md); a misjudged layer
    costs speed, never exactness.
    """
    found = candidates(conv, a, g, chunk_bytes, reduce)
    t, k, o = _positions(g), conv.weight[0].numel(), conv.out_channels
    if "gram" in found and (2 if is_pointwise(conv) else 1) * t * (k + o) <= k * o:
        return "gram"
    if "correlate" in found and all(s == 1 for s in conv.stride):
        return "correlate"
    if "matmul" in found:
        return "matmul"
    if conv.groups == 1 and "per_sample" in found and conv.in_channels <= STEM_CHANNELS and t >= STEM_POSITIONS:
        return "per_sample"
    return "grouped"


def _blocks(batch: int, per_sample_bytes: int, chunk_bytes: int) -> range:
    return range(0, batch, max(1, chunk_bytes // max(per_sample_bytes, 1)))


def _gram_sq_norms(conv: _ConvNd, a: torch.Tensor, g: torch.Tensor, chunk_bytes: int,
                   reduce: Reduce = squared_norm) -> torch.Tensor:
    """``‖g_i U_iᵀ‖² = ⟨g_iᵀ g_i, U_iᵀ U_i⟩`` (Goodfellow 2015; Bu et al. 2022), in blocks of samples."""
    if reduce is not squared_norm:
        raise InputError("the Gram form gives squared norms only; use a strategy that forms the gradients")
    t, k = _positions(g), conv.weight[0].numel()
    step = max(1, chunk_bytes // (4 * (t * (k + 2 * t) + a[0].numel())))
    norms = []
    for start in range(0, a.shape[0], step):
        patches = F.unfold(a[start:start + step], conv.kernel_size, dilation=conv.dilation,
                           padding=conv_padding(conv), stride=conv.stride)  # (b, K, T)
        grads = g[start:start + step].flatten(2)  # (b, O, T)
        norms.append((torch.bmm(patches.transpose(1, 2), patches) * torch.bmm(grads.transpose(1, 2), grads)).sum((1, 2)))
    return torch.cat(norms)


def _matmul_sq_norms(conv: _ConvNd, a: torch.Tensor, g: torch.Tensor, chunk_bytes: int,
                     reduce: Reduce = squared_norm) -> torch.Tensor:
    """A pointwise convolution's ``‖g_i a_iᵀ‖²`` with ``a_i`` (C × T) the input at the output positions."""
    index = (slice(None), slice(None), *(slice(None, None, s) for s in conv.stride))
    tokens = a[index].flatten(2)  # (B, C, T)
    grads = g.flatten(2)  # (B, O, T)
    step = _blocks(a.shape[0], 4 * (conv.weight.numel() + a[0].numel() + g[0].numel()), chunk_bytes).step
    return torch.cat([reduce(torch.bmm(grads[i:i + step], tokens[i:i + step].transpose(1, 2)))
                      for i in range(0, a.shape[0], step)])


def _materialised_sq_norms(strategy: str, conv: _ConvNd, a: torch.Tensor, g: torch.Tensor,
                           chunk_bytes: int, reduce: Reduce = squared_norm) -> torch.Tensor:
    """Norms of the per-sample gradients of :func:`conv_weight_grads` (``grouped``/``unfold``)."""
    # gradient and what it is formed from: the input and output gradient, or the unfolded patches
    inputs = conv.weight[0].numel() * _positions(g) if strategy == "unfold" else a[0].numel()
    per_sample_bytes = 4 * (conv.weight.numel() + inputs + g[0].numel())
    step = _blocks(a.shape[0], per_sample_bytes, chunk_bytes).step
    return torch.cat([reduce(conv_weight_grads(conv, a[i:i + step], g[i:i + step], strategy=strategy))
                      for i in range(0, a.shape[0], step)])


def _per_sample_sq_norms(conv: _ConvNd, a: torch.Tensor, g: torch.Tensor, chunk_bytes: int,
                         reduce: Reduce = squared_norm) -> torch.Tensor:
    grads = (one_sample_conv_weight_grad(conv, a[i:i + 1], g[i:i + 1]) for i in range(a.shape[0]))
    if reduce is squared_norm:
        return torch.stack([torch.dot(grad.flatten(), grad.flatten()) for grad in grads])
    return torch.cat([reduce(grad.unsqueeze(0)) for grad in grads])


_KERNELS: dict[str, Callable[[_ConvNd, torch.Tensor, torch.Tensor, int, Reduce], torch.Tensor]] = {
    "gram": _gram_sq_norms,
    "grouped": lambda conv, a, g, chunk_bytes, reduce: _materialised_sq_norms("grouped", conv, a, g, chunk_bytes, reduce),
    "unfold": lambda conv, a, g, chunk_bytes, reduce: _materialised_sq_norms("unfold", conv, a, g, chunk_bytes, reduce),
    "correlate": correlate_weight_sq_norms,
    "shift": shift_weight_sq_norms,
    "matmul": _matmul_sq_norms,
    "per_sample": _per_sample_sq_norms,
}


def sq_norms(strategy: str, conv: _ConvNd, a: torch.Tensor, g: torch.Tensor, chunk_bytes: int,
             reduce: Reduce | None = None) -> torch.Tensor:
    """``‖∂L_i/∂W‖²_F`` per sample (B,) float32 by ``strategy`` (one of :data:`STRATEGIES`, which must apply),
    in blocks of samples of at most ``chunk_bytes`` (on a CPU :data:`BLOCK_BYTES`, if smaller) of working set;
    with ``reduce``, that reduction of each block of per-sample gradients instead (concatenated over blocks)."""
    if not applies(strategy, conv, a, g, chunk_bytes, reduce):
        raise InputError(f"convolution strategy {strategy!r} does not apply to {conv} (input {tuple(a.shape)}, "
                         f"chunk_bytes={chunk_bytes}{', forming the gradients' if reduce else ''}); choose one "
                         "for which conv_strategy.applies() is true")
    block = min(chunk_bytes, BLOCK_BYTES) if a.device.type == "cpu" else chunk_bytes  # caches: a CPU's concern
    return _KERNELS[strategy](conv, a.float(), g.float(), block, reduce or squared_norm)


def auto_sq_norms(conv: _ConvNd, a: torch.Tensor, g: torch.Tensor, chunk_bytes: int,
                  reduce: Reduce | None = None) -> torch.Tensor:
    """``‖∂L_i/∂W‖²_F`` per sample (with ``reduce``: that reduction of the per-sample gradients) by the strategy
    :func:`choose` names for this layer and these shapes."""
    return sq_norms(choose(conv, a, g, chunk_bytes, reduce), conv, a, g, chunk_bytes, reduce)
