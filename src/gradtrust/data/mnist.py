"""MNIST (and Fashion-MNIST, KMNIST: the same files) in the IDX format of LeCun et al. 1998, gzipped or not.

``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``,
``t10k-labels-idx1-ubyte[.gz]``: a big-endian header (magic ``0x00000803`` for images — ``uint8``, 3 dimensions
— and ``0x00000801`` for labels, then each dimension's size as a 32-bit integer) and the raw bytes. The folder
may be the one holding the files, or torchvision's ``MNIST/raw/`` under it. Images are 28×28 grey (PIL ``L``;
the default transform gives ``(1, 28, 28)``); ``rgb=True`` (spec option ``rgb=1``) makes them RGB.
"""

from __future__ import annotations

import gzip
import os
from typing import Any

import numpy as np

from gradtrust.data.arrays import ArrayImageDataset, find_folder, missing_files_error
from gradtrust.errors import DataError

__all__ = ["MNIST_CLASSES", "MNISTDataset", "read_idx"]

MNIST_CLASSES = tuple(str(d) for d in range(10))
_PREFIX = {"train": "train", "test": "t10k"}
_IMAGE_MAGIC, _LABEL_MAGIC = 0x803, 0x801


def read_idx(path: str, magic: int) -> np.ndarray:
    """An IDX ``uint8`` array (gzip detected by its first two bytes); :class:`DataError` for a bad header or size."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DataError(f"mnist: {path} is a damaged gzip file: {exc}") from None
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else -1
    if found != magic:
        raise DataError(
            f"mnist: {path} is not an IDX file of this kind: magic number {found:#010x}, expected {magic:#010x}"
        )
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(data[4 + 4 * d : 8 + 4 * d], "big") for d in range(ndim))
    start = 4 + 4 * ndim
    if len(data) - start != int(np.prod(shape)):
        raise DataError(f"mnist: {path} holds {len(data) - start} bytes of data, its header says {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=start).reshape(shape)


class MNISTDataset(ArrayImageDataset):
    """MNIST's IDX files (see the module docstring). ``split``: ``"test"`` (default) or ``"train"``."""

    def __init__(
        self, root: str | os.PathLike, split: str = "test", transform: Any = None, *, rgb: bool = False
    ) -> None:
        if split not in _PREFIX:
            raise DataError(f"mnist: split must be 'train' or 'test', got {split!r}")
        given = os.path.abspath(os.fspath(root))
        names = [f"{_PREFIX[split]}-images-idx3-ubyte", f"{_PREFIX[split]}-labels-idx1-ubyte"]
        folder = find_folder(given, ["MNIST/raw", "raw"], [f"{n}|{n}.gz" for n in names])
        if folder is None:
            raise missing_files_error(
                "mnist",
                f"{given} (nor MNIST/raw/ in it)",
                [f"{n}[.gz]" for n in names],
                f"{given}/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz]",
            )
        files = [
            os.path.join(folder, n) if os.path.exists(os.path.join(folder, n)) else os.path.join(folder, n + ".gz")
            for n in names
        ]
        images, labels = read_idx(files[0], _IMAGE_MAGIC), read_idx(files[1], _LABEL_MAGIC)
        super().__init__(
            images,
            labels,
            MNIST_CLASSES,
            kind="mnist",
            root=folder,
            files=files,
            settings={"split": split},
            transform=transform,
            rgb=rgb,
        )


def open_mnist(args: list[str], options: dict[str, str], context: Any) -> MNISTDataset:
    """The ``DataSpec.opener`` of this spec (:mod:`gradtrust.data.specs`): its fields, options and context → a dataset."""
    rgb = options.get("rgb", "0").lower() in ("1", "true", "yes")
    return MNISTDataset(args[0], args[1] if len(args) > 1 else "test", context.transform, rgb=rgb)
