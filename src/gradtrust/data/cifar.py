"""CIFAR-10/100 (the python pickle batches) and CIFAR-10-C/100-C (the ``.npy`` release of Hendrycks & Dietterich).

CIFAR (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html): ``cifar-10-batches-py/`` holds
``data_batch_1`` … ``data_batch_5``, ``test_batch`` and ``batches.meta``; ``cifar-100-python/`` holds ``train``,
``test`` and ``meta``. Each is a Python 2 pickle of a dict with ``bytes`` keys: ``b"data"`` (``uint8`` array
``(N, 3072)``, the 1024 red, then green, then blue values of a 32×32 image, row-major), ``b"labels"``
(CIFAR-10) or ``b"fine_labels"`` (CIFAR-100, used here). They are read with ``encoding="bytes"`` by an
unpickler that admits only NumPy's array reconstruction: a file that names any other global (code) is refused.

CIFAR-10-C / CIFAR-100-C (Hendrycks & Dietterich, ICLR 2019, https://zenodo.org/records/2535967):
``<corruption>.npy`` (``uint8`` ``(50000, 32, 32, 3)``: the 10,000 test images at severity 1, then 2, … 5)
and ``labels.npy``, read as memory maps with ``allow_pickle=False``.
"""

from __future__ import annotations

import functools
import os
import pickle
from typing import Any

import numpy as np

from gradtrust.data.arrays import ArrayImageDataset, find_folder, missing_files_error
from gradtrust.errors import DataError

__all__ = [
    "CIFAR100_CLASSES",
    "CIFAR10_CLASSES",
    "COMMON_CORRUPTIONS",
    "CIFARDataset",
    "CorruptedCIFARDataset",
    "read_cifar_pickle",
]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = (
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
)
"""CIFAR-100's fine label names in label order (the release's ``meta`` file: alphabetical)."""

COMMON_CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
    "speckle_noise",
    "gaussian_blur",
    "spatter",
    "saturate",
)
"""The 15 corruptions of Hendrycks & Dietterich (2019) and the 4 extra ones: the names of the CIFAR-10-C,
CIFAR-100-C and ImageNet-C releases."""
SEVERITY_LEVELS = (1, 2, 3, 4, 5)

_LAYOUTS: dict[str, dict[str, Any]] = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "names": b"label_names",
        "labels": b"labels",
        "classes": CIFAR10_CLASSES,
        "c_folder": "CIFAR-10-C",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "names": b"fine_label_names",
        "labels": b"fine_labels",
        "classes": CIFAR100_CLASSES,
        "c_folder": "CIFAR-100-C",
    },
}


@functools.lru_cache(maxsize=1)
def _allowed_globals() -> dict[tuple[str, str], Any]:
    # The callables NumPy's own pickles name, taken from NumPy's reduce (no private import; numpy 1 and 2).
    reconstruct = np.empty(0).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays only: any other global in the file is refused."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_globals().get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"the file names {module}.{name}; only NumPy arrays are allowed")
        return allowed


def read_cifar_pickle(path: str) -> dict:
    """One CIFAR batch/meta file → its dict (``bytes`` keys), with the restricted unpickler (``encoding="bytes"``).

    Raises :class:`DataError` when the file is missing, is not such a pickle, or names anything but NumPy arrays.
    """
    try:
        with open(path, "rb") as f:
            value = _ArrayUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(f"{path} is not a CIFAR python pickle: {exc}") from None
    if not isinstance(value, dict):
        raise DataError(f"{path} is not a CIFAR python pickle: holds a {type(value).__name__}, not a dict")
    return {(k.encode() if isinstance(k, str) else k): v for k, v in value.items()}


class CIFARDataset(ArrayImageDataset):
    """CIFAR-10 or CIFAR-100 (fine labels) from the python pickle batches (see the module docstring).

    Args:
        root: ``cifar-10-batches-py`` / ``cifar-100-python``, or the folder that holds it.
        split: ``"test"`` (default) or ``"train"``.
        variant: ``"cifar10"`` or ``"cifar100"``.
        transform: applied to each 32×32 RGB PIL image (default: float ``[0, 1]`` tensors).
    """

    def __init__(
        self, root: str | os.PathLike, split: str = "test", variant: str = "cifar10", transform: Any = None
    ) -> None:
        if variant not in _LAYOUTS:
            raise DataError(f"variant must be one of {', '.join(_LAYOUTS)}, got {variant!r}")
        if split not in ("train", "test"):
            raise DataError(f"{variant}: split must be 'train' or 'test', got {split!r}")
        layout = _LAYOUTS[variant]
        given = os.path.abspath(os.fspath(root))
        names = layout[split]
        folder = find_folder(given, [layout["folder"]], names)
        expected = f"{given}/{layout['folder']}/{{{','.join(layout['train'] + layout['test'] + [layout['meta']])}}}"
        if folder is None:
            raise missing_files_error(
                variant,
                f"{given} (nor {layout['folder']}/ in it)",
                names,
                f"{expected}, the python version of the release",
            )
        images, labels = [], []
        for name in names:
            batch = read_cifar_pickle(os.path.join(folder, name))
            data, labs = batch.get(b"data"), batch.get(layout["labels"])
            if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                raise DataError(
                    f"{os.path.join(folder, name)}: b'data' must be a uint8 array (N, 3072); got "
                    f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}"
                )
            if labs is None or len(labs) != data.shape[0]:
                raise DataError(
                    f"{os.path.join(folder, name)}: {layout['labels']!r} must hold one label per row "
                    f"({data.shape[0]}); found {None if labs is None else len(labs)}"
                )
            images.append(data)
            labels.append(np.asarray(labs, dtype=np.int64))
        classes = list(layout["classes"])
        meta_path = os.path.join(folder, layout["meta"])
        if os.path.exists(meta_path):
            names_in_meta = read_cifar_pickle(meta_path).get(layout["names"])
            if names_in_meta:
                classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names_in_meta]
        counts = [len(x) for x in labels]
        row_files = (
            np.repeat(np.arange(len(names), dtype=np.int32), counts),
            np.concatenate([np.arange(c, dtype=np.int64) for c in counts]),
        )
        super().__init__(
            # planes → (N, 32, 32, 3) as a view: a copy in that order costs seconds for the 50,000 training images
            np.concatenate(images).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1),
            np.concatenate(labels),
            classes,
            kind=variant,
            root=folder,
            files=[os.path.join(folder, n) for n in names],
            settings={"split": split},
            transform=transform,
            row_files=row_files,
        )


