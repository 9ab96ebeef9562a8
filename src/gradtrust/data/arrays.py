"""Image sets shipped as arrays (CIFAR pickles, CIFAR-C ``.npy``, SVHN ``.mat``, MNIST IDX): one dataset class.

:class:`ArrayImageDataset` holds ``uint8`` images ``(N, H, W, 3)`` (RGB) or ``(N, H, W)`` (grey) — possibly a
read-only memory map — and their labels. Each item becomes a PIL image (``RGB`` or ``L``) and goes through the
transform, as an image file would; without one it is a float ``[0, 1]`` tensor ``(C, H, W)``. A sample's
``path`` is ``<file>#<row>``. Its identity (:meth:`describe`, :meth:`source_files`) is the files it was read
from (content-hashed by the run engine) and which rows of them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from gradtrust.data.samples import Sample
from gradtrust.errors import DataError

__all__ = ["ArrayImageDataset", "find_folder", "image_to_tensor", "missing_files_error"]


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image (``RGB`` or ``L``) → float ``(C, H, W)`` in ``[0, 1]``; NumPy, not torchvision (whose import
    costs seconds, once per DataLoader worker)."""
    array = np.array(image, dtype=np.uint8)  # a writable copy
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array)).float().div_(255.0)


def missing_files_error(what: str, where: str, expected: Sequence[str], layout: str) -> DataError:
    """The one message for a data set whose files are missing: what, where looked, which files, the layout."""
    return DataError(f"{what}: {where} does not hold {', '.join(expected)}. Expected layout: {layout}")


def find_folder(root: str, subfolders: Sequence[str], required: Sequence[str]) -> str | None:
    """``root`` itself or ``root/<sub>`` (first that holds every ``required`` entry; a required name may end in
    ``|alt`` alternatives), else ``None``."""
    for candidate in [root, *(os.path.join(root, s) for s in subfolders)]:
        if all(any(os.path.exists(os.path.join(candidate, r)) for r in req.split("|")) for req in required):
            return candidate
    return None


class ArrayImageDataset(Dataset):
    """Images from arrays: ``images[i]`` (``uint8``, ``(H, W, 3)`` or ``(H, W)``) with ``labels[i]`` (−1 = unknown).

    Args:
        images: ``(N, H, W, 3)`` or ``(N, H, W)`` ``uint8`` (a memory map stays one).
        labels: ``(N,)`` integers, class indices into ``classes`` or −1.
        classes: class names in label order.
        transform: applied to the PIL image (``RGB``, or ``L`` for grey images); default float ``[0, 1]``.
        kind: the spec name (``cifar10``…); ``root``: where the files are; ``files``: the files read (their
            content is the run identity); ``settings``: what selects the rows (split, corruption, severity…);
        row_files: for each sample, which of ``files`` it came from and its row there (for ``path``);
            default: every sample from ``files[0]``, row = position.
        rgb: convert grey images to RGB before the transform.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: Any,
        classes: Sequence[str],
        *,
        kind: str,
        root: str,
        files: Sequence[str],
        settings: dict[str, Any] | None = None,
        transform: Callable[[Image.Image], Any] | None = None,
        row_files: tuple[np.ndarray, np.ndarray] | None = None,
        rgb: bool = False,
    ) -> None:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] != 3):
            raise DataError(
                f"{kind}: images must be uint8 (N, H, W, 3) or (N, H, W); got {images.dtype} "
                f"{tuple(images.shape)} in {root}"
            )
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"{kind}: {images.shape[0]} images but {labels.shape[0]} labels in {root}")
        bad = labels[(labels < -1) | (labels >= len(classes))]
        if bad.size:
            raise DataError(f"{kind}: labels must be in 0..{len(classes) - 1} (or −1), found {int(bad[0])} in {root}")
        self.images, self.labels = images, labels
        self.classes = [str(c) for c in classes]
        self.kind, self.root, self.files = kind, root, [os.path.abspath(f) for f in files]
        self.settings = dict(settings or {})
        self.transform, self.rgb = transform, rgb
        n = labels.shape[0]
        self.row_files = row_files or (np.zeros(n, np.int32), np.arange(n, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def targets(self) -> np.ndarray:
        return self.labels

    def path(self, index: int) -> str:
        """``<file>#<row>``: where sample ``index`` is stored."""
        file, row = self.row_files
        return f"{self.files[int(file[index])]}#{int(row[index])}"

    def image(self, index: int) -> Image.Image:
        """Sample ``index`` as a PIL image (``RGB``, or ``L`` for grey data unless ``rgb``)."""
        pixels = np.ascontiguousarray(self.images[index])
        image = Image.fromarray(pixels)  # (H, W, 3) uint8 → RGB, (H, W) → L
        return image.convert("RGB") if self.rgb and image.mode != "RGB" else image

    def __getitem__(self, index: int) -> Sample:
        n = len(self)
        i = int(index) + (n if int(index) < 0 else 0)
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        if self.transform is not None:
            value = self.transform(self.image(i))
        else:  # straight from the array: what image_to_tensor(self.image(i)) gives, without PIL
            array = np.array(self.images[i], dtype=np.uint8)
            if array.ndim == 2 and self.rgb:
                array = np.repeat(array[..., None], 3, axis=2)
            array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
            value = torch.from_numpy(np.ascontiguousarray(array)).float().div_(255.0)
        return Sample(input=value, label=int(self.labels[i]), index=i, path=self.path(i))

    def source_files(self) -> list[str]:
        """The files this data set was read from (the run engine hashes their content for the run identity)."""
        return list(self.files)

    def describe(self) -> dict[str, Any]:
        """Kind, root, the settings that select the rows, and a fingerprint of the labels, shape and files' names
        and sizes (the content hash comes from :meth:`source_files`)."""
        digest = hashlib.sha256()
        digest.update(repr((self.kind, sorted(self.settings.items()), tuple(self.images.shape), self.rgb)).encode())
        for f in self.files:
            size = os.path.getsize(f) if os.path.exists(f) else -1
            digest.update(f"{os.path.basename(f)}\t{size}\n".encode())
        digest.update(self.labels.tobytes())
        # The files are not listed: the settings name them (a corruption is a file of CIFAR-C), and a report
        # groups the conditions of one data set by what is left once the condition is set aside.
        return {
            "kind": self.kind,
            "root": self.root,
            **self.settings,
            "image_shape": list(self.images.shape[1:]),
            "fingerprint": digest.hexdigest(),
            "transform": " ".join(repr(self.transform).split()),
        }

    def __repr__(self) -> str:
        return f"ArrayImageDataset({self.kind!r}, root={self.root!r}, samples={len(self)}, settings={self.settings})"
