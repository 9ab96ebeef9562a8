"""Explanations by intervention: occlusion, RISE and SHAPE (``SPEC.md`` §10, ``docs/explanations.md``).

Each reads the model on masked copies of the input. ``P_t(x)`` is the softmax probability of the target class
``t`` (the prediction unless given); a removed pixel takes the *fill* value 0 in the model's input space — the
normalised dataset mean, not black (seed 004: "not a black patch because the input images are centred") —
so a masked copy with a keep-mask ``m`` is ``x ⊙ m + 0 ⊙ (1 − m) = x ⊙ m``.

=============  ============================================================================================
``occlusion``  ``M(i,j) = mean_{patches k ∋ (i,j)} [P_t(x) − P_t(x with patch k filled)]`` — a ``p×p`` patch
               slid with stride ``s`` (the last row/column of patches is moved in to touch the border, so every
               pixel is covered). Zeiler & Fergus, ECCV 2014; seed 004 "input saliency via occlusions".
``rise``       ``M = (1/(N·q)) Σ_i P_t(x ⊙ m_i) · m_i`` over ``N`` random masks ``m_i`` (keep probability
               ``q``). Petsiuk, Das & Saenko, "RISE", BMVC 2018.
``shape``      ``M = (1/(N·(1 − q))) Σ_i (P_t(x) − P_t(x ⊙ m_i)) · (1 − m_i)``: the same masks, weighted by the
               *drop* in probability, over the inverse masks (the seed's description, formalised here).
=============  ============================================================================================

RISE masks (Petsiuk et al.'s release): a binary ``g×g`` grid, each cell 1 with probability ``q``, bilinearly
upsampled (``align_corners=False``) to ``((g+1)·c_h) × ((g+1)·c_w)`` with the cell size ``c = ⌈H/g⌉``
(``⌈W/g⌉``), then cropped to ``H×W`` at a random shift in ``[0, c_h) × [0, c_w)``. The grids and shifts of
all ``N`` masks are drawn up front from a CPU ``torch.Generator`` seeded with ``seed``, so the masks (and the
maps) do not depend on the device, the batch size or the memory bound.

Cost: ``B·K`` forward passes of single images (``K`` = patches or masks), packed into forward batches of at most
``batch_bytes`` of input (``max(1, batch_bytes // bytes per image)`` images, masks of several samples sharing
one forward), with no gradient. Maps are returned signed, at input resolution; :class:`~gradtrust.explanations.
cams.Explanation` min-max normalises them per image like every other map.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from gradtrust.errors import InputError
from gradtrust.explanations.layers import run_model

PERTURBATION_METHODS = ("occlusion", "rise", "shape")
DEFAULT_BATCH_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class PerturbationOptions:
    """Options of ``occlusion``, ``rise`` and ``shape`` (recorded in a run's identity).

    ``num_masks`` (N), ``mask_grid`` (g), ``keep_probability`` (q): RISE/SHAPE masks (Petsiuk et al.'s
    defaults; the seed quotes "6000 random masks"). ``patch_size`` (p) and ``stride`` (s): occlusion; ``None``
    means ``p = max(1, min(H, W) // 8)`` and ``s = max(1, p // 2)``. ``seed``: the masks' generator.
    ``batch_bytes``: the memory bound of one packed forward batch of masked copies (their input bytes).
    """

    num_masks: int = 4000
    mask_grid: int = 7
    keep_probability: float = 0.5
    patch_size: int | None = None
    stride: int | None = None
    seed: int = 0
    batch_bytes: int = DEFAULT_BATCH_BYTES

    def __post_init__(self) -> None:
        for name in ("num_masks", "mask_grid", "batch_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}.")
        for name in ("patch_size", "stride"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InputError(f"{name} must be a positive integer or None (the default), got {value!r}.")
        if not 0.0 < float(self.keep_probability) < 1.0:
            raise InputError(f"keep_probability must be in (0, 1), got {self.keep_probability!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InputError(f"seed must be an integer, got {self.seed!r}.")

    def identity(self) -> dict:
        """The options that change a map (``batch_bytes`` does not)."""
        values = asdict(self)
        values.pop("batch_bytes")
        return values

    def patch(self, size: tuple[int, int]) -> tuple[int, int]:
        """``(p, s)`` for inputs of ``size`` (H, W): the given values or the defaults, ``p`` at most ``min(H, W)``."""
        p = self.patch_size if self.patch_size is not None else max(1, min(size) // 8)
        p = min(p, *size)
        return p, (self.stride if self.stride is not None else max(1, p // 2))


def target_probability(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``P_t = softmax(z)_t`` per row, float32."""
    return torch.softmax(logits.float(), dim=1).gather(1, target[:, None])[:, 0]


def patch_starts(size: int, patch: int, stride: int) -> list[int]:
    """Start offsets ``0, s, 2s, …`` of a ``patch`` slid along ``size`` pixels, plus ``size − patch`` when the
    strides stop short of the border (every pixel is covered)."""
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def occlusion_masks(size: tuple[int, int], patch: int, stride: int) -> torch.Tensor:
    """The ``(K, H, W)`` keep-masks of occlusion (0 on the patch, 1 elsewhere), rows first."""
    h, w = size
    rows, cols = patch_starts(h, patch, stride), patch_starts(w, patch, stride)
    masks = torch.ones(len(rows) * len(cols), h, w)
    for k, (r, c) in enumerate((r, c) for r in rows for c in cols):
        masks[k, r : r + patch, c : c + patch] = 0
    return masks


class RiseMasks:
    """The ``N`` RISE masks of one seed (module docstring), made on demand in any slice: ``masks[a:b]``."""

    def __init__(self, size: tuple[int, int], options: PerturbationOptions):
        g, n = options.mask_grid, options.num_masks
        self.size, self.grid, self.count = size, g, n
        self.cell = (math.ceil(size[0] / g), math.ceil(size[1] / g))
        gen = torch.Generator().manual_seed(options.seed)
        self.grids = (torch.rand(n, g, g, generator=gen) < options.keep_probability).float()
        self.shifts = torch.stack(
            [torch.randint(0, self.cell[0], (n,), generator=gen), torch.randint(0, self.cell[1], (n,), generator=gen)],
            1,
        )

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, span: slice) -> torch.Tensor:
        grids, shifts = self.grids[span], self.shifts[span]
        up = ((self.grid + 1) * self.cell[0], (self.grid + 1) * self.cell[1])
        big = F.interpolate(grids[:, None], size=up, mode="bilinear", align_corners=False)[:, 0]
        h, w = self.size
        return torch.stack(
            [big[i, int(dy) : int(dy) + h, int(dx) : int(dx) + w] for i, (dy, dx) in enumerate(shifts.tolist())]
        )


def masked_probabilities(
    module: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    masks: Callable[[slice], torch.Tensor],
    count: int,
    *,
    background: torch.Tensor | None = None,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    progress: bool = False,
    desc: str = "masked passes",
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """``P_t(b + (x − b) ⊙ m)`` for every sample and every mask of ``masks[0:count]``, ``b`` = ``background``
    (B, *x.shape[1:]) or the fill 0 (then the copy is ``x ⊙ m``).

    ``masks(span)`` returns the span's keep-masks, shared (k, H, W) or per sample (B, k, H, W); a mask covers every
    channel (and frame). Yields ``(span, masks, P)`` with the span's masks on ``x``'s device and ``P`` (B, k)
    float32, for consecutive mask spans. The ``B·k`` masked copies of a span go through the model together: a span
    holds ``max(1, per_forward // B)`` masks, ``per_forward = max(1, batch_bytes // bytes of one input)``; when
    ``B > per_forward`` the samples are split too.
    """
    per_image = x[0].numel() * x.element_size()
    per_forward = max(1, batch_bytes // per_image)
    sample_step = min(x.shape[0], per_forward)
    mask_step = max(1, per_forward // sample_step)
    extra = (1,) * (x.dim() - 3)  # channel (and time) axes the mask is broadcast over
    from tqdm import tqdm

    with tqdm(total=x.shape[0] * count, desc=desc, unit="pass", disable=not progress, leave=False) as bar:
        for start in range(0, count, mask_step):
            span = slice(start, min(count, start + mask_step))
            m = masks(span).to(device=x.device, dtype=x.dtype)
            k = m.shape[-3]
            out = torch.empty(x.shape[0], k, device=x.device)
            for s0 in range(0, x.shape[0], sample_step):
                xs = x[s0 : s0 + sample_step]
                ms = (
                    m.reshape(1, k, *extra, *m.shape[-2:])
                    if m.dim() == 3
                    else m[s0 : s0 + sample_step].reshape(xs.shape[0], k, *extra, *m.shape[-2:])
                )
                if background is None:
                    copies = xs[:, None] * ms
                else:
                    bg = background[s0 : s0 + sample_step, None]
                    copies = bg + (xs[:, None] - bg) * ms
                logits = run_model(module, copies.flatten(0, 1))
                t = target[s0 : s0 + sample_step].repeat_interleave(k)
                out[s0 : s0 + sample_step] = target_probability(logits, t).reshape(xs.shape[0], k)
                bar.update(xs.shape[0] * k)
            yield span, m, out


def perturbation_maps(
    module: nn.Module,
    x: torch.Tensor,
    logits: torch.Tensor,
    target: torch.Tensor,
    methods: list[str],
    options: PerturbationOptions,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """The signed ``(B, H, W)`` float32 maps of ``methods`` (a subset of :data:`PERTURBATION_METHODS`).

    ``module`` is in its scoring state; ``logits`` are its logits on ``x`` and ``target`` (B,) the class ids.
    RISE and SHAPE share one set of masked passes.
    """
    size = (x.shape[-2], x.shape[-1])
    base = target_probability(logits, target).double()  # P_t(x)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        if "occlusion" in methods:
            patch, stride = options.patch(size)
            keep = occlusion_masks(size, patch, stride)
            drop = torch.empty(x.shape[0], keep.shape[0], dtype=torch.float64, device=x.device)
            for span, _, prob in masked_probabilities(
                module,
                x,
                target,
                lambda s: keep[s],
                keep.shape[0],
                batch_bytes=options.batch_bytes,
                progress=progress,
                desc="occlusion",
            ):
                drop[:, span] = base[:, None] - prob.double()
            covered = (1 - keep).double().to(x.device)  # (K, H, W): 1 on patch k
            out["occlusion"] = (torch.einsum("bk,khw->bhw", drop, covered) / covered.sum(0)).float()
        wanted = [m for m in ("rise", "shape") if m in methods]
        if wanted:
            masks = RiseMasks(size, options)
            q = float(options.keep_probability)
            rise = torch.zeros(x.shape[0], *size, dtype=torch.float64, device=x.device)
            shape = torch.zeros_like(rise)
            for _, m_span, prob in masked_probabilities(
                module,
                x,
                target,
                masks.__getitem__,
                len(masks),
                batch_bytes=options.batch_bytes,
                progress=progress,
                desc="RISE/SHAPE masks",
            ):
                m = m_span.double()
                rise += torch.einsum("bk,khw->bhw", prob.double(), m)
                shape += torch.einsum("bk,khw->bhw", base[:, None] - prob.double(), 1 - m)
            if "rise" in wanted:
                out["rise"] = (rise / (len(masks) * q)).float()
            if "shape" in wanted:
                out["shape"] = (shape / (len(masks) * (1 - q))).float()
    return {m: out[m] for m in methods}
