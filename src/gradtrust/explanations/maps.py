"""From channel weights to maps: ``M = ReLU(Σ_k α_k A_k)`` at the layer's resolution, bilinear upsampling to
the input size and per-image min-max normalisation (Selvaraju et al., Grad-CAM, ICCV 2017; Prabhushankar &
AlRegib, IEEE SPM 2022; ``docs/explanations.md``).

Video layers ``(B, K, t, h, w)``: ``α`` averages the gradient over time and space, and the map is the time
average of ``Σ_k α_k A_k`` (before the ReLU), so every model gives ``(B, h, w)`` maps.

Bilinear upsampling (``align_corners=False``) is separable and linear: ``up(M) = R M Cᵀ`` with ``R (H×h)`` and
``C (W×w)`` the interpolation matrices (:func:`interpolation_matrix`). Within a run of output rows that share
their two source rows the interpolant is linear in the row index, so the minimum and maximum of an upsampled
map are reached on the rows and columns that end such runs (:func:`run_ends`): ``4·h·w`` pixels instead of
``H·W``. VOICE uses both facts to get exact input-resolution statistics from layer-resolution maps.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def weighted_map(alpha: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """``Σ_k α_k A_k`` before the ReLU (time-averaged for video, see the module docstring): α (B, K) or
    (B, c, K), A (B, K, *spatial) → (B, [c,] h, w) float32."""
    acts = acts.float()
    if acts.dim() == 5:
        acts = acts.mean(2)
    if alpha.dim() == 2:
        return torch.einsum("bk,bkhw->bhw", alpha.float(), acts)
    return torch.einsum("bck,bkhw->bchw", alpha.float(), acts)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling (``align_corners=False``) of (..., h, w) maps to (..., H, W)."""
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max normalisation over the last two dims; a constant (or non-finite) map becomes zeros."""
    flat = maps.flatten(-2)
    lo, hi = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    span = hi - lo
    ok = (span > 0) & torch.isfinite(span)
    out = torch.where(ok, (flat - lo) / torch.where(ok, span, torch.ones_like(span)), torch.zeros_like(flat))
    return out.reshape(maps.shape)


def interpolation_matrix(n_in: int, n_out: int, device: torch.device | str = "cpu",
                         dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``R (n_out × n_in)`` with ``upsample(x) = R x`` along one axis, read off ``F.interpolate`` itself."""
    eye = torch.eye(n_in, dtype=dtype, device=device)[None, None]  # (1, 1, n_in, n_in): column j = e_j
    out = F.interpolate(eye, size=(n_out, n_in), mode="bilinear", align_corners=False)
    return out[0, 0]


def run_ends(matrix: torch.Tensor) -> torch.Tensor:
    """Output indices that start or end a run of rows with the same source support (see the module doc)."""
    nonzero = matrix != 0
    first = nonzero.int().argmax(1)
    last = matrix.shape[1] - 1 - nonzero.flip(1).int().argmax(1)
    sig = first * matrix.shape[1] + last
    n = sig.shape[0]
    change = torch.ones(n + 1, dtype=torch.bool, device=matrix.device)  # change[i]: row i starts a run (i = n: end)
    change[1:-1] = sig[1:] != sig[:-1]
    return torch.nonzero(change[:-1] | change[1:]).flatten()


class Upsampler:
    """The interpolation matrices of one (h, w) → (H, W) upsampling and their run ends, float64."""

    def __init__(self, layer_size: tuple[int, int], size: tuple[int, int], device: torch.device | str):
        self.rows = interpolation_matrix(layer_size[0], size[0], device)  # (H, h)
        self.cols = interpolation_matrix(layer_size[1], size[1], device)  # (W, w)
        self.rows_end = self.rows[run_ends(self.rows)]
        self.cols_end = self.cols[run_ends(self.cols)]

    def range(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact min and max of ``upsample(maps)`` over (H, W) for (..., h, w) maps, from the run ends only."""
        sub = torch.einsum("ia,...ab,jb->...ij", self.rows_end, maps.double(), self.cols_end)
        return sub.flatten(-2).amin(-1), sub.flatten(-2).amax(-1)

    def apply(self, maps: torch.Tensor) -> torch.Tensor:
        """``R M Cᵀ`` for (..., h, w) maps (float64)."""
        return torch.einsum("ia,...ab,jb->...ij", self.rows, maps.double(), self.cols)

    def squared(self, gram: torch.Tensor, chunk_bytes: int = 64 * 1024 * 1024) -> torch.Tensor:
        """``Σ_Q up(N_Q)²`` per pixel from the Grams ``G = Σ_Q vec(N_Q) vec(N_Q)ᵀ`` (B, h·w, h·w) → (B, H, W).

        ``up(N)(i,j) = Σ_{a,b} R_ia C_jb N_ab``, so ``Σ_Q up(N_Q)(i,j)² = Σ_{a,b,a',b'} R_ia R_ia' C_jb C_jb'
        G[(a,b),(a',b')]``, contracted one axis at a time (in chunks of samples to bound memory).
        """
        h, w = self.rows.shape[1], self.cols.shape[1]
        per_sample = 8 * self.rows.shape[0] * w * h * w
        step = max(1, chunk_bytes // max(per_sample, 1))
        out = []
        for start in range(0, gram.shape[0], step):
            g = gram[start:start + step].reshape(-1, h, w, h, w)
            x = torch.einsum("ia,nawcv->niwcv", self.rows, g)
            y = torch.einsum("ic,niwcv->niwv", self.rows, x)
            z = torch.einsum("jw,niwv->nijv", self.cols, y)
            out.append(torch.einsum("jv,nijv->nij", self.cols, z))
        return torch.cat(out)
