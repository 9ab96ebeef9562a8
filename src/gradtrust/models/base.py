"""`LoadedModel`: what `gradtrust.load_model` hands to the data layer, the scores engine and the runner."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradtrust.errors import ModelError

INPUT_KINDS = ("image", "video", "tensor")


@dataclass
class LoadedModel:
    """A classifier ready for scoring, with everything needed to feed it and to record it.

    Attributes:
        module: the network, in eval mode, on the requested device. Its parameters keep
            ``requires_grad`` as built (gradient-based trust scores need them).
        transform: turns one raw input into the model-ready tensor: a PIL image for
            ``input_kind == "image"`` (→ float ``(C, H, W)``), a uint8 ``(T, C, H, W)`` clip for
            ``"video"`` (→ float ``(C, T, H, W)``). ``None`` when inputs are already tensors.
        class_names: one name per output, ``["0", "1", …]`` when unknown; empty only when the
            number of outputs is unknown (a user model file whose head could not be found).
        num_classes: number of outputs (``None`` only when it could not be determined).
        spec: the model spec as given (``"torchvision:resnet18"``, a file path…).
        weights: the weights as given, resolved: a full enum name such as
            ``"ResNet18_Weights.IMAGENET1K_V1"``, an absolute file path, ``"bundled"``, or ``None``
            for random initialisation.
        weights_sha256: SHA-256 (hex) of the file the weights were read from (for a TorchScript or
            pickled model file: that file), ``None`` for random initialisation.
        clip_len: frames per clip the model expects (video models only).
        meta: JSON-serialisable extras for the run manifest (family, architecture, weights kind,
            weights enum/URL/file, where ``num_classes`` came from, library versions, …).
    """

    module: nn.Module
    transform: Callable[[Any], torch.Tensor] | None
    class_names: list[str]
    num_classes: int | None
    spec: str
    weights: str | None = None
    weights_sha256: str | None = None
    input_kind: str = "image"
    clip_len: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.input_kind not in INPUT_KINDS:
            raise ModelError(f"input_kind must be one of {INPUT_KINDS}, got {self.input_kind!r}")
        if self.num_classes is not None and len(self.class_names) != self.num_classes:
            raise ModelError(
                f"{len(self.class_names)} class names for a model with {self.num_classes} outputs"
            )

    @property
    def device(self) -> torch.device:
        """Device of the module's first parameter or buffer (CPU for a module with neither)."""
        for tensor in itertools.chain(self.module.parameters(), self.module.buffers()):
            return tensor.device
        return torch.device("cpu")

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable description of the model for a run manifest."""
        return {
            "spec": self.spec,
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "input_kind": self.input_kind,
            "clip_len": self.clip_len,
            "transform": None if self.transform is None else " ".join(repr(self.transform).split()),
            "module_class": type(self.module).__name__,
            "num_parameters": sum(p.numel() for p in self.module.parameters()),
            "device": str(self.device),
            "meta": _json_safe(self.meta),
        }


def _json_safe(value: Any) -> Any:
    """Convert tuples, paths, dtypes, devices… to plain JSON types (str as the last resort)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return [_json_safe(v) for v in items]
    return str(value)