class CorruptedCIFARDataset(ArrayImageDataset):
    """CIFAR-10-C / CIFAR-100-C: one corruption at one severity (see the module docstring).

    Args:
        root: ``CIFAR-10-C`` / ``CIFAR-100-C`` or the folder that holds it.
        corruption: one of :data:`COMMON_CORRUPTIONS`.
        severity: 1 … 5 (rows ``(severity − 1)·n`` … ``severity·n − 1`` of the array, ``n`` = a fifth of it).
        variant: ``"cifar10"`` or ``"cifar100"`` (class names).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        corruption: str,
        severity: int | str,
        variant: str = "cifar10",
        transform: Any = None,
    ) -> None:
        if variant not in _LAYOUTS:
            raise DataError(f"variant must be one of {', '.join(_LAYOUTS)}, got {variant!r}")
        kind = f"{variant}c"
        if corruption not in COMMON_CORRUPTIONS:
            raise DataError(f"{kind}: unknown corruption {corruption!r}; one of {', '.join(COMMON_CORRUPTIONS)}")
        level = _severity(kind, severity)
        given = os.path.abspath(os.fspath(root))
        c_folder = _LAYOUTS[variant]["c_folder"]
        file = f"{corruption}.npy"
        folder = find_folder(given, [c_folder], [file, "labels.npy"])
        if folder is None:
            raise missing_files_error(
                kind,
                f"{given} (nor {c_folder}/ in it)",
                [file, "labels.npy"],
                f"{given}/{c_folder}/<corruption>.npy (uint8 (50000, 32, 32, 3), severities 1-5 "
                "stacked by 10,000) and labels.npy",
            )
        images = _load_npy(os.path.join(folder, file), kind)
        labels = _load_npy(os.path.join(folder, "labels.npy"), kind)
        if labels.ndim != 1 or images.shape[0] != labels.shape[0] or images.shape[0] % len(SEVERITY_LEVELS):
            raise DataError(
                f"{kind}: {folder}/{file} holds {images.shape[0]} images and labels.npy "
                f"{labels.shape} labels; expected the same number, a multiple of 5 (severities 1-5 "
                "stacked)"
            )
        n = images.shape[0] // len(SEVERITY_LEVELS)
        rows = slice((level - 1) * n, level * n)
        super().__init__(
            images[rows],
            labels[rows],
            _LAYOUTS[variant]["classes"],
            kind=kind,
            root=folder,
            files=[os.path.join(folder, file), os.path.join(folder, "labels.npy")],
            settings={"corruption": corruption, "severity": level},
            transform=transform,
            row_files=(np.zeros(n, np.int32), np.arange(rows.start, rows.stop, dtype=np.int64)),
        )


def _severity(kind: str, severity: int | str) -> int:
    try:
        level = int(severity)
    except (TypeError, ValueError):
        level = -1
    if level not in SEVERITY_LEVELS:
        raise DataError(f"{kind}: severity must be 1, 2, 3, 4 or 5, got {severity!r}")
    return level


def _load_npy(path: str, kind: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{kind}: {path} is not a NumPy .npy array file: {exc}") from None


# Spec openers: each is a DataSpec.opener (gradtrust.data.specs), called as opener(args, options, context) with
# the spec's positional fields (their count checked by DataSpec.open), its key=value options and the
# OpenContext (transform, model); it returns the dataset.


def open_cifar(args: list[str], options: dict[str, str], context: Any, variant: str) -> CIFARDataset:
    return CIFARDataset(args[0], args[1] if len(args) > 1 else "test", variant, context.transform)


def open_cifar10(args: list[str], options: dict[str, str], context: Any) -> CIFARDataset:
    return open_cifar(args, options, context, "cifar10")


def open_cifar100(args: list[str], options: dict[str, str], context: Any) -> CIFARDataset:
    return open_cifar(args, options, context, "cifar100")


def open_cifar10c(args: list[str], options: dict[str, str], context: Any) -> CorruptedCIFARDataset:
    return CorruptedCIFARDataset(args[0], args[1], args[2], "cifar10", context.transform)


def open_cifar100c(args: list[str], options: dict[str, str], context: Any) -> CorruptedCIFARDataset:
    return CorruptedCIFARDataset(args[0], args[1], args[2], "cifar100", context.transform)
