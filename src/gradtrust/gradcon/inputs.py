"""Turning what a user passes to :class:`~gradtrust.gradcon.GradCON` into one checked image batch.

Accepted: a tensor or NumPy array ``(N, C, H, W)`` (float in ``[0, 1]``, or ``uint8`` in ``0..255``), a list
of ``(C, H, W)`` images, or an iterable of batches (a ``DataLoader``): each batch a tensor, an ``(inputs,
labels, …)`` tuple, or a :class:`gradtrust.data.Batch`; a dataset yielding :class:`gradtrust.data.Sample`
items works too. Everything is checked before any work starts: the error says what is wrong and what to do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from gradtrust.errors import InputError
from gradtrust.estimator import check_channels_first

__all__ = ["collect_images"]

_RANGE_TOL = 1e-6


def _as_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    return None


def _from_item(item: Any) -> torch.Tensor | None:
    """The image tensor inside one item of an iterable (a batch, a tuple, a Batch, a Sample)."""
    t = _as_tensor(item)
    if t is not None:
        return t
    inputs = getattr(item, "inputs", None)  # gradtrust.data.Batch
    if inputs is not None or hasattr(item, "failures"):
        return _as_tensor(inputs)
    sample_input = getattr(item, "input", None)  # gradtrust.data.Sample
    if sample_input is not None:
        return _as_tensor(sample_input)
    if isinstance(item, (tuple, list)) and item:
        return _as_tensor(item[0])
    raise InputError(
        f"cannot read images from an item of type {type(item).__name__}: expected a tensor, an (images, labels) "
        "tuple, a gradtrust.data.Batch or Sample")


def _to_float(t: torch.Tensor) -> torch.Tensor:
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    if t.dtype == torch.bool or not (t.is_floating_point()):
        raise InputError(f"images must be float in [0, 1] or uint8 in 0..255, got dtype {t.dtype}")
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _check_values(t: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{what} contain NaN or infinite pixel values")
    lo, hi = float(t.min()), float(t.max())
    if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
        raise InputError(
            f"{what} have pixel values in [{lo:.4g}, {hi:.4g}], but GradCON needs [0, 1] (its decoder ends in a "
            "sigmoid): pass un-normalised images (e.g. torchvision ToTensor() without Normalize, or the raw "
            "digits divided by 16)")


def _batch_shape_error(shape: tuple[int, ...], what: str) -> InputError:
    hint = {3: f" For one image of shape {shape} pass images[None] (or .unsqueeze(0)); for a batch of grey "
               "images of shape (N, H, W) pass images[:, None].",
            2: " For one grey image pass images[None, None]."}.get(len(shape), "")
    return InputError(f"{what} must be a batch of shape (N, C, H, W), got shape {shape}.{hint}")


def collect_images(data: Any, what: str = "images") -> torch.Tensor:
    """All images of ``data`` as one float tensor ``(N, C, H, W)`` in ``[0, 1]`` (on the CPU unless ``data``
    is a single tensor elsewhere). An ``InputError`` for no image at all; not 4-D (for a single ``(C, H, W)``
    image the message shows how to make it a batch); mixed sizes or channel counts; values outside ``[0, 1]``,
    NaN or infinite.
    """
    if data is None:
        raise InputError(f"no {what} given (got None)")
    t = _as_tensor(data)
    if t is not None:
        if t.dim() != 4:
            raise _batch_shape_error(tuple(t.shape), what)
        check_channels_first(tuple(t.shape), what)
        parts = [t]
    elif isinstance(data, (str, bytes)) or not isinstance(data, Iterable) and not hasattr(data, "__getitem__"):
        raise InputError(f"cannot read {what} from a {type(data).__name__}: pass a tensor (N, C, H, W), a list "
                         "of (C, H, W) images or a DataLoader")
    else:
        parts = []
        for item in data:
            x = _from_item(item)
            if x is None:
                continue  # a batch whose every sample failed to load
            if x.dim() == 3:
                x = x.unsqueeze(0)  # a list of single images, or a dataset of Samples
            if x.dim() != 4:
                raise _batch_shape_error(tuple(x.shape), f"each batch of {what}")
            check_channels_first(tuple(x.shape), f"each batch of {what}")
            parts.append(x)
    parts = [p for p in parts if p.shape[0] > 0]
    if not parts:
        raise InputError(f"no {what} given (the input is empty)")
    sizes = Counter(tuple(p.shape[1:]) for p in parts for _ in range(p.shape[0]))
    if len(sizes) > 1:
        listing = ", ".join(f"{n} of {tuple(s)}" for s, n in sizes.most_common(5))
        raise InputError(
            f"{what} have mixed sizes (C, H, W): {listing}. One call takes images of one size and channel "
            "count: resize them first (e.g. torchvision.transforms.Resize), or score each size separately")
    images = _to_float(parts[0] if len(parts) == 1 else torch.cat([p.cpu() for p in parts]))
    _check_values(images, what)
    return images
