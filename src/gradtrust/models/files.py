"""Model files (TorchScript, pickled ``nn.Module``) and module objects, with optional state-dict weights."""

from __future__ import annotations

import pickle
import re
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradtrust.errors import ModelError
from gradtrust.models.base import LoadedModel
from gradtrust.models.specs import first_line, is_existing_file
from gradtrust.models.state_dict import file_sha256, is_torchscript_file, load_state, read_weights_file

TRUST_HINT = ("If you trust the file, opt in with --trust-model-file (load_model(..., trust_model_file=True)); "
              "safer: save TorchScript (torch.jit.script/trace(model).save(path)) or the state dict "
              "(torch.save(model.state_dict(), path)) and pass the architecture as the model "
              "('torchvision:<name>', 'timm:<name>' or your own 'package.module:factory') with --weights path.")


def load_model_file(spec: str, weights: Any, num_classes: int | None, trust_model_file: bool = False) -> LoadedModel:
    """A TorchScript file, a state dict named as the model (refused, with a hint), or, only with
    ``trust_model_file=True``, a whole pickled ``nn.Module``.

    SECURITY: unpickling a whole module (``torch.load(weights_only=False)``) runs whatever code the file
    names (a ``__reduce__`` can call ``os.system``), so it is never done by default: the file is first read
    with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers.
    """
    path = Path(spec).resolve()
    meta: dict[str, Any] = {"model_file": str(path)}
    if is_torchscript_file(path):
        try:
            with warnings.catch_warnings():  # torch >= 2.9 flags TorchScript as deprecated; it still works
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ModelError(f"cannot load the TorchScript file {path}: {first_line(exc)}") from exc
        meta["family"] = "torchscript"
        unscripted = unscript_sequential(module)
        if unscripted is not None:
            module = unscripted
            meta["torchscript_sequential"] = ("the scripted nn.Sequential runs its scripted children from Python, "
                                              "with its final Linear as a real nn.Linear (same parameters), so the "
                                              "closed-form gradient scores apply")
    else:
        obj = _read_model_object(path, trust_model_file)
        if isinstance(obj, Mapping):
            raise ModelError(
                f"{path} holds a state dict, not a model: pass the architecture as the spec (e.g. "
                f"'torchvision:resnet18', 'timm:<name>' or your own 'package.module:factory') and this file as "
                "the weights"
            )
        if not isinstance(obj, nn.Module):
            raise ModelError(f"{path} holds a {type(obj).__name__}, not an nn.Module")
        module = obj
        meta["family"] = "pickle"
        meta["security_note"] = ("loaded with torch.load(weights_only=False) because trust_model_file=True "
                                 "(--trust-model-file) was given")
    loaded = wrap_module(module, weights, num_classes, meta, spec)
    if loaded.weights_sha256 is None:  # the weights live in the model file itself
        loaded.weights_sha256 = file_sha256(path)
        loaded.meta.update(weights_kind="model file", pretrained=True)
    return loaded


def unscript_sequential(module: nn.Module) -> nn.Sequential | None:
    """A scripted ``nn.Sequential`` as a Python ``nn.Sequential`` of its scripted children, or ``None``.

    Why: the gradient scores read the penultimate features with a Python forward hook on the final
    ``nn.Linear``. A TorchScript module's compiled ``forward`` calls its submodules inside the TorchScript
    interpreter, which never runs Python hooks, and its submodules are ``RecursiveScriptModule`` objects,
    not ``nn.Linear``. A scripted ``Sequential`` only chains its children, so running them from Python
    gives the same outputs, and a child that is a scripted ``torch.nn.Linear`` (its code is one
    ``linear`` call) is replaced by an ``nn.Linear`` sharing its parameters. Any other ScriptModule keeps
    its compiled forward (the closed forms are then skipped, with that reason).
    """
    if not isinstance(module, torch.jit.RecursiveScriptModule) or module.original_name != "Sequential":
        return None
    children: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        weight = getattr(child, "weight", None)
        code = getattr(child, "code", "")
        if (getattr(child, "original_name", "") == "Linear" and isinstance(weight, torch.Tensor) and weight.dim() == 2
                and "linear(" in code):
            bias = getattr(child, "bias", None)
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
            linear.weight = nn.Parameter(weight.detach(), requires_grad=weight.requires_grad)
            if bias is not None:
                linear.bias = nn.Parameter(bias.detach(), requires_grad=bias.requires_grad)
            children.append((name, linear))
        else:
            children.append((name, child))
    return nn.Sequential(OrderedDict(children))


def _read_model_object(path: Path, trust_model_file: bool) -> Any:
    """``torch.load(weights_only=True)``; a whole pickled module only with ``trust_model_file``."""
    if not trust_model_file:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            what = f" (it names the Python object {found.group(1)})" if found else ""
            raise ModelError(
                f"{path} is not a TorchScript file or a state dict: it looks like a whole pickled model{what}. "
                "Unpickling it can run arbitrary code hidden in the file, so GradTrust does not do it by default. "
                + TRUST_HINT
            ) from exc
        except Exception as exc:
            raise ModelError(f"cannot load {path} as a TorchScript file or a state dict: {first_line(exc)}. "
                             + TRUST_HINT) from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelError(f"cannot load {path} as a TorchScript or pickled model file: {first_line(exc)}") from exc


def load_module_object(module: nn.Module, weights: Any, num_classes: int | None) -> LoadedModel:
    """An ``nn.Module`` given to the Python API, used as is (with ``weights`` loaded into it when given)."""
    meta = {"family": "module", "module_class": f"{type(module).__module__}.{type(module).__qualname__}"}
    return wrap_module(module, weights, num_classes, meta, f"module:{type(module).__qualname__}", "as given")


def wrap_module(module: nn.Module, weights: Any, num_classes: int | None, meta: dict[str, Any], spec: str,
                unweighted_kind: str | None = None) -> LoadedModel:
    """A `LoadedModel` ``spec`` around a built ``module``: ``weights`` (a file) loaded into it, its number of
    classes from the last ``nn.Linear`` unless ``num_classes`` is given, ``meta`` completed (without
    ``weights``, ``weights_kind=unweighted_kind`` and ``pretrained=None`` when that is given)."""
    sha = weights_str = None
    if weights is not None:
        if not is_existing_file(weights):
            raise ModelError(
                f"weights for a model file or module must be a local state dict file, got {weights!r}"
                + (" (file not found)" if isinstance(weights, str) else "")
            )
        what = meta.get("model_file", meta.get("module_class", "the model"))
        state, weights_str, sha = read_weights_file(weights, meta, set(module.state_dict()))
        load_state(module, state, what, weights_str)
    inferred = _last_linear_outputs(module)
    if num_classes is not None:
        classes: int | None = num_classes
        meta["num_classes_source"] = "argument"
        if inferred is not None and inferred != num_classes:
            meta["num_classes_inferred"] = inferred
    else:
        classes = inferred
        meta["num_classes_source"] = "last linear layer" if inferred is not None else "unknown"
    meta.update(class_names_source="indices", preprocessing="none: inputs must already be model-ready tensors")
    if weights is None and unweighted_kind is not None:
        meta.update(weights_kind=unweighted_kind, pretrained=None)
    return LoadedModel(
        module=module,
        transform=None,
        class_names=[str(i) for i in range(classes)] if classes is not None else [],
        num_classes=classes,
        spec=spec,
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
