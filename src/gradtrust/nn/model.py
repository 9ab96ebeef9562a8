"""The model and its inputs as every capability receives them: one module, one checked batch on its device."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from gradtrust.errors import GradTrustError, InputError, ModelError

__all__ = ["as_module", "device_of", "input_mismatch", "prepare_inputs"]


def as_module(model: Any) -> nn.Module:
    """The ``nn.Module`` of ``model``: the module itself, or a :class:`gradtrust.models.LoadedModel`'s
    ``.module``. Anything else raises :class:`ModelError`."""
    module = getattr(model, "module", model)
    if not isinstance(module, nn.Module):
        raise ModelError(f"expected a torch.nn.Module (or a gradtrust LoadedModel), got {type(model).__name__}.")
    return module


def device_of(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (the CPU for a module without parameters)."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def prepare_inputs(module: nn.Module, inputs: Any) -> torch.Tensor:
    """``inputs`` as a batch ``module`` can run: a tensor (converted from an array if needed) on the device and in
    the floating dtype of the module's first floating parameter (or buffer), unchanged without either.

    Raises :class:`InputError` for what cannot be a batch: not a tensor, fewer than two dimensions, empty, an
    integer/bool dtype (not preprocessed), or one sample without its batch dimension.
    """
    if not isinstance(inputs, torch.Tensor):
        try:
            inputs = torch.as_tensor(inputs)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"inputs must be a tensor (batch first), got {type(inputs).__name__}.") from exc
    if inputs.dim() < 2:
        raise InputError(f"inputs must be a batch with the batch dimension first, got shape {tuple(inputs.shape)}; "
                         "for a single sample use inputs.unsqueeze(0).")
    if inputs.shape[0] == 0:
        raise InputError("inputs hold an empty batch (batch dimension 0).")
    if not inputs.is_floating_point():
        raise InputError(f"inputs must be a floating-point tensor already preprocessed for the model, got dtype "
                         f"{inputs.dtype}; convert images with the model's transform (LoadedModel.transform) first.")
    first_conv = next((m for m in module.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
    if first_conv is not None and inputs.dim() == first_conv.weight.dim() - 1:
        # Convolutions accept one sample without its batch dimension, so a (C, H, W) image would "run"
        # and fail later with an unrelated message (or be scored as a batch of C samples).
        raise InputError(f"inputs of shape {tuple(inputs.shape)} have no batch dimension (the model's first "
                         f"layer is a {type(first_conv).__name__}, which takes {first_conv.weight.dim()}-D batches); "
                         "for a single sample use inputs.unsqueeze(0).")
    reference: torch.Tensor | None = next((p for p in module.parameters() if p.is_floating_point()), None)
    if reference is None:
        reference = next((b for b in module.buffers() if b.is_floating_point()), None)
    if reference is not None:
        inputs = inputs.to(device=reference.device, dtype=reference.dtype)
    return inputs


@contextlib.contextmanager
def input_mismatch(inputs: torch.Tensor) -> Iterator[None]:
    """Inside, an error the model raises on ``inputs`` — a ``RuntimeError`` (wrong size or channels), a
    ``ValueError`` (BatchNorm's "expected 4D input") or an ``AssertionError`` (torchvision's ViT checks the
    image size) — becomes an :class:`InputError` naming the inputs' shape; GradTrust's own errors pass."""
    try:
        yield
    except (RuntimeError, ValueError, AssertionError) as exc:
        if isinstance(exc, GradTrustError):
            raise
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"the model could not run on inputs of shape {tuple(inputs.shape)} ({inputs.dtype}): "
                         f"{first_line}. Check the input size and channels the model expects and apply its "
                         "preprocessing (LoadedModel.transform).") from exc
