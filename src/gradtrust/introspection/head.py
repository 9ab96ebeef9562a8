"""``H``, the introspective network: a small MLP on ``r = vec(â ĥᵀ)`` whose first layer never sees ``r``.

A dense first layer ``W₁ ∈ R^{k×(C·D)}`` applied to ``s·r`` (``s = √(C·D)``, so that the entries of ``s·r``
have mean square 1) is, by the rank-one structure of ``r``,

    (W₁ · s·r)_j = s · Σ_{c,d} W₁[j, c, d] â_c ĥ_d = s · âᵀ W₁[j] ĥ           (a bilinear form)

computed as one matrix product ``ĥ · W₁ᵀ`` reshaped to ``(B, k, C)`` and a contraction with ``â``: exactly
the dense layer's value, for ``k·C·D`` multiply-adds per sample, while a sample is stored as ``C + D``
numbers instead of ``C·D``. ``docs/introspection.md`` gives the memory and cost.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["IntrospectiveHead"]


class IntrospectiveHead(nn.Module):
    """``H(r) = W₂ ReLU(s · W₁ r + b₁) + b₂`` with ``W₁`` stored as a ``(hidden, C, D)`` tensor.

    ``forward(a, h)`` takes the unit factors of ``r`` (``(B, C)``, ``(B, D)``); :meth:`dense_forward` takes
    ``r`` itself (``(B, C·D)``, row-major: index ``c·D + d``) and must give the same numbers (tests check it).
    """

    def __init__(self, num_classes: int, num_features: int, hidden: int = 64,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        c, d = int(num_classes), int(num_features)
        self.num_classes, self.num_features, self.hidden = c, d, int(hidden)
        self.scale = math.sqrt(c * d)
        # nn.Linear's default initialisation for fan-in C·D (kaiming uniform, a = √5): U(±1/√(C·D))
        bound = 1.0 / math.sqrt(c * d)
        self.first = nn.Parameter(torch.empty(hidden, c, d).uniform_(-bound, bound, generator=generator))
        self.first_bias = nn.Parameter(torch.empty(hidden).uniform_(-bound, bound, generator=generator))
        self.out = nn.Linear(hidden, c)
        out_bound = 1.0 / math.sqrt(hidden)
        with torch.no_grad():
            self.out.weight.uniform_(-out_bound, out_bound, generator=generator)
            self.out.bias.uniform_(-out_bound, out_bound, generator=generator)

    def first_layer(self, a: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``s · W₁ · vec(a hᵀ) + b₁`` for a batch, without forming ``vec(a hᵀ)``."""
        k, c, d = self.first.shape
        t = h @ self.first.reshape(k * c, d).t()  # (B, k·C): Σ_d W₁[j, c, d] h_d
        return self.scale * torch.einsum("bjc,bc->bj", t.reshape(-1, k, c), a) + self.first_bias

    def forward(self, a: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.first_layer(a, h)))

    def dense_forward(self, r: torch.Tensor) -> torch.Tensor:
        """The same network on the dense features ``r`` (B, C·D): for tests and small problems only."""
        k = self.first.shape[0]
        pre = self.scale * (r @ self.first.reshape(k, -1).t()) + self.first_bias
        return self.out(torch.relu(pre))
