"""The data-spec registry: ``--data NAME:ARG[:ARG…][:key=value…]`` for the data sets in their distributed formats.

Each kind of data is declared once with :func:`register_data_spec` (timm style): its name, its usage line, the
exact file layout it reads and the function that opens it. ``gradtrust datasets`` and :func:`available_datasets`
list the same names; :func:`open_data_spec` opens a spec for a model (or, in Python, for a transform).

A spec is split at ``:``; fields of the form ``key=value`` whose key is one of the spec's declared options are
options, the others are positional arguments (``cifar10:/data/cifar:test``,
``hf-datasets:/data/cifar10_hf:test:image=img:label=label``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gradtrust.errors import DataError, UnknownNameError

__all__ = [
    "DataSpec",
    "OpenContext",
    "available_datasets",
    "data_spec",
    "data_specs",
    "is_data_spec",
    "open_data_spec",
    "register_data_spec",
    "split_data_spec",
]


@dataclass(frozen=True)
class OpenContext:
    """What an opener may use besides the spec: the model's transform (PIL image → tensor, ``None`` = float
    ``[0, 1]``), its class names (an unlabelled set takes them, so the class map is the identity) and input kind."""

    transform: Callable[[Any], Any] | None = None
    class_names: tuple[str, ...] = ()
    input_kind: str = "image"


@dataclass(frozen=True)
class DataSpec:
    """One kind of ``--data`` spec.

    ``name``: the prefix (``cifar10``); ``usage``: the spec's form (``cifar10:DIR[:train|test]``); ``summary``:
    one line; ``layout``: the exact files it reads (shown by ``gradtrust datasets``); ``opener``:
    ``"module:function"`` called as ``function(args, options, context)`` (imported when used, so listing
    imports no reader); ``options``: the ``key=value`` options it takes; ``min_args``/``max_args``: how many
    positional fields.
    """

    name: str
    usage: str
    summary: str
    layout: str
    opener: str
    min_args: int = 1
    max_args: int = 1
    options: tuple[str, ...] = ()

    def open(self, args: list[str], options: dict[str, str], context: OpenContext) -> Any:
        if not self.min_args <= len(args) <= self.max_args:
            raise DataError(
                f"{self.name}: expected {self.usage}, got {len(args)} field(s) {args!r}. Layout: {self.layout}"
            )
        module, _, function = self.opener.partition(":")
        return getattr(importlib.import_module(module), function)(args, options, context)


_REGISTRY: dict[str, DataSpec] = {}


def register_data_spec(spec: DataSpec) -> DataSpec:
    """Add a data spec (a new name; registering one name twice is an error)."""
    if not spec.name or ":" in spec.name or spec.name == "digits" or ":" not in spec.opener:
        raise DataError(
            f"a data spec needs a name without ':' other than 'digits' and an opener 'module:function'; "
            f"got {spec.name!r}, {spec.opener!r}"
        )
    if spec.name in _REGISTRY and _REGISTRY[spec.name] != spec:
        raise DataError(f"the data spec {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def data_specs() -> list[DataSpec]:
    """Every registered data spec, in registration order."""
    return list(_REGISTRY.values())


def available_datasets() -> list[str]:
    """The registered spec names (what ``gradtrust datasets`` lists), in registration order."""
    return list(_REGISTRY)


def data_spec(name: str) -> DataSpec:
    """The :class:`DataSpec` called ``name``; :class:`UnknownNameError` listing the names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown data spec {name!r}; known: {', '.join(_REGISTRY)} (gradtrust datasets shows each layout)"
        ) from None


def is_data_spec(text: Any) -> bool:
    """Whether ``text`` starts with a registered spec name and ``:`` (``svhn:test_32x32.mat``)."""
    return isinstance(text, str) and text.partition(":")[0] in _REGISTRY and ":" in text


