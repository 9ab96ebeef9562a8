"""Per-sample parameter gradients from one batched backward pass.

A batched backward of ``Σ_i L_i`` gives every layer its per-sample output gradient ``g_i`` (the model runs
in eval mode, so samples do not interact). A layer's per-sample parameter gradient is a function of its
input ``a_i`` and of ``g_i`` alone:

* ``nn.Linear``:  ``∂L_i/∂W = Σ_t g_{i,t} a_{i,t}ᵀ``, ``∂L_i/∂b = Σ_t g_{i,t}`` (``t`` runs over any extra
  dimensions, e.g. tokens);
* ``nn.ConvNd``: the weight gradient of a convolution of sample ``i`` alone, computed for all samples at
  once as one grouped convolution backward (the batch folded into the channel groups); its norm by the
  fastest of several exact strategies per layer (:mod:`gradtrust.per_sample.conv_strategy`);
* ``nn.BatchNorm`` (eval), ``nn.LayerNorm``, ``nn.GroupNorm``: ``∂L_i/∂γ = Σ g_i ⊙ x̂_i``,
  ``∂L_i/∂β = Σ g_i`` with ``x̂`` the normalised input.

:class:`LayerCapture` records ``a`` with a forward hook and ``g`` with a hook on the layer's output tensor,
so the parameters themselves need no ``requires_grad`` and autograd never computes the batch-summed
parameter gradients. This is what makes Purview cost about one backward pass instead of ``B`` of them.
Everything here is checked against a per-sample ``torch.autograd.grad`` loop in ``tests/test_per_sample.py``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from gradtrust.nn.outputs import logits_of, model_logits

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCH_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

#: Upper bound, in bytes, on one materialised block of per-sample weight gradients.
DEFAULT_CHUNK_BYTES = 256 * 2**20


class UnsupportedForHooks(RuntimeError):
    """The hook path cannot compute this model's per-sample gradients exactly; use another path."""


def is_plain_conv(module: nn.Module) -> bool:
    """Whether ``module`` is a ``ConvNd`` or a subclass that keeps its forward (torchvision's
    ``Conv3DSimple``, ``Conv3DNoTemporal``…), so that its output is the convolution of its input."""
    return any(isinstance(module, base) and type(module).forward is base.forward for base in _CONV)


def is_layer_norm_2d(module: nn.Module) -> bool:
    """Whether ``module`` is torchvision's ``LayerNorm2d`` (ConvNeXt): a LayerNorm over the channels of a
    (B, C, H, W) tensor, applied channels-last (``x.permute(0, 2, 3, 1)``). Matched by name so that the core
    does not import torchvision."""
    kind = type(module)
    return (kind.__name__ == "LayerNorm2d" and kind.__module__ == "torchvision.models.convnext"
            and isinstance(module, nn.LayerNorm))


def supports_hooks(module: nn.Module) -> bool:
    """Whether the per-sample gradient of ``module``'s own parameters can be formed from (input, grad)."""
    kind = type(module)
    if kind is nn.Linear or kind is nn.modules.linear.NonDynamicallyQuantizableLinear:
        return True
    if is_plain_conv(module):
        return isinstance(module.padding, tuple) and module.padding_mode == "zeros"
    if kind in _BATCH_NORM:
        return module.running_mean is not None and not module.training
    return kind in (nn.LayerNorm, nn.GroupNorm) or is_layer_norm_2d(module)


