"""The straightforward implementation: one sample at a time, one autograd pass per method.

Each score of one sample comes straight from its definition (docs/methods.md): no closed form, no hooks, no
sharing between methods. Slow on purpose: the tests' independent reference for the batched engine, and the
baseline of ``benchmarks/bench_scores.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gradtrust.errors import InputError, UnknownNameError
from gradtrust.nn.outputs import model_logits
from gradtrust.nn.state import scoring_state
from gradtrust.per_sample.layers import layer_weight
from gradtrust.scores.dropout import dropout_modules, seeded_dropout


def _grad_of(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=False)]


def _weight_gradient(model: nn.Module, x: torch.Tensor, layer: nn.Module, loss_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``G = ∂L/∂W`` of ``layer.weight`` for one sample (rows flattened) and that sample's logits."""
    weight = layer_weight(layer)
    weight.requires_grad_(True)
    try:
        with torch.enable_grad():
            z = model_logits(model, x).float()
            c = z.shape[1]
            if loss_name == "mse_uniform":
                loss = ((z - 1.0 / c) ** 2).mean()
            else:  # cross-entropy against the uniform label
                loss = -(F.log_softmax(z, dim=1) / c).sum()
            (g,) = _grad_of(loss, [weight])
    finally:
        weight.requires_grad_(False)
    return g.reshape(g.shape[0], -1).double(), z.detach().double()[0]


def reference_score(model: nn.Module, x: torch.Tensor, method: str, layer: nn.Module | None = None, *,
                    odin_temperature: float = 100.0, odin_epsilon: float = 0.0014, mc_samples: int = 10,
                    topk: int | None = None, pnorm_p: float = 2.0, seed: int = 0, sample_id: int = 0) -> float:
    """The score ``method`` of the single sample ``x`` (shape (1, ...)) computed from its definition.

    ``layer`` is the module whose weight gradient the gradient scores use (the final ``nn.Linear``).
    """
    with scoring_state(model):
        if method in ("gradtrust", "gradtrust_topk", "gradnorm"):
            if layer is None:
                raise InputError(f"{method} needs the layer whose weight gradient it uses: pass layer=<module>")
            loss_name = "cross_entropy_uniform" if method == "gradnorm" else "mse_uniform"
            g, z = _weight_gradient(model, x, layer, loss_name)
            if method == "gradnorm":
                return float(g.abs().sum())
            e = (g ** 2).var(dim=1, unbiased=True)
            if method == "gradtrust":
                return float(e.max() / e.mean())
            c = z.shape[0]
            k = min(topk or 10, c - 1)
            order = [int(i) for i in torch.argsort(z, descending=True, stable=True)]
            predicted = int(z.argmax())
            counterfactuals = [i for i in order if i != predicted][:k]
            return float(e[predicted] / e[counterfactuals].mean())
        if method == "odin":
            xi = x.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                z = model_logits(model, xi).float()
                loss = -F.log_softmax(z / odin_temperature, dim=1)[0, z[0].argmax()]
                (gx,) = torch.autograd.grad(loss, xi)
            with torch.no_grad():
                z2 = model_logits(model, x - odin_epsilon * gx.sign()).double()
            return float(F.softmax(z2 / odin_temperature, dim=1).max())
        if method in ("purview_initial", "purview_final"):
            params = [param for _, param in model.named_parameters()]
            for param in params:
                param.requires_grad_(True)
            try:
                with torch.enable_grad():
                    z = model_logits(model, x).float()
                    loss = F.binary_cross_entropy_with_logits(z, torch.ones_like(z))  # mean over the C classes
                    grads = _grad_of(loss, params)
            finally:
                for param in params:
                    param.requires_grad_(False)
            s = [float(g.double().pow(2).sum()) for g in grads]
            m = len(s) - 1
            part = s[: m // 2] if method == "purview_initial" else s[(m + 1) // 2:]
            return -sum(part) / len(part) if part else float("nan")
        if method == "mc_dropout":
            layers = dropout_modules(model)
            total = torch.zeros((), dtype=torch.float64, device=x.device)  # broadcasts like the scalar 0.0
            for t in range(mc_samples):
                with seeded_dropout(layers, seed, torch.tensor([sample_id]), t), torch.no_grad():
                    total = total + F.softmax(model_logits(model, x).double(), dim=1)[0]
            p = total / mc_samples
            return float(sum(float(v) * float(torch.log(v)) for v in p if v > 0))
        with torch.no_grad():
            z = model_logits(model, x).double()[0]
        p = F.softmax(z, dim=0)
        top_p = torch.sort(p, descending=True).values
        top_z = torch.sort(z, descending=True).values
        if method == "softmax":
            return float(top_p[0])
        if method == "entropy":
            return float(sum(float(v) * float(torch.log(v)) for v in p if v > 0))
        if method == "max_logit":
            return float(top_z[0])
        if method == "margin":
            return float(top_p[0] - top_p[1])
        if method == "logit_margin":
            return float(top_z[0] - top_z[1])
        if method == "brier":
            onehot = torch.zeros_like(p)
            onehot[int(z.argmax())] = 1.0
            return float(-((p - onehot) ** 2).sum())
        if method == "energy":
            return float(torch.log(torch.exp(z - z.max()).sum()) + z.max())
        if method == "doctor":
            return float((p ** 2).sum())
        if method == "maxlogit_pnorm":
            centred = z - z.mean()
            return float(centred.max() / (centred.abs() ** pnorm_p).sum() ** (1.0 / pnorm_p))
    raise UnknownNameError(f"no reference implementation for {method!r}")
