"""Per-sample autograd of the whole model: the ``vmap`` and ``loop`` backends, exact for any model, at the
cost of ``B`` backward passes (the loop) or of ``B`` full parameter gradients in memory (vmap, in chunks).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from gradtrust.errors import ModelError
from gradtrust.nn.outputs import logits_of, model_logits
from gradtrust.per_sample.registry import DEFAULT_CHUNK_BYTES


def layer_weight(module: nn.Module) -> torch.Tensor:
    """``module.weight`` typed as the tensor it is (``nn.Module`` attributes are untyped until narrowed)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ModelError(f"{type(module).__name__} has no weight tensor; choose a layer with one (nn.Linear, "
                         "nn.ConvNd)")
    return weight


def sq_norms_by_loop(model: nn.Module, inputs: torch.Tensor,
                     loss_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Reference path: ``‖∂L_i/∂θ_j‖²`` by one ``torch.autograd.grad`` per sample, (B, J) float32. Sets
    ``requires_grad`` on the parameters until it returns; ``autograd.grad`` never writes ``.grad``."""
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
    """``‖∂L_i/∂θ_j‖²`` with ``torch.func.vmap(grad(·))`` over chunks of ``chunk_size`` samples, (B, J) float32."""
    from torch.func import functional_call, grad, vmap

    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: b for name, b in model.named_buffers()}

    def sample_loss(theta, x):
        logits = logits_of(functional_call(model, (theta, buffers), (x.unsqueeze(0),)))
        return loss_fn(logits).sum()

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0))
    chunks = (per_sample(params, inputs[start:start + chunk_size]) for start in range(0, inputs.shape[0], chunk_size))
    return torch.cat([torch.stack([grads[n].float().flatten(1).square().sum(1) for n in params], dim=1)
                      for grads in chunks])


def vmap_chunk_size(model: nn.Module, chunk_bytes: int = 4 * DEFAULT_CHUNK_BYTES) -> int:
    """Samples per vmap chunk so that one chunk's full parameter gradients stay under ``chunk_bytes``."""
    n_bytes = 4 * sum(p.numel() for p in model.parameters())
    return max(1, min(64, math.floor(chunk_bytes / max(n_bytes, 1))))