def layer_weight(module: nn.Module) -> torch.Tensor:
    """``module.weight`` typed as the tensor it is (``nn.Module`` attributes are untyped until narrowed)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor")
    return weight


def _as_conv(module: nn.Module) -> _ConvNd:
    """``module`` as the convolution it must be (``nn.Module`` attributes are untyped until narrowed)."""
    if not isinstance(module, _ConvNd):
        raise TypeError(f"expected a convolution layer, got {type(module).__name__}")
    return module


def _conv_padding(conv: _ConvNd) -> tuple[int, ...]:
    """The explicit padding of ``conv``; string padding ("same"/"valid") is not hook-supported."""
    if isinstance(conv.padding, str):
        raise UnsupportedForHooks(f"convolution padding {conv.padding!r} is not supported; use explicit padding")
    return conv.padding


def _as_tokens(t: torch.Tensor) -> torch.Tensor:
    """(B, ..., F) → (B, T, F) in float32, T the product of the middle dimensions."""
    return t.reshape(t.shape[0], -1, t.shape[-1]).float()


def linear_weight_grads(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-sample ``∂L_i/∂W = Σ_t g_{i,t} a_{i,t}ᵀ`` of an ``nn.Linear``: shape (B, out, in)."""
    return torch.einsum("bto,bti->boi", _as_tokens(g), _as_tokens(a))


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
    conv = _as_conv(module)
    batch = a.shape[0]
    weight = conv.weight
    spatial = a.shape[2:]
    a, g = a.float(), g.float()
    padding = _conv_padding(conv)
    conv_args = (list(conv.stride), list(padding), list(conv.dilation), False, [0] * len(spatial))
    strategy = strategy or default_conv_strategy(module, a.device)
    if strategy == "unfold":
        patches = unfold_patches(conv, a)  # (B, K, T)
        with conv_precision_matmul(a.device):
            return torch.bmm(g.float().flatten(2), patches.transpose(1, 2)).reshape(batch, *weight.shape)
    if strategy == "per_sample":
        return torch.stack([_one_sample_conv_weight_grad(module, a[i:i + 1], g[i:i + 1]) for i in range(batch)])
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
    ph, pw = _conv_padding(conv)
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


