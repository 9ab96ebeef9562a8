"""Introspective features: the gradient of ``J = MSE(z, 1_C)`` at a linear layer, in rank-one form.

Prabhushankar & AlRegib, "Introspective Learning: A Two-Stage Approach for Inference in Neural Networks"
(NeurIPS 2022); ``docs/introspection.md``. For one sample with logits ``z ∈ R^C`` and a linear layer
``out = W x + b`` that sees one vector ``x ∈ R^D`` per sample,

    J = (1/C) Σ_c (z_c − 1)²          ∂J/∂W = δ xᵀ,   δ = ∂J/∂out

(the loss against a vector of all ones sums the C one-hot "why P, rather than Q?" losses). On the final
layer, whose output *is* the logits, ``δ = a = (2/C)(z − 1)`` (closed form, no backward pass); on any other
``nn.Linear`` ``δ`` comes from one batched autograd backward (samples do not interact in an eval-mode
network, so one backward of ``Σ_i J_i`` gives every sample's ``δ_i``). The feature is

    r = vec(∂J/∂W) / ‖vec(∂J/∂W)‖₂ = vec(â x̂ᵀ),   â = δ/‖δ‖₂,  x̂ = x/‖x‖₂     (‖δ xᵀ‖_F = ‖δ‖₂ ‖x‖₂)

so a sample's ``C·D`` features are held as the two factors ``(â, x̂)``: ``C + D`` numbers. A sample with
``δ = 0`` or ``x = 0`` (or non-finite logits) has no direction: its factors are NaN.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from gradtrust.errors import InputError, ModelError, UnknownNameError
from gradtrust.nn.hooks import final_layer_candidates, final_linear, recording
from gradtrust.nn.outputs import model_logits

__all__ = ["FeatureExtractor", "IntrospectiveFeatures"]


class IntrospectiveFeatures(NamedTuple):
    """One batch: the feed-forward ``logits`` (B, C) and the unit factors ``a`` (B, C), ``h`` (B, D) of
    ``r = vec(a hᵀ)``, all float32 (NaN rows where the feature is undefined); ``valid`` (B,) bool."""

    logits: torch.Tensor
    a: torch.Tensor
    h: torch.Tensor
    valid: torch.Tensor


class FeatureExtractor:
    """Runs the network ``f`` (in eval mode) once per batch and returns :class:`IntrospectiveFeatures`.

    ``layer``: the ``nn.Linear`` whose weight gradient is the feature (its name in ``named_modules()``); ``None``
    = the final ``nn.Linear`` (the last one to run with one output per class). ``path``: ``"auto"`` (closed
    form where the layer's output is the logits, autograd otherwise), ``"closed_form"`` or ``"autograd"``
    (forced; for checking one against the other). ``output_index``: see :func:`gradtrust.nn.outputs.logits_of`.
    """

    def __init__(self, model: nn.Module, layer: str | None = None, path: str = "auto",
                 output_index: int | str | None = None) -> None:
        if path not in ("auto", "closed_form", "autograd"):
            raise InputError(f"path must be 'auto', 'closed_form' or 'autograd', got {path!r}")
        self.model, self.layer, self.path, self.output_index = model, layer, path, output_index
        self._module: nn.Module | None = None
        self._closed: bool | None = None
        if layer is not None:
            try:
                module = model.get_submodule(layer)
            except AttributeError:
                names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
                raise UnknownNameError(f"layer={layer!r} is not a module of this model; its nn.Linear layers: "
                                       f"{', '.join(names) or 'none'}.") from None
            if not isinstance(module, nn.Linear):
                raise ModelError(f"layer={layer!r} is a {type(module).__name__}; introspective features need an "
                                 "nn.Linear layer (its gradient is rank one per sample).")
            self._module = module

    def _discover(self, x: torch.Tensor) -> None:
        """One forward of one sample: which layer (the final nn.Linear unless given) and whether its output
        is the logits themselves (then the closed form applies)."""
        modules = {str(self.layer): self._module} if self._module is not None else final_layer_candidates(self.model)
        with recording(modules) as seen, torch.no_grad():
            logits = model_logits(self.model, x[:1], self.output_index)
        if self._module is None:
            final = final_linear(self.model, seen, logits.shape[-1])
            if final is None:
                raise ModelError(f"no nn.Linear with {logits.shape[-1]} outputs runs in "
                                 f"{type(self.model).__name__}; pass layer='<name of an nn.Linear>' to take the "
                                 "introspective features there.")
            self.layer, self._module, out = final.name, final.module, final.output
        elif not seen:
            raise ModelError(f"layer {self.layer!r} does not run when the model runs.")
        else:
            out = seen[-1].output
        self._closed = out is logits
        if self.path == "closed_form" and not self._closed:
            raise ModelError(f"the output of layer {self.layer!r} is not the logits: the closed form (2/C)(z - 1) "
                             "does not apply; use path='autograd' (or 'auto').")

    @property
    def closed_form(self) -> bool | None:
        """Whether the closed form is used (None before the first batch)."""
        return None if self._closed is None else self._closed and self.path != "autograd"

    def __call__(self, x: torch.Tensor) -> IntrospectiveFeatures:
        if self._closed is None:
            self._discover(x)
        module = self._module
        assert module is not None
        captured: dict[str, torch.Tensor] = {}
        autograd = not self.closed_form

        def hook(mod, args, out):
            captured["x"] = args[0]
            if autograd and not out.requires_grad:  # a leaf to differentiate J at, when nothing else is
                out = out.detach().requires_grad_(True)
                captured["out"] = out
                return out
            captured["out"] = out
            return None

        handle = module.register_forward_hook(hook)
        try:
            # the closed form needs no graph: record one only for the autograd path (or when the caller does)
            with torch.set_grad_enabled(torch.is_grad_enabled() or autograd):
                logits = model_logits(self.model, x, self.output_index)
                inputs, out = captured["x"], captured["out"]
                if inputs.dim() != 2:
                    raise ModelError(f"layer {self.layer!r} sees inputs of shape {tuple(inputs.shape)}; the rank-one "
                                     "introspective features need one vector per sample (batch, features).")
                c = logits.shape[1]
                if not autograd:
                    delta = (2.0 / c) * (logits.detach().float() - 1.0)
                else:
                    if not out.requires_grad:
                        raise ModelError(f"the output of layer {self.layer!r} is not part of an autograd graph "
                                         "(parameters frozen?); introspective features need its gradient.")
                    loss = (logits.float() - 1.0).square().mean(dim=1).sum()
                    (delta,) = torch.autograd.grad(loss, out, retain_graph=torch.is_grad_enabled())
                    delta = delta.float()
        finally:
            handle.remove()
        h = inputs.detach().float().reshape(inputs.shape[0], -1)
        delta = delta.detach()
        na, nh = delta.norm(dim=1, keepdim=True), h.norm(dim=1, keepdim=True)
        valid = (na[:, 0] > 0) & (nh[:, 0] > 0) & torch.isfinite(na[:, 0] * nh[:, 0])
        a_hat = torch.where(valid[:, None], delta / na.clamp_min(1e-30), torch.full_like(delta, float("nan")))
        h_hat = torch.where(valid[:, None], h / nh.clamp_min(1e-30), torch.full_like(h, float("nan")))
        return IntrospectiveFeatures(logits.detach().float(), a_hat, h_hat, valid)
