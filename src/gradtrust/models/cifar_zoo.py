"""``cifar:<name>`` specs: the CIFAR model zoo, offline — the architectures of two published checkpoint
collections (:mod:`gradtrust.models.cifar_nets`), their weights read from a local file or the torch hub cache,
each with the normalisation its training used. Nothing is downloaded.

==============================  =====================================================================
``cifar:resnet20|32|44|56|110``  He et al. 2016's CIFAR-10 ResNets with option-A (zero-padding) shortcuts,
                                 akamaster/pytorch_resnet_cifar10: a ``.th`` checkpoint ``{"state_dict":
                                 {"module.conv1.weight": …}, "best_prec1": …}``, published as
                                 ``resnet20-12fca82f.th`` …; trained on ImageNet's mean/std (trainer.py).
``cifar:cifar10_<arch>``,        chenyaofo/pytorch-cifar-models' torch-hub entries, ``<arch>`` one of
``cifar:cifar100_<arch>``        resnet20/32/44/56 (1×1-conv + BN shortcuts), vgg11/13/16/19_bn,
                                 mobilenetv2_x0_5/x0_75/x1_0/x1_4, shufflenetv2_x0_5/x1_0/x1_5/x2_0,
                                 repvgg_a0/a1/a2: plain state dicts, published as
                                 ``cifar10_resnet20-4118986f.pt`` …; trained on the data set's mean/std.
==============================  =====================================================================

Weights: ``None`` (random initialisation), ``"DEFAULT"`` (the published file, looked up in the torch hub cache
``torch.hub.get_dir()/checkpoints/<published file name>``, where ``torch.hub.load`` puts it; the error for a
missing one says where to put it and where it is published), or a local file — given as the weights, or in the
spec itself as ``cifar:<name>:<file>`` (so that ``gradtrust benchmark --models`` gives each model its own file).
Inputs are 32×32 RGB images: the preprocessing resizes to 32×32 (a no-op on CIFAR images) and normalises.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradtrust.data.cifar import CIFAR10_CLASSES, CIFAR100_CLASSES
from gradtrust.errors import ModelError, UnknownNameError
from gradtrust.models import cifar_nets
from gradtrust.models.base import LoadedModel
from gradtrust.models.preprocessing import Preprocessing
from gradtrust.models.specs import (
    ModelSource,
    is_existing_file,
    random_meta,
    refuse_missing_weights_file,
    register_source,
    std_meta,
    unknown_message,
)
from gradtrust.models.state_dict import build_on_meta, fit_num_classes, load_state, read_weights_file

__all__ = [
    "CifarCheckpoint",
    "available_cifar_models",
    "cifar_checkpoint",
    "load_cifar",
]

# The normalisation each collection trained with.
# akamaster/pytorch_resnet_cifar10, trainer.py: transforms.Normalize(mean=[0.485, 0.456, 0.406],
# std=[0.229, 0.224, 0.225]) (ImageNet's statistics).
_IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# chenyaofo/pytorch-cifar-models, the training configuration recorded at the top of every log:
# logs/cifar10/<arch>/default.log: mean [0.4914, 0.4822, 0.4465], std [0.2023, 0.1994, 0.201];
# logs/cifar100/<arch>/default.log (e.g. logs/cifar100/resnet20/default.log): mean [0.507, 0.4865, 0.4409],
# std [0.2673, 0.2564, 0.2761].
_CIFAR10_NORM = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.201))
_CIFAR100_NORM = ((0.507, 0.4865, 0.4409), (0.2673, 0.2564, 0.2761))

_AKAMASTER_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
_CHENYAOFO_URL = "https://github.com/chenyaofo/pytorch-cifar-models/releases/download/"


@dataclass(frozen=True)
class CifarCheckpoint:
    """One ``cifar:`` name: how to build it, its classes, the normalisation its training used and the published
    checkpoint (file name in the hub cache, download address)."""

    name: str
    architecture: str
    build: Any  # (num_classes) -> nn.Module
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    file_name: str
    url: str
    collection: str


# chenyaofo's architectures: builder and the published file's hash suffix per data set (from the
# ``cifar10_pretrained_weight_urls`` / ``cifar100_pretrained_weight_urls`` tables of each module).
_RESNET_DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9}
_MOBILENET_WIDTHS = {
    "mobilenetv2_x0_5": 0.5,
    "mobilenetv2_x0_75": 0.75,
    "mobilenetv2_x1_0": 1.0,
    "mobilenetv2_x1_4": 1.4,
}
_SHUFFLENET_CHANNELS = {
    "shufflenetv2_x0_5": (24, 48, 96, 192, 1024),
    "shufflenetv2_x1_0": (24, 116, 232, 464, 1024),
    "shufflenetv2_x1_5": (24, 176, 352, 704, 1024),
    "shufflenetv2_x2_0": (24, 244, 488, 976, 2048),
}
_REPVGG_WIDTHS = {"repvgg_a0": (0.75, 2.5), "repvgg_a1": (1.0, 2.5), "repvgg_a2": (1.5, 2.75)}
_CHENYAOFO_HASHES = {
    "resnet20": ("4118986f", "23dac2f1"),
    "resnet32": ("ef93fc4d", "84213ce6"),
    "resnet44": ("2a3cabcb", "ffe32858"),
    "resnet56": ("187c023a", "f2eff4c8"),
    "vgg11_bn": ("eaeebf42", "57d0759e"),
    "vgg13_bn": ("c01e4a43", "5ebe5778"),
    "vgg16_bn": ("6ee7ea24", "7d8c4031"),
    "vgg19_bn": ("57191229", "b98f7bd7"),
    "mobilenetv2_x0_5": ("ca14ced9", "9f915757"),
    "mobilenetv2_x0_75": ("a53c314e", "d7891e60"),
    "mobilenetv2_x1_0": ("fe6a5b48", "1311f9ff"),
    "mobilenetv2_x1_4": ("3bbbd6e2", "8a269f5e"),
    "shufflenetv2_x0_5": ("1308b4e9", "1977720f"),
    "shufflenetv2_x1_0": ("98807be3", "9ae22beb"),
    "shufflenetv2_x1_5": ("296694dd", "e2c85ad8"),
    "shufflenetv2_x2_0": ("ec31611c", "e7e584cd"),
    "repvgg_a0": ("ef08a50e", "2df1edd0"),
    "repvgg_a1": ("38d2431b", "c06b21a7"),
    "repvgg_a2": ("09488915", "8e71b1f8"),
}
# akamaster's ResNets: blocks per stage and the published file's hash suffix (README, pretrained_models/).
_AKAMASTER = {
    "resnet20": (3, "12fca82f"),
    "resnet32": (5, "d509ac18"),
    "resnet44": (7, "014dd654"),
    "resnet56": (9, "4bfd9763"),
    "resnet110": (18, "1d1ed7c2"),
}


def _chenyaofo_builder(arch: str):
    if arch in _RESNET_DEPTHS:
        return lambda c: cifar_nets.conv_shortcut_resnet(_RESNET_DEPTHS[arch], c)
    if arch in cifar_nets.VGG_LAYOUTS:
        return lambda c: cifar_nets.CifarVGG(cifar_nets.VGG_LAYOUTS[arch], c)
    if arch in _MOBILENET_WIDTHS:
        return lambda c: cifar_nets.cifar_mobilenet_v2(_MOBILENET_WIDTHS[arch], c)
    if arch in _SHUFFLENET_CHANNELS:
        return lambda c: cifar_nets.cifar_shufflenet_v2(_SHUFFLENET_CHANNELS[arch], c)
    a, b = _REPVGG_WIDTHS[arch]
    return lambda c: cifar_nets.RepVGG(a, b, c)


def _catalogue() -> dict[str, CifarCheckpoint]:
    entries: dict[str, CifarCheckpoint] = {}
    for arch, (blocks, digest) in _AKAMASTER.items():
        file_name = f"{arch}-{digest}.th"
        entries[arch] = CifarCheckpoint(
            arch,
            f"{arch} (option-A shortcuts)",
            lambda c, n=blocks: cifar_nets.ZeroPadResNet(n, c),
            tuple(CIFAR10_CLASSES),
            *_IMAGENET_NORM,
            file_name,
            _AKAMASTER_URL + file_name,
            "akamaster/pytorch_resnet_cifar10",
        )
    for dataset, classes, norm, column in (
        ("cifar10", CIFAR10_CLASSES, _CIFAR10_NORM, 0),
        ("cifar100", CIFAR100_CLASSES, _CIFAR100_NORM, 1),
    ):
        for arch, digests in _CHENYAOFO_HASHES.items():
            name = f"{dataset}_{arch}"
            file_name = f"{name}-{digests[column]}.pt"
            release = next(r for r in ("resnet", "vgg", "mobilenetv2", "shufflenetv2", "repvgg") if arch.startswith(r))
            entries[name] = CifarCheckpoint(
                name,
                arch,
                _chenyaofo_builder(arch),
                tuple(classes),
                *norm,
                file_name,
                f"{_CHENYAOFO_URL}{release}/{file_name}",
                "chenyaofo/pytorch-cifar-models",
            )
    return entries


CATALOGUE = _catalogue()


def available_cifar_models() -> list[str]:
    """Every ``cifar:`` name: akamaster's ResNets, then chenyaofo's CIFAR-10 and CIFAR-100 entries."""
    return list(CATALOGUE)


def cifar_checkpoint(name: str) -> CifarCheckpoint:
    """The catalogue entry of a ``cifar:`` name; an `UnknownNameError` with close matches otherwise."""
    if name not in CATALOGUE:
        raise UnknownNameError(unknown_message("CIFAR model", name, available_cifar_models(), prefix="cifar:"))
    return CATALOGUE[name]


def hub_cache_file(entry: CifarCheckpoint) -> Path:
    """Where ``torch.hub`` keeps the published file: ``torch.hub.get_dir()/checkpoints/<file name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / entry.file_name


