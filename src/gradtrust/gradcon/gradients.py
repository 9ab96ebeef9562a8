"""Per-sample reconstruction error and decoder-gradient cosines, the two ingredients of the GradCON score
(Kwon et al., ECCV 2020; see ``docs/gradcon.md``).

For one image ``x`` with reconstruction ``x̂ = AE(x)``:

    MSE(x) = mean over pixels of (x̂ − x)²
    g_i(x) = ∂MSE(x)/∂W_i                      (W_i: weight of the i-th transposed convolution of the decoder)
    cos_i(x) = ⟨g_i(x), ḡ_i⟩ / max(‖g_i(x)‖₂ ‖ḡ_i‖₂, ε)      ε = 1e-12

:func:`per_sample_terms` computes them for a whole batch at once: ``torch.func.vmap`` over
``torch.func.grad`` of a ``functional_call`` of the autoencoder, in chunks (one batched forward and backward
per chunk, no Python loop over images). :func:`per_sample_terms_loop` is the plain per-image
``torch.autograd.grad`` computation of the same numbers (the release's way, batch size 1): the reference the
tests compare against, and the baseline of ``benchmarks/bench_gradcon.py``. Not :func:`gradtrust.per_sample.sq_norms`:
a cosine needs each per-sample gradient's inner product with ``ḡ_i``, which its squared norms cannot give.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["COS_EPS", "cosine", "per_sample_terms", "per_sample_terms_loop"]

#: Floor of the norm product in the cosine (a zero gradient gives cosine 0, not NaN).
COS_EPS = 1e-12


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``⟨a, b⟩ / max(‖a‖₂‖b‖₂, ε)`` over all but the leading (batch) dimension of ``a``; ``b`` has no batch."""
    a2 = a.reshape(a.shape[0], -1)
    b1 = b.reshape(-1).to(a2.dtype)
    dot = a2 @ b1
    return dot / (a2.norm(dim=1) * b1.norm()).clamp_min(COS_EPS)


def per_sample_terms(
    model: nn.Module,
    images: torch.Tensor,
    reference: Sequence[torch.Tensor],
    weight_names: Sequence[str],
    *,
    chunk_size: int = 128,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mse, cos)`` for every image of a batch: ``mse`` ``(N,)``, ``cos`` ``(N, L)`` (one column per
    decoder layer), computed batched (``vmap(grad(...))`` over chunks of ``chunk_size`` images).

    ``images`` must already be at the autoencoder's working size; ``reference[i]`` is ``ḡ_i`` for the weight
    named ``weight_names[i]``. The model is used as a pure function: its parameters and ``.grad`` are
    untouched.
    """
    from torch.func import functional_call, grad, vmap

    others = {n: p.detach() for n, p in model.named_parameters() if n not in weight_names}
    weights = {n: p.detach() for n, p in model.named_parameters() if n in weight_names}
    buffers = dict(model.named_buffers())

    def loss(weights: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1 = x.unsqueeze(0)
        recon = functional_call(model, ({**others, **weights}, buffers), (x1,))
        mse = (recon - x1).pow(2).mean()
        return mse, mse.detach()

    per_sample = vmap(grad(loss, has_aux=True), in_dims=(None, 0))
    mses: list[torch.Tensor] = []
    coss: list[torch.Tensor] = []
    for start in range(0, images.shape[0], chunk_size):
        x = images[start:start + chunk_size]
        grads, mse = per_sample(weights, x)
        coss.append(torch.stack([cosine(grads[n], ref) for n, ref in zip(weight_names, reference, strict=True)],
                                dim=1))
        mses.append(mse)
    return torch.cat(mses), torch.cat(coss)


def per_sample_terms_loop(
    model: nn.Module,
    images: torch.Tensor,
    reference: Sequence[torch.Tensor],
    weight_names: Sequence[str],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same ``(mse, cos)`` as :func:`per_sample_terms`, one image at a time with ``torch.autograd.grad``
    (the release's batch-size-1 scoring loop). Reference implementation; slow."""
    from torch.func import functional_call

    # Leaf copies of the weights, so that a frozen model (requires_grad False) can be differentiated too.
    params = {n: p.detach() for n, p in model.named_parameters()}
    wrt = [params[n].clone().requires_grad_(True) for n in weight_names]
    params.update(zip(weight_names, wrt, strict=True))
    buffers = dict(model.named_buffers())
    mses: list[torch.Tensor] = []
    coss: list[torch.Tensor] = []
    for x in images:
        x1 = x.unsqueeze(0)
        with torch.enable_grad():
            mse = (functional_call(model, (params, buffers), (x1,)) - x1).pow(2).mean()
            grads = torch.autograd.grad(mse, wrt)
        mses.append(mse.detach())
        coss.append(torch.stack([cosine(g.unsqueeze(0), ref)[0] for g, ref in zip(grads, reference, strict=True)]))
    return torch.stack(mses), torch.stack(coss)
