"""State dicts: reading weights files safely, unwrapping checkpoints, stripping wrapper prefixes,
inferring the number of classes from a fine-tuned head, and shape-mismatch errors that list the offending keys."""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradtrust.errors import ModelError
from gradtrust.models.specs import (
    MAX_LISTED,
    PathLike,
    first_line,
    short_list,
)

# Keys under which training scripts commonly nest the state dict, in order of preference.
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights")
# Prefixes added by wrappers: DataParallel/DistributedDataParallel, torch.compile. Always stripped.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Prefixes added by training frameworks (Lightning's ``self.model``…). Stripped when the model lacks them.
_OPTIONAL_PREFIXES = ("model.", "net.", "network.")


def file_sha256(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file, read in chunks (never the whole file in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a state dict from a ``.safetensors`` file or a ``torch.save`` file (``weights_only=True``).

    Unwraps ``{"state_dict": …}``, ``{"model": …}``… checkpoints and drops non-tensor entries. Returns the
    tensors (on CPU) and a dict of what was done (``state_dict_key``, ``dropped_entries``). Prefixes are
    stripped later, against the model's own keys.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"cannot read the safetensors file {path}: {exc}") from exc
    else:
        _check_torch_file(path)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            if found is None:  # not an object the safe unpickler refused: a corrupt or foreign file
                raise ModelError(
                    f"cannot read the weights file {path}: not a PyTorch state dict or a corrupt file "
                    f"({first_line(exc)})"
                ) from exc
            raise ModelError(
                f"{path} holds Python objects other than tensors (a {found.group(1)}), so it cannot be read "
                "safely as a state dict (torch.load(weights_only=True) refused it). If it is a whole pickled "
                "model you trust, pass it as the model instead of as the weights, with the opt-in: --model FILE "
                "--trust-model-file (load_model(FILE, trust_model_file=True); unpickling can run code hidden in "
                "the file); better, save model.state_dict() or a TorchScript file"
            ) from exc
        except Exception as exc:  # corrupt file, TorchScript archive, not a torch file at all…
            hint = ""
            if is_torchscript_file(path):
                hint = " It is a TorchScript file: pass it as the model spec, not as weights."
            raise ModelError(f"cannot read the weights file {path}: not a PyTorch state dict or a corrupt file "
                             f"({first_line(exc)}).{hint}") from exc
    return _unwrap_state_dict(obj, path)


def read_weights_file(weights: PathLike, meta: dict[str, Any],
                      model_keys: set[str] | None = None) -> tuple[dict[str, torch.Tensor], str, str]:
    """`read_state_dict` of a local weights file, its prefixes aligned to ``model_keys`` when given (`align_keys`),
    recorded in ``meta`` (``weights_kind="file"``); returns the state, the resolved path and its SHA-256."""
    path = Path(weights).resolve()
    state, info = read_state_dict(path)
    align: dict[str, Any] = {}
    if model_keys is not None:
        state, align = align_keys(state, model_keys)
    meta.update(info, **align, weights_kind="file", pretrained=True, weights_file=str(path))
    return state, str(path), file_sha256(path)


def _check_torch_file(path: Path) -> None:
    """A ``torch.save`` file is a zip archive (``PK``) or, in the legacy format, a pickle (protocol byte 0x80).
    Anything else is not a weights file, whatever ``torch.load`` would make of it ("pop from empty list"…)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise ModelError(f"cannot read the weights file {path}: {exc.strerror or exc}") from exc
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):
        raise ModelError(
            f"cannot read the weights file {path}: not a PyTorch weights file. torch.save writes a zip archive "
            "(or, in the old format, a pickle), and this file is neither. Give a state dict saved with "
            "torch.save(model.state_dict(), path) or a .safetensors file"
        )


def is_torchscript_file(path: PathLike) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip file holding ``constants.pkl``/``code/``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _unwrap_state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    info: dict[str, Any] = {}
    keys_used = []
    while isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _CONTAINER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                keys_used.append(key)
                break
        else:
            break
    if not isinstance(obj, Mapping):
        raise ModelError(f"{path} does not hold a state dict (found a {type(obj).__name__})")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelError(
            f"{path} holds no tensors at the top level or under {', '.join(repr(k) for k in _CONTAINER_KEYS)}; "
            f"its keys are: {short_list(list(obj))}"
        )
    if keys_used:
        info["state_dict_key"] = ".".join(keys_used)
    if len(tensors) != len(obj):
        info["dropped_entries"] = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
    return tensors, info


def align_keys(state: dict[str, torch.Tensor], model_keys: set[str] | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Strip ``module.``/``_orig_mod.`` (always) and ``model.``/``net.`` (when the model lacks them)."""
    stripped: list[str] = []
    changed = True
    while changed and state:
        changed = False
        for prefix in _WRAPPER_PREFIXES + (_OPTIONAL_PREFIXES if model_keys is not None else ()):
            if not all(k.startswith(prefix) for k in state):
                continue
            if prefix in _OPTIONAL_PREFIXES and model_keys is not None and any(k.startswith(prefix) for k in model_keys):
                continue
            state = {k[len(prefix):]: v for k, v in state.items()}
            stripped.append(prefix)
            changed = True
    return state, ({"stripped_prefixes": stripped} if stripped else {})


def build_on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a model without allocating its weights (meta device) when the constructor allows it."""
    try:
        with torch.device("meta"):
            return build()
    except Exception:  # constructors that read tensor values (regnet…) need real memory
        return build()


def _shape_mismatches(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> list[tuple[str, tuple, tuple]]:
    return [
        (k, tuple(v.shape), tuple(own[k].shape))
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]


def fit_num_classes(
    build: Callable[[int], nn.Module],
    state: dict[str, torch.Tensor],
    requested: int | None,
    default: int,
    what: str,
) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]]:
    """Choose the number of classes that makes ``state`` fit the architecture, or raise `ModelError`.

    With ``requested`` it must fit as is; without, the default head size is tried and, if only the head's
    shapes differ (their first dimension), the number of classes is read from the file.
    """
    classes = requested if requested is not None else default
    probe = build_on_meta(lambda: build(classes))
    own = probe.state_dict()
    state, align = align_keys(state, set(own))
    mismatches = _shape_mismatches(own, state)
    source = "argument" if requested is not None else "default"
    if mismatches and requested is None:
        inferred = _head_classes(mismatches, default)
        if inferred is not None:
            probe = build_on_meta(lambda: build(inferred))
            if not _shape_mismatches(probe.state_dict(), state):
                classes, mismatches, source = inferred, [], "inferred from weights"
    if mismatches:
        listed = "; ".join(
            f"{k}: file {list(f)} vs model {list(m)}" for k, f, m in mismatches[:MAX_LISTED]
        )
        more = f" (and {len(mismatches) - MAX_LISTED} more)" if len(mismatches) > MAX_LISTED else ""
        head = _head_classes(mismatches, classes)
        hint = (
            f" If the model was fine-tuned with {head} classes, pass --num-classes {head} (num_classes={head})."
            if head is not None
            else " Check that the weights are for this architecture; if the model was fine-tuned with another "
            "number of classes, pass --num-classes (num_classes=…)."
        )
        raise ModelError(
            f"the weights do not fit {what} with num_classes={classes}: {len(mismatches)} tensors have the "
            f"wrong shape: {listed}{more}.{hint}"
        )
    align["num_classes_source"] = source
    return classes, state, align


def _head_classes(mismatches: list[tuple[str, tuple, tuple]], model_classes: int) -> int | None:
    """The file's class count if every mismatch is a head tensor (first dim = classes, rest equal)."""
    found = set()
    for _, file_shape, model_shape in mismatches:
        if (
            len(file_shape) != len(model_shape)
            or not model_shape
            or model_shape[0] != model_classes
            or file_shape[1:] != model_shape[1:]
        ):
            return None
        found.add(file_shape[0])
    return found.pop() if len(found) == 1 else None


def load_state(module: nn.Module, state: dict[str, torch.Tensor], what: str, source: str | None) -> None:
    """``load_state_dict`` with errors that list the first offending keys."""
    own = module.state_dict()
    mismatches = _shape_mismatches(own, state)
    if mismatches:
        listed = "; ".join(f"{k}: file {list(f)} vs model {list(m)}" for k, f, m in mismatches[:MAX_LISTED])
        raise ModelError(
            f"the weights {source} do not fit {what}: {len(mismatches)} tensors have the wrong shape: {listed}. "
            "If the model was fine-tuned with another number of classes, pass --num-classes (num_classes=…)."
        )
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ModelError(f"cannot load the weights {source} into {what}: {first_line(exc)}") from exc
    parts = [f"{len(keys)} {kind} keys ({short_list(keys)})" for kind, keys in
             (("missing", result.missing_keys), ("unexpected", result.unexpected_keys)) if keys]
    if parts:
        raise ModelError(
            f"the weights {source} do not match {what}: {' and '.join(parts)}. Are they for this "
            f"architecture? The model's keys start with {short_list(list(own), 3)}; the file's with "
            f"{short_list(list(state), 3)}."
        )
