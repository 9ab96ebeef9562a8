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
    ``cifar:<name>``        the CIFAR model zoo (:mod:`gradtrust.models.cifar_zoo`): akamaster's ResNets and
                            chenyaofo's torch-hub entries, weights from a file or the torch hub cache.
    ``hf:<folder>``         a local Hugging Face ``transformers`` image-classification checkpoint
                            (``save_pretrained`` folder), with its image processor and labels.
    ``package.module:fn``   your own builder: ``fn()`` (or ``fn(num_classes=N)``) returns the nn.Module.
    ``<path>``              a TorchScript file (``torch.jit.load``); a whole pickled model
                            (``torch.save(model, path)``) only with ``trust_model_file=True``.
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

Security: weights files are read without running code; a pickled model file only with
``trust_model_file=True`` (see :func:`gradtrust.models.files.load_model_file`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradtrust.errors import ModelError, UnknownNameError

# Importing the loader modules registers their sources (specs.SOURCES) for the dispatch below.
from gradtrust.models import cifar_zoo, digits_loader, timm_models  # noqa: F401
from gradtrust.models.base import LoadedModel
from gradtrust.models.factory import is_factory_spec, load_factory
from gradtrust.models.files import load_model_file, load_module_object
from gradtrust.models.preprocessing import Preprocessing, borrow_preprocessing, preprocessing_of
from gradtrust.models.specs import (
    MODEL_FILE_SUFFIXES,
    SOURCES,
    SPEC_FAMILIES,
    available_models,
    check_num_classes,
    first_line,
    looks_like_path,
    normalise_weights_arg,
    spec_message,
    std_meta,
)
from gradtrust.models.state_dict import file_sha256, read_state_dict
from gradtrust.models.torchvision_models import hub_checkpoint_path
from gradtrust.nn.outputs import SelectOutput

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
    *,
    preprocessing: Preprocessing | str | Mapping[str, Any] | None = None,
    class_names: Sequence[str] | str | os.PathLike[str] | None = None,
    trust_model_file: bool = False,
    output_index: int | str | None = None,
) -> LoadedModel:
    """Build a classifier from ``spec`` and ``weights`` (see the module docstring); never downloads.

    Args:
        spec, weights: the forms of the module docstring's tables.
        num_classes: number of outputs of a fine-tuned head; inferred from a weights file when omitted.
        device: where to put the module (``cpu``, ``cuda``, ``cuda:1``…; not ``meta``).
        preprocessing: how an image becomes the model's input, for a model that has none (a model file, a
            factory, a module) or to replace its own: a :class:`~gradtrust.models.preprocessing.Preprocessing`,
            a dict of its options (``input_size``, ``resize``, ``crop``, ``mean``, ``std``, ``interpolation``,
            and ``borrow="torchvision:resnet18"`` to start from a known model's), or a spec string to borrow.
        class_names: the model's class names in output order: a list, or a text file with one name per line.
            Dataset class folders are then matched to the outputs by name.
        trust_model_file: allow a whole pickled ``nn.Module`` file (``torch.save(model, path)``), which is
            unpickled with ``weights_only=False`` and can run arbitrary code hidden in it. Off by default:
            TorchScript files and state dicts are read without running code.
        output_index: for a model whose forward returns several outputs, the one holding the logits
            (``0`` for ``(logits, features)``, or a dict key); the module is wrapped in
            :class:`~gradtrust.nn.outputs.SelectOutput`.

    Returns a `LoadedModel` with the module in eval mode on ``device``. Raises `UnknownNameError` for an
    unknown model family, model name or weights enum name (with close matches), `ModelError` for weights
    missing from the hub cache (with the path and URL), an unreadable file, weights that do not fit the
    architecture (first mismatching keys and shapes), a bad device…
    """
    num_classes = check_num_classes(num_classes)
    weights = normalise_weights_arg(weights)

    if isinstance(spec, nn.Module):
        loaded = load_module_object(spec, weights, num_classes)
    else:
        if isinstance(spec, os.PathLike):
            spec = os.fspath(spec)
        if not isinstance(spec, str) or not spec.strip():
            raise ModelError(f"a model spec must be a non-empty string, a path or an nn.Module, got {spec!r}")
        spec = spec.strip()
        family, sep, name = spec.partition(":")
        if os.path.isfile(spec):
            loaded = load_model_file(spec, weights, num_classes, trust_model_file=trust_model_file)
        elif sep and family.lower() == "hf":
            from gradtrust.models.huggingface import load_hf_folder

            loaded = load_hf_folder(name.strip(), weights, num_classes)
        elif sep and family.lower() in SOURCES:
            name = name.strip()
            if not name:
                raise ModelError(f"model spec {spec!r} names no model: use '{family.lower()}:<name>'")
            loaded = SOURCES[family.lower()].load(name, weights, num_classes)
            loaded.spec = spec
        elif looks_like_path(spec, MODEL_FILE_SUFFIXES):
            raise ModelError(f"model file not found: {spec}")
        elif is_factory_spec(spec):
            loaded = load_factory(spec, weights, num_classes)
        else:
            raise UnknownNameError(spec_message(spec))

    if output_index is not None:
        loaded.module = SelectOutput(loaded.module, output_index)
        loaded.meta["output_index"] = output_index
    if class_names is not None:
        _set_class_names(loaded, class_names)
    if preprocessing is not None:
        _set_preprocessing(loaded, preprocessing)
    _finish(loaded, device)
    return loaded


