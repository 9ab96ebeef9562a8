"""`load_model`: turn a model spec (+ weights) into a `LoadedModel`. Never downloads anything.

This module only dispatches on the spec; each source lives in its own module: `specs` (spec names,
`available_models`, argument checks), `torchvision_models`, `timm_models`, `digits_loader`, `files`
(TorchScript / pickled model files, module objects) and `state_dict` (reading weights files, prefixes,
number of classes, shape-mismatch errors).

Specs
    ``torchvision:<name>``  every torchvision classification model and every video model
                            (``torchvision.models.list_models(module=torchvision.models)`` and
                            ``(module=torchvision.models.video)``).
    ``timm:<name>``         ``timm.create_model(name, pretrained=False, num_classes=…)`` (optional
                            dependency: ``pip install 'gradtrust[timm]'``); weights from local files only.
    ``digits:<name>``       the bundled digits networks (:mod:`gradtrust.models.digits`).
    ``<path>``              a TorchScript file (``torch.jit.load``) or a whole pickled model
                            (``torch.save(model, path)``, read with ``torch.load(weights_only=False)``).
    an ``nn.Module``        used as is (Python API only).

Weights
    ``None``                random initialisation (recorded in ``meta``: scores of an untrained network).
    ``"DEFAULT"`` / enum    torchvision only: ``"IMAGENET1K_V1"`` or ``"ResNet18_Weights.IMAGENET1K_V1"``.
                            The file must already be in the torch hub cache
                            (``torch.hub.get_dir()/checkpoints/<file name of the enum's URL>``), where
                            torchvision itself would have put it; otherwise a `ModelError` says where to
                            put it and where to download it from. For ``digits:`` ``"DEFAULT"`` (or
                            ``"bundled"``) means the weights shipped in the package.
    a file                  ``.pth``/``.pt``/``.bin``/``.ckpt`` state dict (``torch.load(weights_only=True)``;
                            ``{"state_dict": …}``/``{"model": …}`` wrappers and ``module.``/``_orig_mod.``
                            prefixes are accepted) or a ``.safetensors`` file. A fine-tuned head with its
                            own number of classes is inferred from the file when ``num_classes`` is not
                            given.

Security: a state dict is read with ``weights_only=True`` and a ``.safetensors`` file cannot run code, so
weights files are safe to load. A *pickled model file* given as the spec is read with
``torch.load(weights_only=False)``, which can execute arbitrary code hidden in the file: GradTrust does that
only for a file the user explicitly names as the model; only pass files you trust (prefer TorchScript or a
state dict plus an architecture spec).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from gradtrust.errors import ModelError, UnknownNameError
from gradtrust.models.base import LoadedModel
from gradtrust.models.digits_loader import _load_digits
from gradtrust.models.files import _load_model_file, _load_module_object
from gradtrust.models.specs import (
    MODEL_FILE_SUFFIXES,
    SPEC_FAMILIES,
    _check_num_classes,
    _first_line,
    _looks_like_path,
    _normalise_weights_arg,
    _spec_message,
    available_models,
)
from gradtrust.models.state_dict import file_sha256, read_state_dict
from gradtrust.models.timm_models import _load_timm
from gradtrust.models.torchvision_models import _load_torchvision, hub_checkpoint_path
from gradtrust.models.torchvision_models import _reference_enum as _reference_enum  # re-exported (tests)

__all__ = [
    "SPEC_FAMILIES",
    "available_models",
    "file_sha256",
    "hub_checkpoint_path",
    "load_model",
    "read_state_dict",
]

def load_model(
    spec: str | os.PathLike[str] | nn.Module,
    weights: str | os.PathLike[str] | Any | None = None,
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Build a classifier from ``spec`` and ``weights`` (see the module docstring); never downloads.

    Args:
        spec: ``"torchvision:<name>"``, ``"timm:<name>"``, ``"digits:<name>"``, a TorchScript or pickled
            model file, or an ``nn.Module``.
        weights: ``None`` (random initialisation), ``"DEFAULT"`` or a torchvision weights enum name
            (looked up in the torch hub cache only), or a local ``.pth``/``.pt``/``.safetensors`` file.
        num_classes: number of outputs of a fine-tuned head; inferred from a weights file when omitted.
        device: where to put the module.

    Returns:
        a `LoadedModel` with the module in eval mode on ``device``.

    Raises:
        UnknownNameError: unknown model family, model name or weights enum name (with close matches).
        ModelError: weights missing from the hub cache (with the path and URL), unreadable file, weights
            that do not fit the architecture (first mismatching keys and shapes), bad device…
    """
    num_classes = _check_num_classes(num_classes)
    weights = _normalise_weights_arg(weights)

    if isinstance(spec, nn.Module):
        loaded = _load_module_object(spec, weights, num_classes)
    else:
        if isinstance(spec, os.PathLike):
            spec = os.fspath(spec)
        if not isinstance(spec, str) or not spec.strip():
            raise ModelError(f"a model spec must be a non-empty string, a path or an nn.Module, got {spec!r}")
        spec = spec.strip()
        family, sep, name = spec.partition(":")
        if os.path.isfile(spec):
            loaded = _load_model_file(spec, weights, num_classes)
        elif sep and family.lower() in SPEC_FAMILIES:
            name = name.strip()
            if not name:
                raise ModelError(f"model spec {spec!r} names no model: use '{family.lower()}:<name>'")
            loader = {"torchvision": _load_torchvision, "timm": _load_timm, "digits": _load_digits}
            loaded = loader[family.lower()](name, weights, num_classes)
            loaded.spec = spec
        elif _looks_like_path(spec, MODEL_FILE_SUFFIXES):
            raise ModelError(f"model file not found: {spec}")
        else:
            raise UnknownNameError(_spec_message(spec))

    _finish(loaded, device)
    return loaded


def _finish(loaded: LoadedModel, device: str | torch.device) -> None:
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ModelError(f"invalid device {device!r}: {_first_line(exc)}") from exc
    try:
        loaded.module.to(target)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise ModelError(f"cannot move the model to {target}: {_first_line(exc)}") from exc
    loaded.module.eval()
    loaded.meta.setdefault("torch_version", torch.__version__)
    loaded.meta["device"] = str(target)