def _missing_message(entry: CifarCheckpoint, path: Path) -> str:
    return (
        f"the published weights of cifar:{entry.name} ({entry.collection}) are not in the torch hub cache, and "
        f"GradTrust never downloads anything. Download\n    {entry.url}\nand save it as\n    {path}\n"
        f"e.g. `mkdir -p '{path.parent}' && curl -L -o '{path}' '{entry.url}'`. (The hub directory is "
        "torch.hub.get_dir(), set by $TORCH_HOME.) Or pass the downloaded file itself: --weights FILE or "
        f"--model cifar:{entry.name}:FILE."
    )


def load_cifar(name: str, weights: Any, num_classes: int | None) -> LoadedModel:
    """``cifar:<name>[:<file>]`` with random (None), published (``"DEFAULT"``: the hub cache) or file weights."""
    name, sep, spec_file = name.partition(":")
    if sep:
        spec_file = spec_file.strip()
        if not spec_file:
            raise ModelError(f"cifar:{name}: the spec ends with ':' but names no weights file")
        given_file = weights is not None and not (isinstance(weights, str) and weights.lower() == "default")
        if given_file and os.path.abspath(str(weights)) != os.path.abspath(spec_file):  # DEFAULT: the spec's file
            raise ModelError(
                f"cifar:{name}:{spec_file} names its weights file in the spec, and the weights "
                f"{weights!r} were given too: give one of them"
            )
        if not os.path.isfile(spec_file):
            raise ModelError(f"weights file not found: {spec_file} (from the spec cifar:{name}:{spec_file})")
        weights = spec_file
    entry = cifar_checkpoint(name.strip())
    meta: dict[str, Any] = {
        "family": "cifar",
        "architecture": entry.architecture,
        "collection": entry.collection,
        "published_file": entry.file_name,
        "published_url": entry.url,
        "class_names_source": f"{'CIFAR-100' if len(entry.classes) == 100 else 'CIFAR-10'} label order",
    }
    default_classes = len(entry.classes)
    sha = None
    weights_str = None
    if weights is None:
        meta.update(random_meta())
        classes = num_classes or default_classes
        meta["num_classes_source"] = "argument" if num_classes is not None else "default"
        module: nn.Module = entry.build(classes)
    else:
        if isinstance(weights, str) and weights.strip().lower() == "default" and not is_existing_file(weights):
            path = hub_cache_file(entry)
            if not path.is_file():
                raise ModelError(_missing_message(entry, path))
            weights = str(path)
            meta["weights_source"] = "torch hub cache"
        elif not is_existing_file(weights):
            refuse_missing_weights_file(weights)
            raise UnknownNameError(
                f"unknown weights {weights!r} for cifar:{entry.name}; valid: None (random), 'DEFAULT' (the published "
                f"file {entry.file_name} in the torch hub cache), or a local weights file"
            )
        probe_keys = set(build_on_meta(lambda: entry.build(default_classes)).state_dict())
        state, weights_str, sha = read_weights_file(weights, meta, probe_keys)
        meta["sha256_matches_published_name"] = sha.startswith(entry.file_name.rsplit("-", 1)[1].split(".")[0])
        classes, state, align = fit_num_classes(entry.build, state, num_classes, default_classes, f"cifar:{name}")
        meta.update(align)
        module = entry.build(classes)
        load_state(module, state, f"cifar:{entry.name}", weights_str)
    class_names = list(entry.classes) if classes == default_classes else [str(i) for i in range(classes)]
    if classes != default_classes:
        meta["class_names_source"] = "indices"
    pre = Preprocessing.from_options(
        input_size=32, mean=entry.mean, std=entry.std, source=f"the training normalisation of {entry.collection}"
    )
    meta["preprocessing"] = pre.source
    meta.update(std_meta(entry.std))
    return LoadedModel(
        module=module,
        transform=pre.transform(),
        class_names=class_names,
        num_classes=classes,
        spec=f"cifar:{name}",
        weights=weights_str,
        weights_sha256=sha,
        input_kind="image",
        meta=meta,
    )


register_source(ModelSource("cifar", load_cifar, available_cifar_models))