def _set_class_names(loaded: LoadedModel, class_names: Sequence[str] | str | os.PathLike[str]) -> None:
    """Replace the class names (a list, or a file with one name per line, blank lines ignored)."""
    if isinstance(class_names, (str, os.PathLike)):
        path = Path(class_names)
        if not path.is_file():
            raise ModelError(f"class names file not found: {path}")
        try:
            names = [line.strip() for line in path.read_text("utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelError(f"cannot read the class names file {path}: {first_line(exc)}") from exc
        source = f"file {path.resolve()}"
    else:
        names = [str(n) for n in class_names]
        source = "argument"
    if not names:
        raise ModelError(f"the class names ({source}) are empty: give one name per line, in output order")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ModelError(f"the class names ({source}) repeat {', '.join(duplicates[:5])}: each output needs its own")
    if loaded.num_classes is not None and len(names) != loaded.num_classes:
        raise ModelError(f"{len(names)} class names ({source}) for a model with {loaded.num_classes} outputs: give "
                         "one name per output, in output order (or --num-classes to say how many outputs)")
    loaded.num_classes = len(names)
    loaded.class_names = names
    loaded.meta["class_names_source"] = source


def _set_preprocessing(loaded: LoadedModel, preprocessing: Preprocessing | str | Mapping[str, Any]) -> None:
    if isinstance(preprocessing, str):
        pre = borrow_preprocessing(preprocessing)
    elif isinstance(preprocessing, Mapping):
        options = dict(preprocessing)
        borrow = options.pop("borrow", None)
        unknown = sorted(set(options) - {"input_size", "resize", "crop", "mean", "std", "interpolation"})
        if unknown:
            raise UnknownNameError(f"unknown preprocessing option(s) {', '.join(unknown)}; valid: input_size, "
                                   "resize, crop, mean, std, interpolation, borrow")
        pre = Preprocessing.from_options(**options, base=_base_preprocessing(loaded, borrow, options))
    elif isinstance(preprocessing, Preprocessing):
        pre = preprocessing
    else:
        raise ModelError(f"preprocessing must be a Preprocessing, a dict or a spec string, got {preprocessing!r}")
    if loaded.input_kind == "video":
        raise ModelError("preprocessing options apply to image models, not to video models")
    loaded.transform = pre.transform()
    loaded.input_kind = "image"
    loaded.meta["preprocessing"] = pre.describe()
    loaded.meta.update(std_meta(pre.std))


def _base_preprocessing(loaded: LoadedModel, borrow: str | None, options: Mapping[str, Any]) -> Preprocessing | None:
    """What the options change: the borrowed preprocessing, else the model's own (so that ``input_size`` alone
    keeps its normalisation and scales its resize); a transform that cannot be read back is replaced only by a
    complete recipe (a size, mean and std)."""
    if borrow:
        return borrow_preprocessing(borrow)
    own = preprocessing_of(loaded.transform)
    if own is None and loaded.transform is not None and not (
            {"mean", "std"} <= set(options) and {"input_size", "resize"} & set(options)):
        raise ModelError(f"the preprocessing of {loaded.spec} ({type(loaded.transform).__name__}) cannot be read to "
                         "change some of its fields: give all of them (--input-size or --resize/--crop, --mean and "
                         "--std), or start from a known one with --preprocessing torchvision:<name>")
    source = loaded.meta.get("preprocessing")
    return own if own is None or not isinstance(source, str) else replace(own, source=source)


def _finish(loaded: LoadedModel, device: str | torch.device) -> None:
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ModelError(f"invalid device {device!r}: {first_line(exc)}") from exc
    if target.type == "meta":
        raise ModelError("the meta device holds no data (shapes only), so nothing can be scored on it; use cpu, "
                         "cuda or cuda:N")
    try:
        loaded.module.to(target)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise ModelError(f"cannot move the model to {target}: {first_line(exc)}") from exc
    loaded.module.eval()
    loaded.meta.setdefault("torch_version", torch.__version__)
    loaded.meta["device"] = str(target)
