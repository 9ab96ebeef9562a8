"""`load_model`: turn a model spec (+ weights) into a `LoadedModel`. Never downloads anything.

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

import difflib
import hashlib
import operator
import os
import pickle
import re
import urllib.parse
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from gradtrust.errors import ModelError, UnknownNameError
from gradtrust.models.base import LoadedModel

__all__ = [
    "SPEC_FAMILIES",
    "available_models",
    "file_sha256",
    "hub_checkpoint_path",
    "load_model",
    "read_state_dict",
]

SPEC_FAMILIES = ("torchvision", "timm", "digits")
WEIGHTS_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".tar", ".pkl")
MODEL_FILE_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".pkl", ".torchscript")

# Keys under which training scripts commonly nest the state dict, in order of preference.
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights")
# Prefixes added by wrappers: DataParallel/DistributedDataParallel, torch.compile. Always stripped.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Prefixes added by training frameworks (Lightning's ``self.model``…). Stripped when the model lacks them.
_OPTIONAL_PREFIXES = ("model.", "net.", "network.")
_MAX_LISTED = 8

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------------------------------
# public helpers
# --------------------------------------------------------------------------------------------------


def file_sha256(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file, read in chunks (never the whole file in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def hub_checkpoint_path(weights_enum: Any) -> Path:
    """Where torchvision caches the file of a weights enum: ``torch.hub.get_dir()/checkpoints/<name>``."""
    filename = os.path.basename(urllib.parse.urlparse(weights_enum.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def available_models(family: str | None = None) -> list[str]:
    """Valid specs (``"torchvision:resnet18"``, …) of one family or of all installed ones.

    ``timm`` is listed only when asked for explicitly (over a thousand names) and installed.
    """
    if family is None:
        return available_models("torchvision") + available_models("digits")
    family = family.lower()
    if family == "torchvision":
        return [f"torchvision:{n}" for n in _torchvision_names()[0]]
    if family == "timm":
        timm = _import_timm()
        return [f"timm:{n}" for n in timm.list_models()]
    if family == "digits":
        try:
            digits = _import_digits()
        except ModelError:
            return []
        return [f"digits:{n}" for n in digits.available_digits_models()]
    raise UnknownNameError(_unknown_message("model family", family, list(SPEC_FAMILIES)))


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
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            if found is None:  # not an object the safe unpickler refused: a corrupt or foreign file
                raise ModelError(
                    f"cannot read the weights file {path}: not a PyTorch state dict or a corrupt file "
                    f"({_first_line(exc)})"
                ) from exc
            raise ModelError(
                f"{path} holds Python objects other than tensors (a {found.group(1)}), so it cannot be read "
                "safely as a state dict (torch.load(weights_only=True) refused it). If it is a whole pickled "
                "model, pass it as the model spec instead of as the weights (that reads it with "
                "weights_only=False, which can run code hidden in the file: only do it for files you trust); "
                "better, save model.state_dict() or a TorchScript file"
            ) from exc
        except Exception as exc:  # corrupt file, TorchScript archive, not a torch file at all…
            hint = ""
            if _is_torchscript_file(path):
                hint = " It is a TorchScript file: pass it as the model spec, not as weights."
            raise ModelError(f"cannot read the weights file {path}: {_first_line(exc)}.{hint}") from exc
    return _unwrap_state_dict(obj, path)


# --------------------------------------------------------------------------------------------------
# load_model
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# torchvision
# --------------------------------------------------------------------------------------------------


def _torchvision_names() -> tuple[list[str], set[str]]:
    """All classification + video model names, and the set of video ones."""
    import torchvision.models as tvm

    images = tvm.list_models(module=tvm)
    videos = tvm.list_models(module=tvm.video)
    return sorted(set(images) | set(videos)), set(videos)


def _load_torchvision(name: str, weights: Any, num_classes: int | None) -> LoadedModel:
    import torchvision
    import torchvision.models as tvm
    from torchvision.models import WeightsEnum

    valid, video_names = _torchvision_names()
    if name not in valid:
        lowered = {n.lower(): n for n in valid}
        if name.lower() in lowered:
            name = lowered[name.lower()]
        else:
            raise UnknownNameError(_unknown_message("torchvision model", name, valid, prefix="torchvision:"))
    is_video = name in video_names
    try:
        enum_cls = tvm.get_model_weights(name)
    except (ValueError, KeyError):  # a model without any weights enum
        enum_cls = None

    meta: dict[str, Any] = {
        "family": "torchvision",
        "architecture": name,
        "torchvision_version": torchvision.__version__,
    }
    sha = None
    weights_str: str | None = None
    state: dict[str, torch.Tensor] | None = None

    if weights is None:
        enum = None
        ref = _reference_enum(name, enum_cls)
        meta.update(_random_meta())
    elif isinstance(weights, WeightsEnum) or not _is_existing_file(weights):
        if isinstance(weights, str) and _looks_like_path(weights, WEIGHTS_SUFFIXES):
            raise ModelError(f"weights file not found: {weights}")
        if enum_cls is None:
            raise ModelError(f"torchvision:{name} has no weights enum; pass a local weights file instead")
        enum = _resolve_enum(name, enum_cls, weights)
        ref = enum
        categories = len(enum.meta["categories"])
        if num_classes not in (None, categories):
            raise ModelError(
                f"the weights {_enum_full_name(enum)} have {categories} classes, not num_classes={num_classes}; "
                "drop --num-classes, or pass the state dict of your fine-tuned model as the weights file"
            )
        path = hub_checkpoint_path(enum)
        if not path.is_file():
            raise ModelError(_missing_checkpoint_message(name, enum, path))
        state, info = read_state_dict(path)
        meta.update(info)
        sha = file_sha256(path)
        weights_str = _enum_full_name(enum)
        meta.update(weights_kind="torchvision enum", pretrained=True, weights_enum=weights_str,
                    weights_url=enum.url, weights_file=str(path))
        meta.update(_check_official_hash(enum, path, sha))
    else:
        path = Path(weights).resolve()
        state, info = read_state_dict(path)
        meta.update(info)
        sha = file_sha256(path)
        weights_str = str(path)
        enum = _enum_for_filename(enum_cls, path.name)  # a copy of an official checkpoint
        ref = enum if enum is not None else _reference_enum(name, enum_cls)
        meta.update(weights_kind="file", pretrained=True, weights_file=weights_str)
        if enum is not None:
            meta.update(weights_enum=_enum_full_name(enum), weights_url=enum.url)
            meta.update(_check_official_hash(enum, path, sha))

    ref_classes = len(ref.meta["categories"]) if ref is not None else 1000

    official = enum is not None
    if state is not None and name.startswith("densenet"):
        state = _fix_densenet_keys(state)
    # GoogLeNet / Inception v3: build the auxiliary heads only when the file holds them (official files do).
    aux_prefixes = ("aux1.", "aux2.", "AuxLogits.")
    aux = state is not None and any(k.startswith(aux_prefixes) for k in _align_keys(state, None)[0])

    def build(c: int) -> nn.Module:
        return _build_torchvision(name, c, ref, official=official, aux=aux, random_init=state is None)

    if state is None:
        classes = num_classes if num_classes is not None else ref_classes
        meta["num_classes_source"] = "argument" if num_classes is not None else "default"
        module = build(classes)
    else:
        classes, state, align = _fit_num_classes(build, state, num_classes, ref_classes, f"torchvision:{name}")
        meta.update(align)
        module = build(classes)
        _load_state(module, state, f"torchvision:{name}", weights_str)
        _drop_aux_heads(name, module)
    if name in ("googlenet", "inception_v3"):
        meta["transform_input"] = bool(getattr(module, "transform_input", False))

    if ref is not None and len(ref.meta["categories"]) == classes:
        class_names = [str(c) for c in ref.meta["categories"]]
        meta["class_names_source"] = f"categories of {_enum_full_name(ref)}"
    else:
        class_names = [str(i) for i in range(classes)]
        meta["class_names_source"] = "indices"
    transform = ref.transforms() if ref is not None else None
    if ref is not None:
        meta["preprocessing"] = f"transforms of {_enum_full_name(ref)}"

    clip_len = _clip_len(ref) if is_video else None
    return LoadedModel(
        module=module,
        transform=transform,
        class_names=class_names,
        num_classes=classes,
        spec=f"torchvision:{name}",
        weights=weights_str,
        weights_sha256=sha,
        input_kind="video" if is_video else "image",
        clip_len=clip_len,
        meta=meta,
    )


def _build_torchvision(name: str, num_classes: int, ref: Any, *, official: bool, aux: bool,
                       random_init: bool) -> nn.Module:
    import torchvision.models as tvm

    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if ref is not None:
        kwargs.update(_geometry_kwargs(name, ref))
    if name in ("googlenet", "inception_v3"):
        # Mirrors the torchvision builders: official checkpoints expect transform_input=True and hold the
        # auxiliary heads (dropped after loading); init_weights=True keeps the documented initialisation.
        kwargs.update(aux_logits=aux, init_weights=random_init, transform_input=official)
    return tvm.get_model(name, weights=None, **kwargs)


def _geometry_kwargs(name: str, enum: Any) -> dict[str, Any]:
    """Builder arguments that torchvision derives from a weights enum: the input size of ViT and MaxViT.

    (The MViT builders fix their size themselves, and every other architecture accepts any size.)
    """
    size = enum.meta.get("min_size")
    if name.startswith("vit_"):
        return {"image_size": size[0]}
    if name.startswith("maxvit"):
        return {"input_size": tuple(size)}
    return {}


_DEFAULT_GEOMETRY = {"image_size": 224, "input_size": (224, 224)}


def _reference_enum(name: str, enum_cls: Any) -> Any:
    """The weights enum whose preprocessing and categories go with a randomly initialised / local model.

    The default enum, unless it needs a non-default geometry (e.g. ``vit_h_14``'s DEFAULT is at 518 px):
    then the first enum at the builder's default geometry, so the transforms fit the built network.
    """
    if enum_cls is None:
        return None
    default = enum_cls["DEFAULT"]
    for candidate in [default, *enum_cls]:
        geometry = _geometry_kwargs(name, candidate)
        if all(_DEFAULT_GEOMETRY[k] == v for k, v in geometry.items()):
            return candidate
    return default


def _resolve_enum(name: str, enum_cls: Any, weights: Any) -> Any:
    from torchvision.models import WeightsEnum

    if isinstance(weights, WeightsEnum):
        if not isinstance(weights, enum_cls):
            raise ModelError(f"{_enum_full_name(weights)} are not weights of torchvision:{name}; use {enum_cls.__name__}")
        return _classification_enum(name, weights)
    text = str(weights).strip()
    cls_name, dot, member = text.rpartition(".")
    if dot:
        if cls_name.lower() != enum_cls.__name__.lower():
            raise ModelError(
                f"{text!r} are not weights of torchvision:{name}: its weights enum is {enum_cls.__name__} "
                f"({', '.join(_enum_names(enum_cls))})"
            )
    else:
        member = text
    members = {m.lower(): m for m in ["DEFAULT", *(e.name for e in enum_cls)]}
    if member.lower() not in members:
        raise UnknownNameError(
            f"unknown weights {text!r} for torchvision:{name}; valid: {', '.join(_enum_names(enum_cls))}, "
            "or a local .pth/.safetensors file"
            + _did_you_mean(member, _enum_names(enum_cls))
        )
    return _classification_enum(name, enum_cls[members[member.lower()]])


def _classification_enum(name: str, enum: Any) -> Any:
    if not enum.meta.get("categories"):  # e.g. VGG16_Weights.IMAGENET1K_FEATURES
        raise ModelError(
            f"{_enum_full_name(enum)} cannot be used for classification (torchvision ships them for feature "
            f"extraction only: their classifier is missing); use another weights enum of torchvision:{name}"
        )
    return enum


def _enum_names(enum_cls: Any) -> list[str]:
    return ["DEFAULT", *(e.name for e in enum_cls)]


def _enum_full_name(enum: Any) -> str:
    return f"{type(enum).__name__}.{enum.name}"


def _enum_for_filename(enum_cls: Any, filename: str) -> Any:
    if enum_cls is None:
        return None
    for member in enum_cls:
        if member.meta.get("categories") and os.path.basename(urllib.parse.urlparse(member.url).path) == filename:
            return member
    return None


def _check_official_hash(enum: Any, path: Path, sha: str) -> dict[str, Any]:
    """Official file names end with the first hex digits of their SHA-256 (``resnet18-f37072fd.pth``).

    A file whose hash disagrees is still loaded (it may be a re-saved copy), with a warning, and the
    manifest records it: its results are not those of the official weights.
    """
    found = _HASH_IN_NAME.search(os.path.basename(urllib.parse.urlparse(enum.url).path))
    if found is None or not found.group(1):
        return {}
    matches = sha.startswith(found.group(1))
    if not matches:
        warnings.warn(
            f"{path} is used as {_enum_full_name(enum)}, but its SHA-256 ({sha[:12]}…) does not match the "
            f"official file's ({found.group(1)}…): a different or corrupted file",
            UserWarning,
            stacklevel=4,
        )
    return {"sha256_matches_official": matches}


_HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")  # the convention of torch.hub (check_hash)


def _missing_checkpoint_message(name: str, enum: Any, path: Path) -> str:
    return (
        f"the weights {_enum_full_name(enum)} of torchvision:{name} are not in the torch hub cache, and "
        f"GradTrust never downloads anything. Download\n    {enum.url}\nand save it as\n    {path}\n"
        f"e.g. `mkdir -p '{path.parent}' && curl -L -o '{path}' '{enum.url}'`. (The hub directory is "
        "torch.hub.get_dir(), set by $TORCH_HOME.) Or pass the downloaded file itself as the weights."
    )


def _fix_densenet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old DenseNet checkpoints (the official ones) name layers ``norm.1`` instead of ``norm1``."""
    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
    fixed = {}
    for key, value in state.items():
        match = pattern.match(key)
        fixed[match.group(1) + match.group(2) if match else key] = value
    return fixed


def _drop_aux_heads(name: str, module: nn.Module) -> None:
    """Like torchvision's builders: the auxiliary heads are only for training."""
    if name == "googlenet" and getattr(module, "aux_logits", False):
        module.aux_logits = False
        module.aux1 = None
        module.aux2 = None
    elif name == "inception_v3" and getattr(module, "aux_logits", False):
        module.aux_logits = False
        module.AuxLogits = None


def _clip_len(enum: Any) -> int:
    """Frames per clip the weights were evaluated with (from the enum's docs), else its minimum, else 16."""
    if enum is None:
        return 16
    match = re.search(r"clip_len=(\d+)", enum.meta.get("_docs", ""))
    if match:
        return int(match.group(1))
    return int(enum.meta.get("min_temporal_size", 16))


# --------------------------------------------------------------------------------------------------
# timm
# --------------------------------------------------------------------------------------------------


def _import_timm():
    try:
        import timm
        import timm.data  # noqa: F401
    except ImportError as exc:
        raise ModelError(
            "timm: models need the optional dependency timm, which is not installed: "
            "pip install 'gradtrust[timm]'"
        ) from exc
    return timm


def _load_timm(name: str, weights: Any, num_classes: int | None) -> LoadedModel:
    timm = _import_timm()
    if not timm.is_model(name):
        valid = timm.list_models()
        raise UnknownNameError(
            f"unknown timm model {name!r}" + _did_you_mean(name, valid, prefix="timm:")
            + f" ({len(valid)} models; see timm.list_models())"
        )
    meta: dict[str, Any] = {"family": "timm", "architecture": name, "timm_version": timm.__version__}

    def build(c: int | None) -> nn.Module:
        kwargs = {} if c is None else {"num_classes": c}
        return timm.create_model(name, pretrained=False, **kwargs)

    sha = None
    weights_str = None
    if weights is None:
        meta.update(_random_meta())
        module = build(num_classes)
        meta["num_classes_source"] = "argument" if num_classes is not None else "default"
    elif not _is_existing_file(weights):
        if isinstance(weights, str) and _looks_like_path(weights, WEIGHTS_SUFFIXES):
            raise ModelError(f"weights file not found: {weights}")
        hub_id = _timm_hub_id(timm, name)
        where = (
            f" The weights of {hub_id} are at https://huggingface.co/{hub_id} (model.safetensors)."
            if hub_id else ""
        )
        raise ModelError(
            f"timm models take weights from a local file only (.safetensors/.pth/.bin), got {weights!r}; "
            f"GradTrust never downloads anything.{where}"
        )
    else:
        path = Path(weights).resolve()
        state, info = read_state_dict(path)
        meta.update(info)
        sha = file_sha256(path)
        weights_str = str(path)
        meta.update(weights_kind="file", pretrained=True, weights_file=weights_str)
        default_classes = _probe(lambda: build(None)).num_classes
        classes, state, align = _fit_num_classes(build, state, num_classes, default_classes, f"timm:{name}")
        meta.update(align)
        module = build(classes)
        _load_state(module, state, f"timm:{name}", weights_str)

    classes = int(module.num_classes)
    data_config = timm.data.resolve_data_config({}, model=module, use_test_size=True)
    transform = timm.data.create_transform(**data_config)
    meta["data_config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()}
    meta["preprocessing"] = "timm resolve_data_config(use_test_size=True) + create_transform"
    class_names, source = _timm_class_names(timm, module, classes)
    meta["class_names_source"] = source
    return LoadedModel(
        module=module,
        transform=transform,
        class_names=class_names,
        num_classes=classes,
        spec=f"timm:{name}",
        weights=weights_str,
        weights_sha256=sha,
        input_kind="image",
        meta=meta,
    )


def _timm_hub_id(timm: Any, name: str) -> str | None:
    try:
        cfg = timm.models.get_pretrained_cfg(name)
        return getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    except Exception:  # pragma: no cover - depends on the timm version
        return None


def _timm_class_names(timm: Any, module: nn.Module, classes: int) -> tuple[list[str], str]:
    try:
        subset = timm.data.infer_imagenet_subset(module)
        if subset:
            info = timm.data.ImageNetInfo(subset)
            if info.num_classes() == classes:
                names = [d.split(",")[0].strip() for d in info.label_descriptions()]
                return names, f"timm ImageNetInfo({subset!r})"
    except Exception:  # pragma: no cover - older timm without ImageNetInfo
        pass
    return [str(i) for i in range(classes)], "indices"


# --------------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------------


def _import_digits():
    try:
        from gradtrust.models import digits
    except ImportError as exc:
        raise ModelError(f"the bundled digits models are unavailable: {exc}") from exc
    return digits


def _load_digits(name: str, weights: Any, num_classes: int | None) -> LoadedModel:
    digits = _import_digits()
    valid = list(digits.available_digits_models())
    if name not in valid:
        raise UnknownNameError(_unknown_message("digits model", name, valid, prefix="digits:"))
    class_names = [str(c) for c in digits.DIGITS_CLASSES]
    if num_classes is not None and num_classes != len(class_names):
        raise ModelError(f"digits:{name} has {len(class_names)} classes, not num_classes={num_classes}")
    meta: dict[str, Any] = {"family": "digits", "architecture": name, "class_names_source": "DIGITS_CLASSES"}
    sha = None
    weights_str = None
    if weights is None:
        module = digits.build_digits_model(name, pretrained=False)
        meta.update(_random_meta())
    elif isinstance(weights, str) and weights.strip().lower() in ("default", "bundled") and not _is_existing_file(weights):
        module = digits.build_digits_model(name, pretrained=True)
        weights_str = "bundled"
        meta.update(weights_kind="bundled", pretrained=True)
        ref = getattr(digits, "digits_weights_file", None)
        if ref is not None:
            ref = ref(name)
            sha = hashlib.sha256(ref.read_bytes()).hexdigest()
            meta["weights_file"] = str(ref)
    elif _is_existing_file(weights):
        path = Path(weights).resolve()
        module = digits.build_digits_model(name, pretrained=False)
        state, info = read_state_dict(path)
        state, align = _align_keys(state, set(module.state_dict()))
        meta.update(info, **align)
        weights_str = str(path)
        sha = file_sha256(path)
        _load_state(module, state, f"digits:{name}", weights_str)
        meta.update(weights_kind="file", pretrained=True, weights_file=weights_str)
    else:
        if isinstance(weights, str) and _looks_like_path(weights, WEIGHTS_SUFFIXES):
            raise ModelError(f"weights file not found: {weights}")
        raise UnknownNameError(
            f"unknown weights {weights!r} for digits:{name}; valid: None (random), 'DEFAULT' or 'bundled' "
            "(the shipped weights), or a local .pth/.safetensors file"
        )
    return LoadedModel(
        module=module,
        transform=None,
        class_names=class_names,
        num_classes=len(class_names),
        spec=f"digits:{name}",
        weights=weights_str,
        weights_sha256=sha,
        input_kind="tensor",
        meta=meta,
    )


# --------------------------------------------------------------------------------------------------
# model files and module objects
# --------------------------------------------------------------------------------------------------


def _is_torchscript_file(path: PathLike) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


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


# --------------------------------------------------------------------------------------------------
# state dicts
# --------------------------------------------------------------------------------------------------


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
            f"its keys are: {_short_list(list(obj))}"
        )
    if keys_used:
        info["state_dict_key"] = ".".join(keys_used)
    if len(tensors) != len(obj):
        info["dropped_entries"] = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
    return tensors, info


def _align_keys(state: dict[str, torch.Tensor], model_keys: set[str] | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Strip ``module.``/``_orig_mod.`` (always) and ``model.``/``net.`` (when the model lacks them)."""
    stripped: list[str] = []
    changed = True
    while changed and state:
        changed = False
        for prefix in _WRAPPER_PREFIXES + (_OPTIONAL_PREFIXES if model_keys is not None else ()):
            if not all(k.startswith(prefix) for k in state):
                continue
            if prefix in _OPTIONAL_PREFIXES and any(k.startswith(prefix) for k in model_keys):
                continue
            state = {k[len(prefix):]: v for k, v in state.items()}
            stripped.append(prefix)
            changed = True
    return state, ({"stripped_prefixes": stripped} if stripped else {})


def _probe(build: Callable[[], nn.Module]) -> nn.Module:
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


def _fit_num_classes(
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
    probe = _probe(lambda: build(classes))
    own = probe.state_dict()
    state, align = _align_keys(state, set(own))
    mismatches = _shape_mismatches(own, state)
    source = "argument" if requested is not None else "default"
    if mismatches and requested is None:
        inferred = _head_classes(mismatches, default)
        if inferred is not None:
            probe = _probe(lambda: build(inferred))
            if not _shape_mismatches(probe.state_dict(), state):
                classes, mismatches, source = inferred, [], "inferred from weights"
    if mismatches:
        listed = "; ".join(
            f"{k}: file {list(f)} vs model {list(m)}" for k, f, m in mismatches[:_MAX_LISTED]
        )
        more = f" (and {len(mismatches) - _MAX_LISTED} more)" if len(mismatches) > _MAX_LISTED else ""
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


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], what: str, source: str | None) -> None:
    """``load_state_dict`` with errors that list the first offending keys."""
    own = module.state_dict()
    mismatches = _shape_mismatches(own, state)
    if mismatches:
        listed = "; ".join(f"{k}: file {list(f)} vs model {list(m)}" for k, f, m in mismatches[:_MAX_LISTED])
        raise ModelError(
            f"the weights {source} do not fit {what}: {len(mismatches)} tensors have the wrong shape: {listed}. "
            "If the model was fine-tuned with another number of classes, pass --num-classes (num_classes=…)."
        )
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ModelError(f"cannot load the weights {source} into {what}: {_first_line(exc)}") from exc
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"{len(result.missing_keys)} missing keys ({_short_list(result.missing_keys)})")
        if result.unexpected_keys:
            parts.append(f"{len(result.unexpected_keys)} unexpected keys ({_short_list(result.unexpected_keys)})")
        raise ModelError(
            f"the weights {source} do not match {what}: {' and '.join(parts)}. Are they for this "
            f"architecture? The model's keys start with {_short_list(list(own), 3)}; the file's with "
            f"{_short_list(list(state), 3)}."
        )


# --------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------


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


def _random_meta() -> dict[str, Any]:
    return {
        "weights_kind": "random",
        "pretrained": False,
        "random_init": "randomly initialised from the global torch RNG: an untrained network",
    }


def _check_num_classes(num_classes: Any) -> int | None:
    if num_classes is None:
        return None
    try:
        value = operator.index(num_classes)  # ints and NumPy integers, not floats
    except TypeError:
        value = None
    if value is None or isinstance(num_classes, bool) or value < 1:
        raise ModelError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(value)


def _normalise_weights_arg(weights: Any) -> Any:
    if isinstance(weights, os.PathLike):
        return os.fspath(weights)
    if isinstance(weights, str):
        weights = weights.strip()
        return weights or None
    return weights


def _is_existing_file(weights: Any) -> bool:
    return isinstance(weights, str) and os.path.isfile(weights)


def _looks_like_path(text: str, suffixes: tuple[str, ...]) -> bool:
    return "/" in text or "\\" in text or text.lower().endswith(suffixes)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _short_list(items: list[Any], limit: int = _MAX_LISTED) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", … ({len(items) - limit} more)" if len(items) > limit else "")


def _did_you_mean(name: str, valid: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, valid, n=5, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(name.lower(), [v.lower() for v in valid], n=5, cutoff=0.6)
    return f". Did you mean: {', '.join(prefix + c for c in close)}?" if close else ""


def _unknown_message(what: str, name: str, valid: list[str], prefix: str = "") -> str:
    suggestion = _did_you_mean(name, valid, prefix) or "."
    return f"unknown {what} {name!r}{suggestion} Valid names: {', '.join(prefix + v for v in valid)}."


def _spec_message(spec: str) -> str:
    message = (
        f"unknown model spec {spec!r}: use 'torchvision:<name>', 'timm:<name>', 'digits:<name>' or the path "
        "of a TorchScript / pickled model file"
    )
    family, sep, _ = spec.partition(":")
    if sep:
        message += _did_you_mean(family, list(SPEC_FAMILIES))
    else:
        try:
            names = _torchvision_names()[0]
        except Exception:  # pragma: no cover
            names = []
        close = difflib.get_close_matches(spec, names, n=3, cutoff=0.75)
        if close:
            message += f". Did you mean: {', '.join('torchvision:' + c for c in close)}?"
    return message
