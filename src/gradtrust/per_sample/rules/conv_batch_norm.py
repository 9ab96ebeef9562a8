"""A convolution followed by an eval-mode BatchNorm: both layers' per-sample norms from one hook pair.

In an ``nn.Sequential`` (torchvision's ``Conv2dNormActivation``, VGG-BN's features, ResNet's downsample
branch, the video networks' stems) a convolution's output goes to the next child alone. When that child is
a BatchNorm with fixed statistics, ``y = γ (x − μ)/σ + β`` with ``x = W ⋆ a + c`` (``σ = √(var + ε)``, ``c``
the convolution's bias or 0), the gradient at the convolution's output is ``g_y·s`` (``s = γ/σ`` per
channel), and with ``H_i = ∂L_i/∂W`` computed *as if* ``g_y`` were that gradient (the per-sample weight
gradient ``Σ_t g_{y,i}[o, t] a_i[·, t + k]``):

* ``‖∂L_i/∂W‖² = Σ_o s_o² ‖H_i[o]‖²`` and ``‖∂L_i/∂c‖² = Σ_o (s_o Σ_t g_{y,i}[o, t])²``;
* ``∂L_i/∂β_o = Σ_t g_{y,i}[o, t]``;
* ``∂L_i/∂γ_o = Σ_t g_{y,i}[o, t] (x_i[o, t] − μ_o)/σ_o = (⟨W[o], H_i[o]⟩ + (c_o − μ_o) Σ_t g_{y,i}[o, t]) / σ_o``,
  since ``Σ_t g[o, t] (W ⋆ a)[o, t] = Σ_{c,k} W[o, c, k] Σ_t g[o, t] a[c, t + k] = ⟨W[o], H[o]⟩``.

So the BatchNorm's input ``x`` need not be kept for the backward pass, and its norms cost a reduction over
``O·C_g·|k|`` per sample instead of one over the whole activation (Ioffe & Szegedy, ICML 2015, for the
layer; the per-sample identity is ours, docs/per_sample.md). On mobilenet_v3_small (CPU, batch 8) that
saved 0.2–0.35 of a forward pass and the memory of 34 activations that made every batch page-fault afresh.
``H_i`` must be formed, so where the Gram form is the cheaper way for the convolution, and on a GPU (never
measured), the pair is handled as two hooked layers instead.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from gradtrust.per_sample import conv_strategy
from gradtrust.per_sample.conv_strategy import is_plain_conv
from gradtrust.per_sample.kernels.normalisation import BATCH_NORM_TYPES
from gradtrust.per_sample.registry import (
    Rule,
    RuleContext,
    UnsupportedForHooks,
    parameter_sq_norms,
    register_rule,
    supports_hooks,
)


def _pairs(sequential: nn.Sequential) -> list[tuple[str, str]]:
    """(convolution, BatchNorm) child names of ``sequential`` that follow each other and qualify."""
    children = list(sequential.named_children())
    return [(conv_name, bn_name) for (conv_name, conv), (bn_name, bn) in zip(children, children[1:], strict=False)
            if is_plain_conv(conv) and supports_hooks(conv) and isinstance(bn, BATCH_NORM_TYPES)
            and supports_hooks(bn) and bn.affine and bn.num_features == conv.out_channels]


@register_rule(nn.Sequential, subclasses=True)
def conv_batch_norm_rule(module: nn.Module) -> ConvBatchNorm | None:
    """The rule for ``module`` if it is an ``nn.Sequential`` (whose forward is Sequential's own) holding at
    least one convolution directly followed by an eval-mode BatchNorm with running statistics."""
    if not isinstance(module, nn.Sequential) or type(module).forward is not nn.Sequential.forward:
        return None
    pairs = _pairs(module)
    return ConvBatchNorm(module, pairs) if pairs else None


def _fused_reduction(conv: _ConvNd) -> conv_strategy.Reduce:
    """For a block of per-sample gradients ``H`` (b, O, C_g, *k): ``[‖H[o]‖², ⟨W[o], H[o]⟩]`` → (b, 2, O)."""
    weight = conv.weight.detach().float().flatten(1)

    def reduce(grads: torch.Tensor) -> torch.Tensor:
        rows = grads.flatten(2)
        return torch.stack([rows.square().sum(2), torch.linalg.vecdot(rows, weight)], dim=1)

    return reduce


def fused_sq_norms(conv: _ConvNd, bn: _BatchNorm, a: torch.Tensor, g: torch.Tensor, chunk_bytes: int,
                   strategy: str | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Per-sample squared norms of the parameters of ``conv`` and the eval-mode ``bn`` that follows it (formulas:
    the module docstring), from the convolution's input ``a`` and the gradient ``g`` at the BatchNorm's output:
    {"conv"|"bn": {attr: (B,)}}. ``strategy`` forces how the per-sample gradients are formed (not ``gram``)."""
    if bn.running_mean is None or bn.running_var is None or bn.weight is None or bn.bias is None:
        raise UnsupportedForHooks(f"{type(bn).__name__} without running statistics or affine parameters")
    reduce = _fused_reduction(conv)
    g = g.float()
    if strategy not in (None, "auto") and conv_strategy.applies(strategy, conv, a, g, chunk_bytes, reduce):
        parts = conv_strategy.sq_norms(strategy, conv, a, g, chunk_bytes, reduce)
    else:
        parts = conv_strategy.auto_sq_norms(conv, a, g, chunk_bytes, reduce)
    row_norms, row_dots = parts[:, 0], parts[:, 1]  # (B, O)
    sigma = torch.sqrt(bn.running_var.float() + bn.eps)
    scale = bn.weight.detach().float() / sigma
    g_sum = g.flatten(2).sum(2)  # (B, O)
    shift = -bn.running_mean.float()
    if conv.bias is not None:
        shift = shift + conv.bias.detach().float()
    out = {"conv": {"weight": (row_norms * scale.square()).sum(1)},
           "bn": {"weight": ((row_dots + shift * g_sum) / sigma).square().sum(1), "bias": g_sum.square().sum(1)}}
    if conv.bias is not None:
        out["conv"]["bias"] = (g_sum * scale).square().sum(1)
    return out


def _fused_applies(conv: _ConvNd, a: torch.Tensor, out: torch.Tensor, ctx: RuleContext) -> bool:
    """Whether this call takes the fused way: on a CPU, where a per-sample gradient row (``C_g·|k|`` entries)
    is no longer than an output channel (``T`` positions), unless the Gram form is forced or is the lone
    layer's default. The fused way reads ``H_i`` twice instead of reading the activation twice (``Σ g·x``,
    ``Σ g``) and keeping it: a gain where activations are large (mobilenet_v3_small's first blocks,
    efficientnet_v2_s: Purview 4.2 → 3.8 forwards at batch 8), a loss where ``H_i`` is the larger (r3d_18's
    later 3×3×3 layers)."""
    if a.device.type != "cpu" or ctx.conv_strategy == "gram" or conv.weight[0].numel() > out[0, 0].numel():
        return False
    return conv_strategy.choose(conv, a, out, min(ctx.chunk_bytes, conv_strategy.BLOCK_BYTES)) != "gram"


class ConvBatchNorm(Rule):
    """The (convolution, BatchNorm) pairs of one ``nn.Sequential``; see the module docstring."""

    def __init__(self, module: nn.Sequential, pairs: list[tuple[str, str]]):
        self.pairs = pairs
        covers: list[str] = []
        for conv_name, bn_name in pairs:
            covers += [f"{conv_name}.weight"] + ([f"{conv_name}.bias"] if module.get_submodule(conv_name).bias
                                                is not None else [])
            covers += [f"{bn_name}.weight", f"{bn_name}.bias"]
        self.covers = tuple(covers)

    def entry(self, module: nn.Module) -> nn.Module:
        # the graph may start at the first BatchNorm's input: the convolution's input needs no gradient
        return module.get_submodule(self.pairs[0][1])

    def attach(self, name: str, module: nn.Module, ctx: RuleContext) -> list[Any]:
        prefix = f"{name}." if name else ""
        handles: list[Any] = []
        for conv_name, bn_name in self.pairs:
            # the plan checked the kinds (_pairs); the casts say so to the type checker
            handles += _attach_pair(f"{prefix}{conv_name}", cast(_ConvNd, module.get_submodule(conv_name)),
                                    f"{prefix}{bn_name}", cast(_BatchNorm, module.get_submodule(bn_name)), ctx)
        return handles


def _attach_pair(conv_name: str, conv: _ConvNd, bn_name: str, bn: _BatchNorm, ctx: RuleContext) -> list[Any]:
    """Hooks of one pair for one forward pass: the convolution's input, then at the BatchNorm's output the
    norms of both (fused), or of each from its own input and output gradient (the lone layers' way)."""
    seen: dict[str, Any] = {}

    def conv_hook(module, args, output):
        if "input" in seen:
            ctx.fail(f"layer {conv_name!r} ran more than once in one forward pass")
            return
        a = args[0].detach()
        seen["input"], seen["version"], seen["output"] = a, a._version, output

    def bn_pre_hook(module, args):
        if seen.pop("output", None) is not args[0]:
            ctx.fail(f"{bn_name!r} did not receive the output of {conv_name!r} (a hook replaced it?)")
            seen["broken"] = True

    def bn_hook(module, args, output):
        if seen.pop("broken", False) or "input" not in seen:
            return
        if module.training:
            ctx.fail(f"{bn_name!r} is in training mode: it normalises by batch statistics")
            return
        if not output.requires_grad:
            ctx.fail(f"the output of {bn_name!r} is not in the recorded graph")
            return
        a, version = seen["input"], seen["version"]

        def check() -> None:
            if a._version != version:
                raise UnsupportedForHooks(f"the input of layer {conv_name!r} was modified in place after use")

        if _fused_applies(conv, a, output, ctx):
            def on_grad(g):
                check()
                norms = fused_sq_norms(conv, bn, a, g.detach(), ctx.chunk_bytes, ctx.conv_strategy)
                for owner, part in ((conv_name, "conv"), (bn_name, "bn")):
                    for attr, value in norms[part].items():
                        ctx.sink(owner, attr, value)

            output.register_hook(ctx.when_active(on_grad))
            return
        x = args[0]  # the BatchNorm's input, in the graph: its gradient is the convolution's output gradient
        xd, x_version = x.detach(), x._version

        def on_conv_grad(g):
            check()
            for attr, value in parameter_sq_norms(conv, a, g.detach(), ctx.chunk_bytes,
                                                             ctx.conv_strategy).items():
                ctx.sink(conv_name, attr, value)

        def on_bn_grad(g):
            if xd._version != x_version:
                raise UnsupportedForHooks(f"the input of layer {bn_name!r} was modified in place after use")
            for attr, value in parameter_sq_norms(bn, xd, g.detach(), ctx.chunk_bytes).items():
                ctx.sink(bn_name, attr, value)

        if not x.requires_grad:
            ctx.fail(f"the input of {bn_name!r} is not in the recorded graph")
            return
        x.register_hook(ctx.when_active(on_conv_grad))
        output.register_hook(ctx.when_active(on_bn_grad))

    # both prepended: the convolution's hook sees its own output, the BatchNorm's what it receives, before
    # any other hook (another party's, or the one that may start the recorded graph) replaces either
    return [conv.register_forward_hook(conv_hook, prepend=True), bn.register_forward_pre_hook(bn_pre_hook, prepend=True),
            bn.register_forward_hook(bn_hook)]
