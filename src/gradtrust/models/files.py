"""Model files (TorchScript, pickled ``nn.Module``) and module objects, with optional state-dict weights."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradtrust.errors import ModelError
from gradtrust.models.base import LoadedModel
from gradtrust.models.specs import (
    _first_line,
    _is_existing_file,
)
from gradtrust.models.state_dict import (
    _align_keys,
    _is_torchscript_file,
    _load_state,
    file_sha256,
    read_state_dict,
)


def _load_model_file(spec: str, weights: Any, num_classes: int | None) -> LoadedModel:
    path = Path(spec).resolve()
    meta: dict[str, Any] = {"model_file": str(path)}
    if _is_torchscript_file(path):
        try:
            with warnings.catch_warnings():  # torch >= 2.9 flags TorchScript as deprecated; it still works
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ModelError(f"cannot load the TorchScript file {path}: {_first_line(exc)}") from exc
        meta["family"] = "torchscript"
    else:
        # SECURITY: weights_only=False unpickles arbitrary objects, which can execute code. Only done for
        # a file that the user named explicitly as the model (never for weights files).
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ModelError(
                f"cannot load {path} as a TorchScript or pickled model file: {_first_line(exc)}"
            ) from exc
        if isinstance(obj, Mapping):
            raise ModelError(
                f"{path} holds a state dict, not a model: pass the architecture as the spec (e.g. "
                f"'torchvision:resnet18', 'timm:<name>') and this file as the weights"
            )
        if not isinstance(obj, nn.Module):
            raise ModelError(f"{path} holds a {type(obj).__name__}, not an nn.Module")
        module = obj
        meta["family"] = "pickle"
        meta["security_note"] = "loaded with torch.load(weights_only=False): trusted file named by the user"
    loaded = _wrap_module(module, weights, num_classes, meta)
    loaded.spec = spec
    if loaded.weights_sha256 is None:  # the weights live in the model file itself
        loaded.weights_sha256 = file_sha256(path)
        loaded.meta.update(weights_kind="model file", pretrained=True)
    return loaded


def _load_module_object(module: nn.Module, weights: Any, num_classes: int | None) -> LoadedModel:
    meta = {"family": "module", "module_class": f"{type(module).__module__}.{type(module).__qualname__}"}
    loaded = _wrap_module(module, weights, num_classes, meta)
    loaded.spec = f"module:{type(module).__qualname__}"
    if loaded.weights is None:
        loaded.meta.update(weights_kind="as given", pretrained=None)
    return loaded


def _wrap_module(module: nn.Module, weights: Any, num_classes: int | None, meta: dict[str, Any]) -> LoadedModel:
    sha = None
    weights_str = None
    if weights is not None:
        if not _is_existing_file(weights):
            raise ModelError(
                f"weights for a model file or module must be a local state dict file, got {weights!r}"
                + (" (file not found)" if isinstance(weights, str) else "")
            )
        path = Path(weights).resolve()
        state, info = read_state_dict(path)
        state, align = _align_keys(state, set(module.state_dict()))
        meta.update(info, **align)
        weights_str = str(path)
        sha = file_sha256(path)
        _load_state(module, state, meta.get("model_file", meta.get("module_class", "the model")), weights_str)
        meta.update(weights_kind="file", pretrained=True, weights_file=weights_str)
    inferred = _last_linear_outputs(module)
    if num_classes is not None:
        classes: int | None = num_classes
        meta["num_classes_source"] = "argument"
        if inferred is not None and inferred != num_classes:
            meta["num_classes_inferred"] = inferred
    else:
        classes = inferred
        meta["num_classes_source"] = "last linear layer" if inferred is not None else "unknown"
    meta["class_names_source"] = "indices"
    meta["preprocessing"] = "none: inputs must already be model-ready tensors"
    return LoadedModel(
        module=module,
        transform=None,
        class_names=[str(i) for i in range(classes)] if classes is not None else [],
        num_classes=classes,
        spec="",
        weights=weights_str,
        weights_sha256=sha,
        input_kind="tensor",
        meta=meta,
    )


def _last_linear_outputs(module: nn.Module) -> int | None:
    """Outputs of the last 2-D ``*weight`` parameter (the final linear layer of most classifiers)."""
    found = None
    for key, param in module.named_parameters():
        if key.endswith("weight") and param.dim() == 2:
            found = int(param.shape[0])
    return found