def split_data_spec(text: str) -> tuple[DataSpec, list[str], dict[str, str]]:
    """``"name:a:b:key=v"`` → (its :class:`DataSpec`, positional fields, options); unknown option keys are an error."""
    name, _, rest = text.partition(":")
    spec = data_spec(name)
    args: list[str] = []
    options: dict[str, str] = {}
    for part in rest.split(":") if rest else []:
        key, eq, value = part.partition("=")
        if eq and args and key in spec.options:  # the first field is the path, whatever it holds
            options[key] = value
        elif eq and args and key.isidentifier():
            raise DataError(
                f"{name}: unknown option {key!r}; {spec.name} takes "
                f"{', '.join(spec.options) or 'no options'} ({spec.usage})"
            )
        else:
            args.append(part)
    while args and not args[-1]:  # "cifar10:DIR:" = "cifar10:DIR"
        args.pop()
    if not args or not args[0]:
        raise DataError(f"{name}: no path given; expected {spec.usage}")
    return spec, args, options


def open_data_spec(text: str, transform: Callable[[Any], Any] | None = None, *, model: Any = None) -> Any:
    """Open a registered spec (``"cifar10:/data/cifar:test"``) as a dataset of :class:`~gradtrust.data.Sample`.

    ``model`` (a :class:`~gradtrust.models.LoadedModel`) gives the transform and class names; without it,
    ``transform`` is applied to each PIL image (``None``: float ``[0, 1]`` tensors ``(C, H, W)``).
    """
    spec, args, options = split_data_spec(text)
    if model is not None:
        if getattr(model, "input_kind", "image") == "video":
            raise DataError(f"{spec.name}: holds images, but the model {getattr(model, 'spec', '?')} takes videos.")
        context = OpenContext(
            transform=getattr(model, "transform", None),
            class_names=tuple(str(c) for c in (getattr(model, "class_names", None) or [])),
            input_kind=getattr(model, "input_kind", "image"),
        )
    else:
        context = OpenContext(transform=transform)
    return spec.open(args, options, context)


# --------------------------------------------------------------------------- the built-in specs

