"""torchvision models: builders, weights enums (looked up in the torch hub cache only, never downloaded),
their preprocessing and categories."""

from __future__ import annotations

import os
import re
import urllib.parse
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradtrust.errors import ModelError, UnknownNameError
from gradtrust.models.base import LoadedModel
from gradtrust.models.specs import (
    ModelSource,
    did_you_mean,
    is_existing_file,
    random_meta,
    refuse_missing_weights_file,
    register_source,
    std_meta,
    unknown_message,
)
from gradtrust.models.state_dict import (
    align_keys,
    file_sha256,
    fit_num_classes,
    load_state,
    read_state_dict,
    read_weights_file,
)


def hub_checkpoint_path(weights_enum: Any) -> Path:
    """Where torchvision caches the file of a weights enum: ``torch.hub.get_dir()/checkpoints/<name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urllib.parse.urlparse(weights_enum.url).path)


def torchvision_names() -> tuple[list[str], set[str]]:
    """All classification + video model names, and the set of video ones."""
    import torchvision.models as tvm

    images = tvm.list_models(module=tvm)
    videos = tvm.list_models(module=tvm.video)
    return sorted(set(images) | set(videos)), set(videos)


def load_torchvision(name: str, weights: Any, num_classes: int | None) -> LoadedModel:
    """``torchvision:<name>``: random, hub-cache (enum name / ``"DEFAULT"``) or local-file weights; never downloads."""
    import torchvision
    import torchvision.models as tvm
    from torchvision.models import WeightsEnum

    valid, video_names = torchvision_names()
    if name not in valid:
        lowered = {n.lower(): n for n in valid}
        if name.lower() in lowered:
            name = lowered[name.lower()]
        else:
            raise UnknownNameError(unknown_message("torchvision model", name, valid, prefix="torchvision:"))
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
        ref = reference_enum(name, enum_cls)
        meta.update(random_meta())
    elif isinstance(weights, WeightsEnum) or not is_existing_file(weights):
        refuse_missing_weights_file(weights)
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
                    weights_url=enum.url, weights_file=str(path), **_check_official_hash(enum, path, sha))
    else:
        state, weights_str, sha = read_weights_file(weights, meta)
        path = Path(weights_str)
        enum = _enum_for_filename(enum_cls, path.name)  # a copy of an official checkpoint
        ref = enum if enum is not None else reference_enum(name, enum_cls)
        if enum is not None:
            meta.update(weights_enum=_enum_full_name(enum), weights_url=enum.url, **_check_official_hash(enum, path, sha))

    ref_classes = len(ref.meta["categories"]) if ref is not None else 1000

    official = enum is not None
    if state is not None and name.startswith("densenet"):
        state = _fix_densenet_keys(state)
    # GoogLeNet / Inception v3: build the auxiliary heads only when the file holds them (official files do).
    aux_prefixes = ("aux1.", "aux2.", "AuxLogits.")
    aux = state is not None and any(k.startswith(aux_prefixes) for k in align_keys(state, None)[0])

    def build(c: int) -> nn.Module:
        return _build_torchvision(name, c, ref, official=official, aux=aux, random_init=state is None)

    if state is None:
        classes = num_classes if num_classes is not None else ref_classes
        meta["num_classes_source"] = "argument" if num_classes is not None else "default"
        module = build(classes)
    else:
        classes, state, align = fit_num_classes(build, state, num_classes, ref_classes, f"torchvision:{name}")
        meta.update(align)
        module = build(classes)
        load_state(module, state, f"torchvision:{name}", weights_str)
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
        meta.update(std_meta(getattr(transform, "std", None)))

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


def reference_enum(name: str, enum_cls: Any) -> Any:
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
    members = {m.lower(): m for m in _enum_names(enum_cls)}
    if member.lower() not in members:
        raise UnknownNameError(
            f"unknown weights {text!r} for torchvision:{name}; valid: {', '.join(_enum_names(enum_cls))}, "
            "or a local .pth/.safetensors file"
            + did_you_mean(member, _enum_names(enum_cls))
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
        if member.meta.get("categories") and hub_checkpoint_path(member).name == filename:
            return member
    return None


def _check_official_hash(enum: Any, path: Path, sha: str) -> dict[str, Any]:
    """Official file names end with the first hex digits of their SHA-256 (``resnet18-f37072fd.pth``).

    A file whose hash disagrees is still loaded (it may be a re-saved copy), with a warning, and the
    manifest records it: its results are not those of the official weights.
    """
    found = _HASH_IN_NAME.search(hub_checkpoint_path(enum).name)
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
    return {pattern.sub(r"\1\2", key): value for key, value in state.items()}


def _drop_aux_heads(name: str, module: nn.Module) -> None:
    """Like torchvision's builders: the auxiliary heads are only for training."""
    if name == "googlenet" and getattr(module, "aux_logits", False):
        for attr, value in (("aux_logits", False), ("aux1", None), ("aux2", None)):
            setattr(module, attr, value)
    elif name == "inception_v3" and getattr(module, "aux_logits", False):
        for attr, value in (("aux_logits", False), ("AuxLogits", None)):
            setattr(module, attr, value)


def _clip_len(enum: Any) -> int:
    """Frames per clip the weights were evaluated with (from the enum's docs), else its minimum, else 16."""
    if enum is None:
        return 16
    match = re.search(r"clip_len=(\d+)", enum.meta.get("_docs", ""))
    return int(match.group(1)) if match else int(enum.meta.get("min_temporal_size", 16))


register_source(ModelSource("torchvision", load_torchvision, lambda: torchvision_names()[0]))
