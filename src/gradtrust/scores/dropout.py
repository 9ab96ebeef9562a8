"""``Pass.MC_DROPOUT``: ``T`` forward passes with dropout on, with masks that depend on (seed, sample id, pass,
layer) only, never on the batch.

torch's own dropout draws one mask for the whole batch from the global RNG, so a sample's score would
change with its batch-mates, the batch size or the number of GPUs. Here each mask element is a
counter-based hash (murmur3's 32-bit finaliser) of ``(seed, sample id, pass t, layer index, element
index)``: the same sample gets the same masks in any batch, on any device, in any process.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from gradtrust.errors import ModelError
from gradtrust.nn.outputs import model_logits
from gradtrust.scores.options import at_least_one
from gradtrust.scores.passes import BatchPasses
from gradtrust.scores.spec import Param, PassSpec

_MASK32 = 0xFFFFFFFF


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    """The dropout layers MC dropout switches on: ``nn.Dropout`` and ``nn.Dropout1d/2d/3d`` with ``p > 0``."""
    kinds = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
    return [m for m in model.modules() if type(m) in kinds and isinstance(m, _DropoutNd) and m.p > 0]


def _mul32(h: torch.Tensor, c: int) -> torch.Tensor:
    """``(h · c) mod 2³²`` for int64 ``h`` in [0, 2³²) without overflowing int64."""
    return (((((h >> 16) * c) & 0xFFFF) << 16) + (h & 0xFFFF) * c) & _MASK32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser: a bijective avalanche mix of 32-bit integers (held in int64)."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def keep_mask(shape: tuple[int, ...], p: float, seed: int, sample_ids: torch.Tensor, pass_index: int,
              layer_index: int, device: torch.device) -> torch.Tensor:
    """Boolean keep-mask of ``(B, *shape)``: element kept iff ``hash(seed, id, t, layer, element)/2³² ≥ p``."""
    key = _fmix32(torch.tensor([seed & _MASK32], dtype=torch.int64, device=device))
    key = _fmix32((key + 0x9E3779B9 * (layer_index + 1)) & _MASK32)
    key = _fmix32((key + 0x7F4A7C15 * (pass_index + 1)) & _MASK32)
    ids = sample_ids.to(device=device, dtype=torch.int64).reshape(-1, *([1] * len(shape)))
    per_sample = _fmix32((key + _mul32(ids & _MASK32, 0x27D4EB2F) + (ids >> 32)) & _MASK32)
    elements = torch.arange(math.prod(shape), dtype=torch.int64, device=device).reshape(1, *shape)
    h = _fmix32((per_sample ^ _fmix32(elements)) & _MASK32)
    return h.double() / 2.0**32 >= p


def _masked_forward(module: nn.Module, layer_index: int, seed: int, sample_ids: torch.Tensor, pass_index: int):
    if not isinstance(module, _DropoutNd):
        raise ModelError(f"expected a dropout layer, got {type(module).__name__}")
    p = module.p

    def forward(x: torch.Tensor) -> torch.Tensor:
        if type(module) is nn.Dropout:
            shape = tuple(x.shape[1:])
        else:  # channel dropout: one draw per (sample, channel), broadcast over the spatial dimensions
            shape = (x.shape[1],) + (1,) * (x.dim() - 2)
        keep = keep_mask(shape, p, seed, sample_ids, pass_index, layer_index, x.device)
        return x * keep.to(x.dtype) / (1.0 - p)

    return forward


@contextlib.contextmanager
def seeded_dropout(layers: list[nn.Module], seed: int, sample_ids: torch.Tensor, pass_index: int) -> Iterator[None]:
    """Within the block, ``layers`` apply the per-sample seeded masks of pass ``pass_index``: inverted dropout
    (scaled by ``1/(1−p)``) with the rest of the model in eval mode (Gal & Ghahramani, ICML 2016)."""
    try:
        for index, module in enumerate(layers):
            module.forward = _masked_forward(module, index, seed, sample_ids, pass_index)
        yield
    finally:
        for module in layers:
            module.__dict__.pop("forward", None)


def mc_mean_probabilities(ctx: BatchPasses) -> torch.Tensor:
    """``p̄ = mean_t softmax(f_t(x))`` over ``T`` passes with seeded per-sample dropout masks (B, C) float64."""
    total = None
    for t in range(ctx.options.mc_samples):
        with seeded_dropout(ctx.dropout_layers, ctx.options.seed, ctx.sample_ids, t), torch.no_grad():
            p = F.softmax(model_logits(ctx.model, ctx.inputs).double(), dim=1)
        total = p if total is None else total + p
    return total / ctx.options.mc_samples


def scripted_dropout_layers(model: nn.Module) -> int:
    """How many dropout layers a TorchScript model holds (by their original class names): a scripted module's
    forward is compiled, so MC dropout cannot switch them on per layer as it does in an eager model."""
    if not isinstance(model, torch.jit.ScriptModule):
        return 0
    names = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d")
    return sum(getattr(m, "original_name", "") in names for m in model.modules())


def _no_dropout(ctx: BatchPasses) -> str | None:
    if ctx.dropout_layers:
        return None
    scripted = scripted_dropout_layers(ctx.model)
    if scripted:
        return (f"the model is TorchScript: its {scripted} dropout layer(s) run compiled code that MC dropout cannot "
                "switch on layer by layer; load the eager nn.Module (a pickled model or a factory with a weights "
                "file) for MC dropout, or leave mc_dropout out of the methods.")
    return ("the model has no dropout layer with p > 0 (nn.Dropout / Dropout1d/2d/3d), so MC dropout is "
            "undefined; leave mc_dropout out of the methods.")


MC_DROPOUT = PassSpec(
    "MC_DROPOUT",
    provides={"mc_mean_probabilities": mc_mean_probabilities, "dropout_layers": lambda ctx: dropout_modules(ctx.model)},
    params=(Param("mc_samples", int, 10, "number T of MC-dropout passes", at_least_one),
            Param("seed", int, 0, "seed of the MC-dropout masks (with sample ids it fixes them per sample)")),
    unavailable=_no_dropout, module=__name__)