_C = (
    "<corruption> = gaussian_noise, shot_noise, impulse_noise, defocus_blur, glass_blur, motion_blur, zoom_blur, "
    "snow, frost, fog, brightness, contrast, elastic_transform, pixelate, jpeg_compression, speckle_noise, "
    "gaussian_blur, spatter, saturate; <severity> = 1-5"
)
for _spec in (
    DataSpec(
        "cifar10",
        "cifar10:DIR[:train|test]",
        "CIFAR-10, the python pickle batches (default split: test)",
        "DIR = cifar-10-batches-py/ or its parent: data_batch_1 … data_batch_5, test_batch, batches.meta "
        "(pickled dicts: b'data' uint8 (N, 3072), b'labels')",
        "gradtrust.data.cifar:open_cifar10",
        1,
        2,
    ),
    DataSpec(
        "cifar100",
        "cifar100:DIR[:train|test]",
        "CIFAR-100 (fine labels), the python pickle files",
        "DIR = cifar-100-python/ or its parent: train, test, meta (pickled dicts: b'data' uint8 (N, 3072), "
        "b'fine_labels')",
        "gradtrust.data.cifar:open_cifar100",
        1,
        2,
    ),
    DataSpec(
        "cifar10c",
        "cifar10c:DIR:<corruption>:<severity>",
        "CIFAR-10-C, one corruption at one severity",
        f"DIR = CIFAR-10-C/ or its parent: <corruption>.npy (uint8 (50000, 32, 32, 3), severities 1-5 stacked "
        f"by 10,000) and labels.npy; {_C}",
        "gradtrust.data.cifar:open_cifar10c",
        3,
        3,
    ),
    DataSpec(
        "cifar100c",
        "cifar100c:DIR:<corruption>:<severity>",
        "CIFAR-100-C, one corruption at one severity",
        f"DIR = CIFAR-100-C/ or its parent: <corruption>.npy (uint8 (50000, 32, 32, 3), severities 1-5 "
        f"stacked by 10,000) and labels.npy; {_C}",
        "gradtrust.data.cifar:open_cifar100c",
        3,
        3,
    ),
    DataSpec(
        "imagenet-c",
        "imagenet-c:DIR:<corruption>:<severity>",
        "ImageNet-C, one corruption at one severity",
        f"DIR/<corruption>/<severity>/<wnid>/<image>.JPEG (1000 WordNet-ID folders); {_C}",
        "gradtrust.data.variants:open_imagenet_c",
        3,
        3,
    ),
    DataSpec(
        "imagenet-a",
        "imagenet-a:DIR",
        "ImageNet-A: 200 classes, scored on the subset's logits",
        "DIR/<wnid>/<image>.jpg (200 WordNet-ID folders, e.g. n01498041/)",
        "gradtrust.data.variants:open_imagenet_a",
    ),
    DataSpec(
        "imagenet-r",
        "imagenet-r:DIR",
        "ImageNet-R: 200 classes, scored on the subset's logits",
        "DIR/<wnid>/<image>.jpg (200 WordNet-ID folders, e.g. n01443537/)",
        "gradtrust.data.variants:open_imagenet_r",
    ),
    DataSpec(
        "imagenet-o",
        "imagenet-o:DIR",
        "ImageNet-O: out-of-distribution (label -1), on ImageNet-A's 200 logits",
        "DIR/<wnid>/<image>.jpg (200 WordNet-ID folders)",
        "gradtrust.data.variants:open_imagenet_o",
    ),
    DataSpec(
        "svhn",
        "svhn:FILE.mat",
        "SVHN cropped digits (label 10 read as digit 0)",
        "FILE.mat = test_32x32.mat, train_32x32.mat or extra_32x32.mat (MATLAB v5: X uint8 (32, 32, 3, N), y (N, 1))",
        "gradtrust.data.svhn:open_svhn",
    ),
    DataSpec(
        "mnist",
        "mnist:DIR[:train|test][:rgb=1]",
        "MNIST (or Fashion-MNIST) IDX files, gzipped or not",
        "DIR (or DIR/MNIST/raw/): train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
        "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]; 28x28 grey (rgb=1: RGB)",
        "gradtrust.data.mnist:open_mnist",
        1,
        2,
        ("rgb",),
    ),
    DataSpec(
        "textures",
        "textures:DIR",
        "Describable Textures (DTD) as an out-of-distribution set (label -1)",
        "DIR/images/<class>/<image>.jpg (DIR = dtd/ or its parent)",
        "gradtrust.data.variants:open_textures",
    ),
    DataSpec(
        "ood",
        "ood:DIR",
        "Any folder of images as an out-of-distribution set (label -1): Places365, LSUN, iSUN, TinyImageNet crops",
        "every image file under DIR, any depth, sorted by path",
        "gradtrust.data.variants:open_ood",
    ),
    DataSpec(
        "hf-datasets",
        "hf-datasets:DIR[:split][:image=COL][:label=COL]",
        "A Hugging Face datasets folder (save_to_disk), read with pyarrow",
        "DIR/{data-00000-of-00001.arrow, dataset_info.json, state.json}, or DIR/dataset_dict.json + "
        "DIR/<split>/…; an Image column ({bytes, path}) and a ClassLabel column",
        "gradtrust.data.arrow:open_hf_datasets",
        1,
        2,
        ("image", "label"),
    ),
    DataSpec(
        "wds",
        "wds:PATTERN[:image=EXT][:label=cls|json][:label_key=KEY]",
        "WebDataset tar shards; torchrun ranks take whole shards",
        "PATTERN = DIR/name-{000000..000063}.tar (braces expand); in each shard <key>.jpg (or png, webp…) + "
        "<key>.cls (the model's class index as text)",
        "gradtrust.data.webdataset:open_wds",
        1,
        2,
        ("image", "label", "label_key"),
    ),
):
    register_data_spec(_spec)
