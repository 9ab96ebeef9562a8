"""``Pass.COUNTERFACTUAL_GRADIENTS``: per-sample statistics of a layer's weight gradient under the
confounding-label losses of GradTrust and GradNorm: closed forms on the final ``nn.Linear`` (docs/methods.md),
else one batched backward pass through the shared graph (``layer=``, ``gradient_path="autograd"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gradtrust import functional
from gradtrust.errors import ModelError, UnknownNameError
from gradtrust.per_sample.conv_strategy import CONV_TYPES
from gradtrust.per_sample.layers import layer_weight
from gradtrust.per_sample.registry import parameter_grads, supports_hooks
from gradtrust.scores.passes import BatchPasses, backward_through
from gradtrust.scores.spec import Param, PassSpec


@dataclass
class GradientRows:
    """Per-sample statistics of a weight gradient ``G`` (rows = output units), float64 on the model's device."""

    row_energy: torch.Tensor  # (B, R): e_r = Var_d(G_{r,d}²)
    l1: torch.Tensor | None = None  # (B,): ‖G‖₁


def layer_module(ctx: BatchPasses) -> nn.Module:
    """The module named by ``layer=`` (validated: an ``nn.Linear`` or ``nn.ConvNd``)."""
    name = ctx.options.layer
    if isinstance(ctx.model, torch.jit.ScriptModule) or isinstance(
            getattr(ctx.model, "_modules", {}).get(str(name).split(".")[0]), torch.jit.ScriptModule):
        raise ModelError(f"layer={name!r}: the layer is inside a TorchScript module, whose compiled forward runs "
                         "it in the TorchScript interpreter, which never calls the Python hooks that per-sample "
                         "gradients need. Score the Python model (its state dict + architecture) instead.")
    try:
        module = ctx.model.get_submodule(name)
    except AttributeError:
        candidates = [n for n, m in ctx.model.named_modules() if isinstance(m, (nn.Linear, *CONV_TYPES))]
        raise UnknownNameError(f"layer={name!r} is not a module of this model. Layers that can be used: "
                               f"{', '.join(candidates[-8:])}{' …' if len(candidates) > 8 else ''}.") from None
    if not (isinstance(module, nn.Linear) or type(module) in CONV_TYPES):
        raise ModelError(f"layer={name!r} is a {type(module).__name__}; gradient scores need an nn.Linear or "
                         "nn.Conv1d/2d/3d layer.")
    if type(module) in CONV_TYPES and not supports_hooks(module):
        raise ModelError(f"layer={name!r} uses padding={module.padding!r}, padding_mode={module.padding_mode!r}; "
                         "only numeric padding with padding_mode='zeros' is supported for per-sample gradients.")
    return module


def uses_autograd_path(ctx: BatchPasses) -> bool:
    """Whether the gradient scores come from per-sample autograd rather than the closed forms."""
    opts = ctx.options
    if opts.gradient_path == "autograd":
        return True
    on_final = opts.layer is None or opts.layer == ctx.final_layer_name
    if opts.gradient_path == "closed_form":
        if not (on_final and ctx.closed_form_applies):
            raise ModelError("gradient_path='closed_form' needs the final nn.Linear whose output is the logits; "
                             + ("" if ctx.final_layer_name else ctx.no_final_linear_message()))
        return False
    return not (on_final and ctx.closed_form_applies)


def feature_sq_variance(ctx: BatchPasses) -> torch.Tensor:
    """``Var_d(h_d²)`` (unbiased) per sample (:func:`gradtrust.functional.feature_square_variance`): zero means
    the gradient rows carry no variance."""
    return functional.feature_square_variance(ctx.features)


def mse_gradient_row_profile(ctx: BatchPasses) -> torch.Tensor:
    """The row energies of :func:`mse_gradient_rows` up to a positive per-sample factor, (B, R) float64, for the
    scores that take ratios of them (GradTrust): on the closed form the logit factor ``a_c⁴``
    (:func:`gradtrust.functional.mse_gradient_row_profile`; ``Var_d(h_d²)`` cancels exactly, so equal logits
    give equal ratios bit for bit), through autograd the energies themselves."""
    if not ctx.uses_autograd_path:
        return functional.mse_gradient_row_profile(ctx.logits)
    return ctx.mse_gradient_rows.row_energy


def mse_gradient_rows(ctx: BatchPasses) -> GradientRows:
    """Row energies ``e_r = Var_d(G_{r,d}²)`` of ``G = ∂L/∂W`` for ``L = (1/C) Σ_c (z_c − 1/C)²``: the closed form
    :func:`gradtrust.functional.mse_gradient_row_energy`, else per-sample autograd on the chosen layer."""
    if not ctx.uses_autograd_path:
        return GradientRows(row_energy=functional.mse_gradient_row_energy(ctx.logits, ctx.features))
    return autograd_rows(ctx, mse_uniform_loss, want_l1=False)