def _one_sample_conv_weight_grad(module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The weight gradient of ``module`` for one sample (batch dimension 1), float32, shape of the weight."""
    conv = _as_conv(module)
    conv_args = (list(conv.stride), list(_conv_padding(conv)), list(conv.dilation), False, [0] * (a.dim() - 2))
    return torch.ops.aten.convolution_backward(g.float(), a.float(), conv.weight.detach().float(), None, *conv_args,
                                               conv.groups, [False, True, False])[1]


def default_conv_strategy(module: nn.Module, device: torch.device) -> str:
    """How :func:`conv_weight_grads` forms per-sample gradients by default on ``device``."""
    if device.type == "cpu":
        return "grouped"
    return "unfold" if type(module) is nn.Conv2d and module.groups == 1 else "grouped"


def conv_weight_sq_norms(module: nn.Module, a: torch.Tensor, g: torch.Tensor, chunk_bytes: int,
                         strategy: str | None = None) -> torch.Tensor:
    """``‖∂L_i/∂W‖²_F`` per sample for a ``ConvNd``, (B,) float32, choosing the cheapest of several exact ways.

    With ``U_i`` (K × T) the unfolded input patches and ``g_i`` (O × T) the output gradient at the ``T``
    output positions, ``∂L_i/∂W = g_i U_iᵀ`` and ``‖g_i U_iᵀ‖² = ⟨g_iᵀ g_i, U_iᵀ U_i⟩`` (the "ghost norm",
    Goodfellow 2015; Bu et al. 2022). The Gram form costs ``T²(K + O)``, the gradient itself ``T·K·O``;
    late layers of a CNN have few positions and many channels, where the Gram form is ~10× cheaper. With one
    output position and one group (squeeze-excitation) the gradient is an outer product: ``‖g_i‖²‖a_i‖²``.

    On a CPU the way is chosen per layer and shape by measuring the exact strategies once
    (:func:`gradtrust.per_sample.conv_strategy.auto_sq_norms`). ``strategy`` (one of
    ``conv_strategy.STRATEGIES``) forces one wherever it applies, on any device; "auto" or None chooses.
    """
    from gradtrust.per_sample import conv_strategy

    conv = _as_conv(module)
    if strategy not in (None, "auto") and conv_strategy.applies(strategy, conv, a, g, chunk_bytes):
        return conv_strategy.sq_norms(strategy, conv, a, g, chunk_bytes)
    if g[0, 0].numel() == 1 and conv.groups == 1 and conv_strategy.is_pointwise(conv):
        # one output position (a squeeze-excitation's 1×1 convolutions on pooled features): ∂L_i/∂W = g_i a_iᵀ,
        # an outer product, so ‖∂L_i/∂W‖² = ‖g_i‖²·‖a_i‖² with a_i the input at that position
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


def _normalised_input(module: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """``x̂``: the input of a LayerNorm or GroupNorm before its affine transform (float32)."""
    a = a.float()
    if isinstance(module, nn.LayerNorm):  # nn.LayerNorm, or LayerNorm2d given channels-last (supports_hooks)
        return F.layer_norm(a, module.normalized_shape, eps=module.eps)
    if not isinstance(module, nn.GroupNorm):
        raise TypeError(f"expected a LayerNorm or GroupNorm, got {type(module).__name__}")
    return F.group_norm(a, module.num_groups, eps=module.eps)


def _affine_reduce_dims(module: nn.Module, a: torch.Tensor) -> tuple[int, ...]:
    """The dimensions summed over to get a per-sample γ/β gradient of LayerNorm or GroupNorm."""
    if isinstance(module, nn.LayerNorm):  # (B, *, *normalized_shape): sum over the middle dimensions
        return tuple(range(1, a.dim() - len(module.normalized_shape)))
    return tuple(range(2, a.dim()))  # GroupNorm (B, C, *spatial): sum over space


def parameter_grads(module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample gradients of ``module``'s own parameters, each of shape (B, *param.shape), float32."""
    kind = type(module)
    out: dict[str, torch.Tensor] = {}
    if is_layer_norm_2d(module):  # normalises channels-last: the LayerNorm sums with the channels moved last
        a, g = a.permute(0, 2, 3, 1), g.permute(0, 2, 3, 1)
    if is_plain_conv(module):
        out["weight"] = conv_weight_grads(module, a, g)
        if module.bias is not None:
            out["bias"] = g.float().flatten(2).sum(-1)
    elif kind in _BATCH_NORM:
        # Eval-mode BatchNorm normalises with fixed statistics, so Σ_s g·(a − μ)/σ = (Σ_s g·a − μ Σ_s g)/σ:
        # one fused reduction over the activations instead of rebuilding x̂ (measured: ~8% of Purview).
        norm = cast(_BatchNorm, module)  # kind is one of _BATCH_NORM
        g3 = g.float().reshape(g.shape[0], g.shape[1], -1)
        grad_beta = g3.sum(2)
        if module.weight is not None:
            if norm.running_mean is None or norm.running_var is None:
                raise UnsupportedForHooks(f"{kind.__name__} without running statistics normalises by batch statistics")
            # vecdot, not einsum("bcs,bcs->bc"), which runs as B·C tiny matrix products (4× slower on a CPU)
            grad_ga = torch.linalg.vecdot(g3, a.float().reshape(a.shape[0], a.shape[1], -1), dim=2)
            sigma = torch.sqrt(norm.running_var.float() + norm.eps)
            out["weight"] = (grad_ga - norm.running_mean.float() * grad_beta) / sigma
        if module.bias is not None:
            out["bias"] = grad_beta
    elif kind in (nn.LayerNorm, nn.GroupNorm) or is_layer_norm_2d(module):
        dims = _affine_reduce_dims(module, a)
        gf = g.float()
        if module.weight is not None:
            out["weight"] = (gf * _normalised_input(module, a)).sum(dim=dims) if dims else gf * _normalised_input(module, a)
        if module.bias is not None:
            out["bias"] = gf.sum(dim=dims) if dims else gf
    else:  # nn.Linear
        out["weight"] = linear_weight_grads(a, g)
        if module.bias is not None:
            out["bias"] = _as_tokens(g).sum(1)
    return out


def linear_weight_sq_norms(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``‖Σ_t g_t a_tᵀ‖²_F`` per sample without forming the gradient when that is cheaper.

    With one token this is ``‖g‖²·‖a‖²``; with ``T`` tokens it is ``Σ_{t,t'} (a_t·a_t')(g_t·g_t')``
    ("ghost norm", Goodfellow 2015; Li et al. 2022), cheaper than materialising when ``T² < out·in``.
    """
    a3, g3 = _as_tokens(a), _as_tokens(g)
    tokens = a3.shape[1]
    if tokens == 1:
        return (g3.square().sum((1, 2))) * (a3.square().sum((1, 2)))
    if tokens * tokens < a3.shape[2] * g3.shape[2]:
        return (torch.bmm(a3, a3.transpose(1, 2)) * torch.bmm(g3, g3.transpose(1, 2))).sum((1, 2))
    return linear_weight_grads(a, g).square().sum((1, 2))


def parameter_sq_norms(module: nn.Module, a: torch.Tensor, g: torch.Tensor, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                       conv_strategy: str | None = None) -> dict[str, torch.Tensor]:
    """``‖∂L_i/∂θ‖²₂`` per sample for each of ``module``'s own parameters: {name: (B,) float32}.

    Per-sample weight gradients are materialised in blocks of samples of at most ``chunk_bytes`` so that
    memory stays bounded for wide layers and large batches. ``conv_strategy`` forces how convolution weight
    norms are computed (:func:`conv_weight_sq_norms`).
    """
    kind = type(module)
    if kind is nn.Linear or kind is nn.modules.linear.NonDynamicallyQuantizableLinear:
        out = {"weight": linear_weight_sq_norms(a, g)}
        if module.bias is not None:
            out["bias"] = _as_tokens(g).sum(1).square().sum(1)
        return out
    if is_plain_conv(module):
        out = {"weight": conv_weight_sq_norms(module, a, g, chunk_bytes, conv_strategy)}
        if module.bias is not None:
            out["bias"] = g.float().flatten(2).sum(-1).square().sum(1)
        return out
    per_sample_bytes = 4 * sum(p.numel() for p in module._parameters.values() if p is not None)  # (no name walk)
    step = max(1, chunk_bytes // max(per_sample_bytes, 1))
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, a.shape[0], step):
        grads = parameter_grads(module, a[start:start + step], g[start:start + step])
        for name, grad in grads.items():
            parts.setdefault(name, []).append(grad.flatten(1).square().sum(1))
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


class LayerCapture:
    """Records each chosen layer's input in the forward pass and its output gradient in the backward pass.

    Use as a context manager around the forward pass. Each backward run through the recorded graph calls
    ``on_grad(name, module, input, grad_output)`` for every layer whose output reaches the loss, but only
    while :attr:`active` is True (other backward passes through the same graph, ODIN's for example, are
    ignored). Raises :class:`UnsupportedForHooks` when an exact per-sample result cannot be guaranteed: a
    layer called twice in one forward, or an input modified in place after it was recorded.
    """

    def __init__(self, layers: dict[str, nn.Module]):
        self.layers = layers
        self.inputs: dict[str, tuple[torch.Tensor, int]] = {}
        self.calls: dict[str, int] = {name: 0 for name in layers}
        self.active = False
        self.on_grad: Callable[[str, nn.Module, torch.Tensor, torch.Tensor], None] | None = None
        self._handles: list = []

    def __enter__(self) -> LayerCapture:
        for name, module in self.layers.items():
            self._handles.append(module.register_forward_hook(self._forward_hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _forward_hook(self, name: str):
        def hook(module, args, output):
            self.calls[name] += 1
            if not args or not isinstance(args[0], torch.Tensor) or not isinstance(output, torch.Tensor):
                return
            a = args[0].detach()
            self.inputs[name] = (a, a._version)
            if output.requires_grad:
                output.register_hook(self._grad_hook(name, module))

        return hook

    def _grad_hook(self, name: str, module: nn.Module):
        def hook(grad: torch.Tensor):
            if not self.active or self.on_grad is None:
                return None
            a, version = self.inputs[name]
            if a._version != version:
                raise UnsupportedForHooks(f"the input of layer {name!r} was modified in place after use")
            self.on_grad(name, module, a, grad.detach())
            return None

        return hook

    def check_single_use(self) -> None:
        """Raise :class:`UnsupportedForHooks` unless every layer ran exactly once in the forward pass."""
        bad = {name: n for name, n in self.calls.items() if n != 1}
        if bad:
            raise UnsupportedForHooks(f"layers not run exactly once per forward pass: {bad}")


def parameter_owners(model: nn.Module) -> tuple[list[str], dict[str, tuple[str, nn.Module, str]]]:
    """Parameter names in ``named_parameters()`` order and, for each, the module and attribute owning it."""
    names = [name for name, _ in model.named_parameters()]
    by_id = {id(p): name for name, p in model.named_parameters()}
    owners: dict[str, tuple[str, nn.Module, str]] = {}
    for module_name, module in model.named_modules():
        for attr, p in module.named_parameters(recurse=False):
            name = by_id.get(id(p))
            if name is not None and name not in owners:
                owners[name] = (module_name, module, attr)
    return names, owners


def hook_layers_for_all_parameters(model: nn.Module) -> dict[str, nn.Module]:
    """The layers to capture so that every parameter's per-sample gradient is known, or raise.

    Raises :class:`UnsupportedForHooks` naming the first parameter owned by a layer type the hook path
    does not handle (class tokens, attention in-projections, relative-position tables…).
    """
    names, owners = parameter_owners(model)
    layers: dict[str, nn.Module] = {}
    for name in names:
        module_name, module, attr = owners[name]
        if attr not in ("weight", "bias") or not supports_hooks(module):
            raise UnsupportedForHooks(f"parameter {name!r} ({type(module).__name__}.{attr}) is not hook-supported")
        layers[module_name] = module
    return layers


def sq_norms_by_loop(model: nn.Module, inputs: torch.Tensor,
                     loss_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Reference path: ``‖∂L_i/∂θ_j‖²`` by one ``torch.autograd.grad`` per sample, (B, J) float32.

    Works for any model. Temporarily sets ``requires_grad`` on the parameters (the caller's state guard
    restores them); ``autograd.grad`` never writes ``.grad``.
    """
    params = [p for _, p in model.named_parameters()]
    for p in params:
        p.requires_grad_(True)
    try:
        rows = []
        for i in range(inputs.shape[0]):
            with torch.enable_grad():
                loss = loss_fn(model_logits(model, inputs[i:i + 1])).sum()
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            rows.append(torch.stack([
                torch.zeros((), device=inputs.device) if gr is None else gr.float().square().sum() for gr in grads
            ]))
        return torch.stack(rows)
    finally:
        for p in params:
            p.requires_grad_(False)


def sq_norms_by_vmap(model: nn.Module, inputs: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor],
                     chunk_size: int) -> torch.Tensor:
    """``‖∂L_i/∂θ_j‖²`` with ``torch.func.vmap(grad(·))`` over chunks of samples, (B, J) float32.

    The generic batched path for models the hook path does not cover; memory is bounded by ``chunk_size``
    samples' worth of full parameter gradients.
    """
    from torch.func import functional_call, grad, vmap

    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: b for name, b in model.named_buffers()}

    def sample_loss(theta, x):
        logits = logits_of(functional_call(model, (theta, buffers), (x.unsqueeze(0),)))
        return loss_fn(logits).sum()

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0))
    rows = []
    for start in range(0, inputs.shape[0], chunk_size):
        grads = per_sample(params, inputs[start:start + chunk_size])
        rows.append(torch.stack([grads[n].float().flatten(1).square().sum(1) for n in params], dim=1))
    return torch.cat(rows)


def vmap_chunk_size(model: nn.Module, chunk_bytes: int = 4 * DEFAULT_CHUNK_BYTES) -> int:
    """Samples per vmap chunk so that one chunk's full parameter gradients stay under ``chunk_bytes``."""
    n_bytes = 4 * sum(p.numel() for p in model.parameters())
    return max(1, min(64, math.floor(chunk_bytes / max(n_bytes, 1))))
