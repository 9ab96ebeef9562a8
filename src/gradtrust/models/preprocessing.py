"""Preprocessing for any model: image → model-ready tensor, described by a few numbers.

A model file, a factory (``package.module:factory``) or an ``nn.Module`` comes without its
preprocessing; :class:`Preprocessing` says it (``gradtrust score --input-size/--resize/--crop/--mean/--std/
--interpolation``, or ``--preprocessing torchvision:resnet18`` to borrow a known one, then override any
field). The pipeline is torchvision's ``ImageClassification`` (what ``Weights.transforms()`` returns)::

    x = normalize(convert_image_dtype(center_crop(resize(image, resize), crop)), mean, std)

* ``resize``: the shorter side is resized to ``resize`` (one number; aspect ratio kept), or the image to
  ``(H, W)`` exactly (two numbers). ``None``: no resize.
* ``crop``: centre crop to ``crop × crop`` (or ``(H, W)``). ``None``: no crop.
* ``input_size``: shorthand for the final size. Alone it resizes the whole image to ``(S, S)`` (no crop,
  aspect ratio not kept, as CIFAR-style pipelines do); with ``resize`` it is the crop size.
* ``mean``/``std``: per-channel normalisation of ``[0, 1]`` values; ``None``: none.
* ``interpolation``: ``bilinear`` (default), ``bicubic``, ``nearest``, ``nearest-exact``; antialiased.

Without a resize to one fixed size, images of different sizes cannot be batched: the runner says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from gradtrust.errors import ModelError, UnknownNameError
from gradtrust.models.specs import unknown_message

__all__ = ["INTERPOLATIONS", "Preprocessing", "PreprocessTransform", "borrow_preprocessing", "preprocessing_of"]

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "nearest-exact")


def _numbers(value: Any, name: str, kind: type) -> tuple[Any, ...] | None:
    """``"224"``, ``"224,160"``, ``"0.5,0.5,0.5"``, a number or a sequence → a tuple of ``kind`` (None stays None):
    one or two positive sizes (``int``), or one or three finite per-channel values (``float``)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in value.replace("x", ",").split(",") if v.strip()]
    wanted = (f"{name} must be one or two positive integers (e.g. 224 or 224,160)" if kind is int else
              f"{name} must be 1 or 3 finite numbers, one per RGB channel (e.g. 0.485,0.456,0.406)")
    try:
        numbers = tuple(kind(v) for v in (list(value) if isinstance(value, Sequence) else [value]))
    except (TypeError, ValueError):
        raise ModelError(f"{wanted}, got {value!r}") from None
    if not (1 <= len(numbers) <= 2 and min(numbers) >= 1 if kind is int else
            len(numbers) in (1, 3) and all(math.isfinite(v) for v in numbers)):
        raise ModelError(f"{wanted}, got {value!r}")
    return numbers


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes the model's input (see the module docstring for each field)."""

    resize: tuple[int, ...] | None = None
    crop: tuple[int, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str = "bilinear"
    source: str = "given"

    @classmethod
    def from_options(cls, *, input_size: Any = None, resize: Any = None, crop: Any = None, mean: Any = None,
                     std: Any = None, interpolation: str | None = None, base: Preprocessing | None = None,
                     source: str | None = None) -> Preprocessing:
        """Validate user options (strings such as ``"224"``, ``"0.5,0.5,0.5"`` or numbers) over ``base``."""
        size = _numbers(input_size, "input_size", int)
        new_resize, new_crop = _numbers(resize, "resize", int), _numbers(crop, "crop", int)
        if size is not None:
            if new_crop is not None and new_crop != size:
                raise ModelError(f"input_size {size} and crop {new_crop} disagree; give one of them")
            if new_resize is not None:
                new_crop = size
            elif base is not None and base.resize is not None and base.crop is not None:
                new_resize, new_crop = _scaled_resize(size, base.resize, base.crop), size
            elif base is not None and base.crop is not None:
                raise ModelError(f"the preprocessing ({base.source}) crops {base.crop} without resizing first, so "
                                 f"input_size {size} cannot be scaled from it; give --resize with --input-size")
            else:
                new_resize = size if len(size) == 2 else (size[0], size[0])  # whole image to S×S
        mean_v, std_v = _numbers(mean, "mean", float), _numbers(std, "std", float)
        if std_v is not None and any(s <= 0 for s in std_v):
            raise ModelError(f"std must be > 0, got {std}")
        interp = None if interpolation is None else str(interpolation).strip().lower().replace("_", "-")
        if interp is not None and interp not in INTERPOLATIONS:
            raise UnknownNameError(f"unknown interpolation {interpolation!r}; valid: {', '.join(INTERPOLATIONS)}")
        start = base if base is not None else cls()
        changes: dict[str, Any] = {k: v for k, v in (("resize", new_resize), ("crop", new_crop), ("mean", mean_v),
                                                     ("std", std_v), ("interpolation", interp)) if v is not None}
        if source is not None:
            changes["source"] = source
        elif base is not None and changes:
            changes["source"] = f"{base.source}, overridden: {', '.join(sorted(changes))}"
        out = replace(start, **changes)
        if (out.mean is None) != (out.std is None):
            raise ModelError("give both mean and std (the normalisation is (x - mean) / std), or neither")
        return out

    def transform(self) -> PreprocessTransform:
        """The callable (picklable, for DataLoader workers) that applies this preprocessing to a PIL image."""
        return PreprocessTransform(self)

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable fields, for the run manifest."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def _scaled_resize(size: tuple[int, ...], resize: tuple[int, ...], crop: tuple[int, ...]) -> tuple[int, ...]:
    """The resize that keeps a recipe's resize/crop ratio at a new crop ``size``: ``round(size * resize / crop)``
    per side (one number when the recipe resizes the shorter side), e.g. 256/224 at 64 px → resize 73, crop 64."""
    size2, crop2 = size * (3 - len(size)), crop * (3 - len(crop))
    if len(resize) == 1:
        return (round(min(size2) * resize[0] / min(crop2)),)
    return tuple(round(s * r / c) for s, r, c in zip(size2, resize, crop2, strict=True))


def preprocessing_of(transform: Any) -> Preprocessing | None:
    """A model's transform read back as a :class:`Preprocessing`, so that options can change its fields: a
    :class:`PreprocessTransform`, torchvision's ``ImageClassification`` (``Weights.transforms()``), or a
    ``Compose`` of ``Resize``/``CenterCrop``/to-tensor/``Normalize`` steps (timm's ``create_transform``). None
    when it cannot be read that way (no transform, or another kind of step)."""
    if isinstance(transform, PreprocessTransform):
        return transform.preprocessing
    if all(hasattr(transform, a) for a in ("resize_size", "crop_size", "mean", "std", "interpolation")):
        return Preprocessing(resize=tuple(transform.resize_size), crop=tuple(transform.crop_size),
                             mean=tuple(transform.mean), std=tuple(transform.std),
                             interpolation=transform.interpolation.value,
                             source=f"the model's {type(transform).__name__}")
    fields: dict[str, Any] = {}
    for step in getattr(transform, "transforms", None) or ():
        kind = type(step).__name__
        if kind in ("Resize", "CenterCrop"):
            size = step.size if isinstance(step.size, (list, tuple)) else (step.size,)
            fields["resize" if kind == "Resize" else "crop"] = tuple(int(s) for s in size)
            if kind == "Resize":
                fields["interpolation"] = getattr(step.interpolation, "value", "bilinear")
        elif kind == "Normalize":
            fields["mean"], fields["std"] = tuple(map(float, step.mean)), tuple(map(float, step.std))
        elif kind not in ("ToTensor", "MaybeToTensor", "ConvertImageDtype", "PILToTensor"):
            return None
    return Preprocessing(**fields, source=f"the model's {type(transform).__name__}") if fields else None


class PreprocessTransform:
    """``resize → center_crop → [0, 1] float → normalize`` on a PIL image (torchvision's ImageClassification)."""

    def __init__(self, preprocessing: Preprocessing) -> None:
        self.preprocessing = preprocessing

    def __call__(self, image: Any) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        p = self.preprocessing
        if p.resize is not None:
            mode = InterpolationMode(p.interpolation)
            image = F.resize(image, list(p.resize), interpolation=mode, antialias=True)
        if p.crop is not None:
            image = F.center_crop(image, list(p.crop))
        tensor = image if isinstance(image, torch.Tensor) else F.pil_to_tensor(image)
        tensor = F.convert_image_dtype(tensor, torch.float)
        if p.mean is not None and p.std is not None:
            tensor = F.normalize(tensor, mean=list(p.mean), std=list(p.std))
        return tensor

    def __repr__(self) -> str:
        p = self.preprocessing
        return (f"PreprocessTransform(resize={p.resize}, crop={p.crop}, mean={p.mean}, std={p.std}, "
                f"interpolation={p.interpolation})")


def borrow_preprocessing(spec: str) -> Preprocessing:
    """The preprocessing of a known model: ``torchvision:<name>`` (its weights' ``transforms()``) or
    ``timm:<name>`` (timm's ``resolve_data_config``). Nothing is built or downloaded for torchvision."""
    family, sep, name = str(spec).strip().partition(":")
    family = family.lower()
    if not sep or not name or family not in ("torchvision", "timm"):
        raise UnknownNameError(f"--preprocessing takes 'torchvision:<name>' or 'timm:<name>' (a model whose "
                               f"preprocessing to borrow), got {spec!r}")
    if family == "torchvision":
        import torchvision.models as tvm

        from gradtrust.models.torchvision_models import reference_enum, torchvision_names

        names = torchvision_names()[0]
        if name not in names:
            raise UnknownNameError(unknown_message("torchvision model", name, names, prefix="torchvision:"))
        enum = reference_enum(name, tvm.get_model_weights(name))
        t = enum.transforms()
        if not hasattr(t, "crop_size") or (found := preprocessing_of(t)) is None:
            raise ModelError(f"torchvision:{name} is not an image classifier with an ImageClassification "
                             f"transform ({type(t).__name__}); give --input-size/--mean/--std instead")
        return replace(found, source=f"borrowed from torchvision:{name} ({type(enum).__name__}.{enum.name})")
    from gradtrust.models.timm_models import import_timm

    timm = import_timm()
    if not timm.is_model(name):
        raise UnknownNameError(f"unknown timm model {name!r} for --preprocessing")
    cfg = timm.data.resolve_data_config({}, model=timm.create_model(name, pretrained=False), use_test_size=True)
    size = tuple(cfg["input_size"][1:])
    crop_pct = float(cfg.get("crop_pct", 1.0) or 1.0)
    resize = (int(math.floor(size[0] / crop_pct)),) if size[0] == size[1] else tuple(
        int(math.floor(s / crop_pct)) for s in size)
    return Preprocessing(resize=resize, crop=size, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                         interpolation=str(cfg.get("interpolation", "bilinear")),
                         source=f"borrowed from timm:{name} (resolve_data_config)")
