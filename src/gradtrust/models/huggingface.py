"""``hf:<folder>``: a local Hugging Face ``transformers`` image classifier, as ``save_pretrained`` writes it.

The folder holds ``config.json`` (architecture and ``id2label``), the weights (``model.safetensors``) and,
normally, ``preprocessor_config.json`` (the image processor). GradTrust loads them with
``local_files_only=True`` and ``HF_HUB_OFFLINE=1``: nothing is ever fetched from the Hub. The image
processor itself is the transform (so the model gets exactly the inputs it was trained on), the class
names are ``id2label`` in output order, and the processor's ``image_std`` is recorded as the
normalisation std (for ODIN's ε in pixel units). Optional dependency: ``pip install 'gradtrust[hf]'``.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from gradtrust.errors import ModelError
from gradtrust.models.base import LoadedModel
from gradtrust.models.specs import first_line, std_meta
from gradtrust.models.state_dict import file_sha256

__all__ = ["HFImageTransform", "load_hf_folder"]

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class HFImageTransform:
    """One PIL image → the ``pixel_values`` (C, H, W) the checkpoint's image processor makes of it."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Any) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def __repr__(self) -> str:
        return f"HFImageTransform({type(self.processor).__name__}: {_processor_summary(self.processor)})"


def _processor_summary(processor: Any) -> dict[str, Any]:
    keys = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
            "do_normalize", "image_mean", "image_std")
    out: dict[str, Any] = {}
    for key in keys:
        value = getattr(processor, key, None)
        if value is None:
            continue
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = {k: v for k, v in dataclasses.asdict(value).items() if v is not None}
        elif hasattr(value, "items"):
            value = {k: v for k, v in dict(value.items()).items() if v is not None}
        elif isinstance(value, tuple):
            value = list(value)
        elif not isinstance(value, (bool, int, float, str, list)):
            value = str(value)
        out[key] = value
    return out


def _import_transformers() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: local_files_only=True is passed as well
    try:
        import transformers
    except ImportError as exc:
        raise ModelError("hf: models need the optional dependency transformers, which is not installed: "
                         "pip install 'gradtrust[hf]'") from exc
    return transformers


def load_hf_folder(folder: str, weights: Any, num_classes: int | None) -> LoadedModel:
    """Load ``folder`` (see the module docstring); ``weights`` must be ``None`` (they are in the folder)."""
    path = Path(folder).expanduser()
    if not folder or not path.is_dir():
        raise ModelError(f"hf:{folder}: not a folder. Give the folder that save_pretrained wrote (config.json, "
                         "model.safetensors, preprocessor_config.json); GradTrust never downloads from the Hub")
    path = path.resolve()
    if not (path / "config.json").is_file():
        raise ModelError(f"hf:{folder}: no config.json in {path}; is it a save_pretrained folder?")
    if weights is not None:
        raise ModelError("an hf: folder carries its own weights (model.safetensors); give no --weights")
    transformers = _import_transformers()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = transformers.AutoModelForImageClassification.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise ModelError(f"cannot load hf:{folder} as an image classifier with transformers "
                         f"{transformers.__version__}: {first_line(exc)}") from exc
    config = module.config
    labels = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    classes = int(getattr(config, "num_labels", len(labels)))
    if num_classes is not None and num_classes != classes:
        raise ModelError(f"hf:{folder} has {classes} outputs (config.json num_labels), not num_classes={num_classes}")
    class_names = [labels.get(i, str(i)) for i in range(classes)]

    meta: dict[str, Any] = {
        "family": "hf", "architecture": type(module).__name__, "model_type": getattr(config, "model_type", None),
        "hf_folder": str(path), "transformers_version": transformers.__version__,
        "class_names_source": "config.json id2label", "num_classes_source": "config.json num_labels",
        "weights_kind": "folder", "pretrained": True,
    }
    transform = None
    if (path / "preprocessor_config.json").is_file():
        try:
            processor = transformers.AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:
            raise ModelError(f"cannot load the image processor of hf:{folder}: {first_line(exc)}") from exc
        transform = HFImageTransform(processor)
        summary = _processor_summary(processor)
        meta["preprocessing"] = {"source": f"{type(processor).__name__} of the folder", **summary}
        if summary.get("do_normalize") and summary.get("image_std") is not None:
            std = summary["image_std"]
            meta.update(std_meta(std if isinstance(std, list) else [std] * 3))
    else:
        meta["preprocessing"] = "none: the folder has no preprocessor_config.json; give --input-size/--mean/--std"
    weight_file = next((path / name for name in _WEIGHT_FILES if (path / name).is_file()), None)
    return LoadedModel(
        module=module,
        transform=transform,
        class_names=class_names,
        num_classes=classes,
        spec=f"hf:{folder}",
        weights=str(weight_file) if weight_file is not None else str(path),
        weights_sha256=file_sha256(weight_file) if weight_file is not None else None,
        input_kind="image" if transform is not None else "tensor",
        meta=meta,
    )