def uniform_ce_grad_l1(ctx: BatchPasses) -> torch.Tensor:
    """``‖∂L/∂W‖₁`` for ``L = −Σ_c u_c log p_c`` (GradNorm's loss), per sample (B,) float64: the closed form
    :func:`gradtrust.functional.uniform_ce_gradient_l1`, else per-sample autograd on the chosen layer."""
    if not ctx.uses_autograd_path:
        return functional.uniform_ce_gradient_l1(ctx.logits, ctx.features)
    rows = autograd_rows(ctx, uniform_ce_loss, want_l1=True)
    assert rows.l1 is not None  # want_l1=True fills it
    return rows.l1


def mse_uniform_loss(z: torch.Tensor) -> torch.Tensor:
    """Per-sample ``(1/C) Σ_c (z_c − 1/C)²`` (B,)."""
    c = z.shape[1]
    return (z.float() - 1.0 / c).square().mean(1)


def uniform_ce_loss(z: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy against the uniform label, ``−(1/C) Σ_c log p_c`` (B,)."""
    return -F.log_softmax(z.float(), dim=1).mean(1)


def autograd_rows(ctx: BatchPasses, loss_fn, want_l1: bool) -> GradientRows:
    """Per-sample weight gradient of the gradient layer under ``loss_fn`` (from one batched backward pass
    through the shared graph), reduced to row statistics."""
    forward = ctx.graph_forward()
    loss = loss_fn(forward.logits).sum()
    batch = ctx.inputs.shape[0]
    if ctx.options.layer is None:  # the final nn.Linear, recorded by the forward hook
        if forward.final is None:
            raise ModelError(ctx.no_final_linear_message())
        _, module, a, out, version = forward.final
        if out._version != version:
            raise ModelError("the final layer's output is modified in place by the model; pass layer= "
                             "explicitly to compute the gradient scores through layer hooks.")
        if not loss.requires_grad:
            raise ModelError("the logits do not depend differentiably on the model's input, so per-sample "
                             "layer gradients cannot be taken; use the closed form (gradient_path='auto').")
        (g,) = torch.autograd.grad(loss, out, retain_graph=True)
        return GradientRows(*rows_from_grads(module, a.detach(), g, ctx.options.chunk_bytes, want_l1))
    name, module = ctx.options.layer, ctx.layer_module
    capture = forward.capture
    if capture.calls.get(name) != 1:
        raise ModelError(f"layer={name!r} ran {capture.calls.get(name, 0)} times in one forward pass; "
                         "per-sample gradients need a layer that runs exactly once.")
    collected: dict[str, tuple] = {}

    def on_grad(layer_name, mod, a, g):
        if layer_name == name:
            collected["rows"] = rows_from_grads(mod, a, g, ctx.options.chunk_bytes, want_l1)

    capture.on_grad, capture.active = on_grad, True
    try:
        backward_through(loss, forward)
    finally:
        capture.active, capture.on_grad = False, None
    if "rows" not in collected:  # the layer does not reach the logits: its gradient is zero
        zeros = torch.zeros(batch, layer_weight(module).shape[0], dtype=torch.float64,
                            device=ctx.inputs.device)
        return GradientRows(row_energy=zeros, l1=zeros[:, 0].clone())
    return GradientRows(*collected["rows"])


def rows_from_grads(module: nn.Module, a: torch.Tensor, g: torch.Tensor, chunk_bytes: int,
                    want_l1: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Row energies ``Var_d(G_{r,d}²)`` (B, R) and optionally ``‖G‖₁`` (B,) of per-sample weight gradients,
    formed in blocks of samples bounded by ``chunk_bytes``."""
    per_sample_bytes = 4 * layer_weight(module).numel()
    step = max(1, chunk_bytes // per_sample_bytes)
    energies, l1s = [], []
    for start in range(0, a.shape[0], step):
        grads = parameter_grads(module, a[start:start + step], g[start:start + step])["weight"]
        rows = grads.reshape(grads.shape[0], grads.shape[1], -1).double()
        energies.append(rows.square().var(dim=2, unbiased=True))
        if want_l1:
            l1s.append(rows.abs().sum((1, 2)))
    return torch.cat(energies), (torch.cat(l1s) if want_l1 else None)


COUNTERFACTUAL_GRADIENTS = PassSpec(
    "COUNTERFACTUAL_GRADIENTS",
    provides={"mse_gradient_rows": mse_gradient_rows, "mse_gradient_row_profile": mse_gradient_row_profile,
              "uniform_ce_grad_l1": uniform_ce_grad_l1,
              "feature_sq_variance": feature_sq_variance, "uses_autograd_path": uses_autograd_path,
              "layer_module": layer_module},
    params=(
        Param("layer", str, None, "module whose weight gradients the gradient scores use; default the final "
              "nn.Linear (closed form); any other nn.Linear/nn.ConvNd goes through per-sample autograd"),
        Param("gradient_path", str, "auto", "'auto' (closed form on the final layer, autograd elsewhere), "
              "'closed_form', or 'autograd' (per-sample autograd even on the final layer)",
              choices=("auto", "closed_form", "autograd")),
    ),
    needs_graph=lambda options: options.layer is not None or options.gradient_path == "autograd",
    unavailable=lambda ctx: (ctx.no_final_linear_message() if ctx.options.layer is None and ctx.final_layer_name is None
                             else None),
    module=__name__)
