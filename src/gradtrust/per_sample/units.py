"""Units: submodules whose parameters' per-sample norms come from per-sample autograd of that submodule alone.

A unit is the smallest submodule owning a parameter no kernel or rule covers (a relative-position bias table,
an attention in-projection…). From the input it received in the forward pass and the gradient of its output,
``∂L_i/∂θ = J_θ(f(x_i))ᵀ g_i`` by ``torch.func.vmap`` of the vector-Jacobian product over samples, else one
``torch.autograd.grad`` per sample (:func:`unit_sq_norms`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gradtrust.per_sample.registry import UnsupportedForHooks


def first_tensor(output: Any) -> torch.Tensor:
    """The tensor output of a unit: the output itself, or the first element of a tuple whose other elements
    carry no gradient (``nn.MultiheadAttention`` returns ``(out, None)`` with ``need_weights=False``)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        if all(not (isinstance(o, torch.Tensor) and o.requires_grad) for o in output[1:]):
            return output[0]
    raise UnsupportedForHooks(f"a unit returned {type(output).__name__} with several differentiable outputs")


@dataclass
class UnitCall:
    """What a unit received in the forward pass."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    versions: tuple[int, ...]


def unit_sq_norms(unit: nn.Module, call: UnitCall, g: torch.Tensor, chunk_bytes: int) -> tuple[dict[str, torch.Tensor],
                                                                                                str]:
    """``‖∂L_i/∂θ‖²`` per sample for every parameter ``θ`` of ``unit`` (B,) float32, and how ("vmap"/"loop").

    ``∂L_i/∂θ = J_θ(f(x_i))ᵀ g_i``: the vector-Jacobian product of the unit's function at sample ``i``'s
    input with the gradient of its output, by ``torch.func.vmap`` over samples (chunks bounded by
    ``chunk_bytes`` of per-sample gradients), else one ``torch.autograd.grad`` per sample. Exact as long as
    the unit treats samples independently (eval mode), as the whole hook path assumes.
    """
    from torch.func import functional_call, vjp, vmap

    batch = g.shape[0]
    params = {n: p.detach() for n, p in unit.named_parameters()}
    batched = [i for i, a in enumerate(call.args) if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == batch]
    if any(isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == batch for v in call.kwargs.values()):
        raise UnsupportedForHooks("a unit received a per-sample tensor as a keyword argument")

    def run(theta, xs):
        args = list(call.args)
        for i, x in zip(batched, xs, strict=True):
            args[i] = x
        return first_tensor(functional_call(unit, theta, tuple(args), dict(call.kwargs)))

    def one(xs, gi):
        pullback = vjp(lambda theta: run(theta, [x.unsqueeze(0) for x in xs]), params)[1]
        (grads,) = pullback(gi.unsqueeze(0).to(run_dtype))
        return {n: gr.float().square().sum() for n, gr in grads.items()}

    run_dtype = g.dtype
    inputs = [call.args[i] for i in batched]
    per_sample_bytes = 4 * max(1, sum(p.numel() for p in params.values())) * 3
    step = max(1, min(batch, chunk_bytes // per_sample_bytes))
    try:
        parts = [vmap(one)([x[s:s + step] for x in inputs], g[s:s + step]) for s in range(0, batch, step)]
        return {n: torch.cat([p[n] for p in parts]) for n in params}, "vmap"
    except UnsupportedForHooks:
        raise
    except Exception:  # noqa: BLE001 - any vmap limitation: the exact per-sample loop on this unit alone
        pass
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in params}
    theta = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    for s in range(batch):
        with torch.enable_grad():
            out = run(theta, [x[s:s + 1] for x in inputs])
            grads = torch.autograd.grad(out, list(theta.values()), g[s:s + 1], allow_unused=True)
        for n, gr in zip(theta, grads, strict=True):
            rows[n].append(torch.zeros((), device=g.device) if gr is None else gr.float().square().sum())
    return {n: torch.stack(r) for n, r in rows.items()}, "loop"
