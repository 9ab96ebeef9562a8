"""Datasets whose images are encoded files held inside bigger files (Arrow tables, tar shards): one base class.

A subclass lists its samples at construction (labels in memory, images left where they are) and implements
:meth:`EncodedImageDataset.encoded` (sample ``i`` → the image file's bytes) and :meth:`EncodedImageDataset.path`
(``<file>#<key>``). Decoding follows :func:`gradtrust.data.images.read_rgb_image`; an unreadable image becomes a
:class:`~gradtrust.data.Sample` with ``input=None`` and the reason, as for a folder of files.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from gradtrust.data.arrays import image_to_tensor
from gradtrust.data.images import ALPHA_MODES, decode_rgb_image
from gradtrust.data.samples import Sample
from gradtrust.errors import DataError

__all__ = ["EncodedImageDataset"]


class EncodedImageDataset(Dataset):
    """Base: ``labels`` (−1 = unknown), ``classes``, the ``files`` holding the images, ``settings`` that select
    them; subclasses implement :meth:`encoded` and :meth:`path`."""

    def __init__(
        self,
        labels: Any,
        classes: Sequence[str],
        *,
        kind: str,
        root: str,
        files: Sequence[str],
        settings: dict[str, Any],
        transform: Any = None,
        alpha: str = "white",
    ) -> None:
        if alpha not in ALPHA_MODES:
            raise DataError(f"alpha must be one of {ALPHA_MODES}, got {alpha!r}")
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.classes = [str(c) for c in classes]
        bad = self.labels[(self.labels < -1) | (self.labels >= max(len(self.classes), 0))]
        if bad.size and self.classes:
            raise DataError(
                f"{kind}: labels must be in 0..{len(self.classes) - 1} (or −1), found {int(bad[0])} in {root}"
            )
        self.kind, self.root, self.files = kind, root, [os.path.abspath(f) for f in files]
        self.settings, self.transform, self.alpha = dict(settings), transform, alpha

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def targets(self) -> np.ndarray:
        return self.labels

    def encoded(self, index: int) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def path(self, index: int) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        n = len(self)
        i = int(index) + (n if int(index) < 0 else 0)
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        label, path = int(self.labels[i]), self.path(i)
        try:
            image = decode_rgb_image(self.encoded(i), self.alpha)
        except DataError as exc:
            return Sample(input=None, label=label, index=i, path=path, error=str(exc))
        except OSError as exc:
            return Sample(input=None, label=label, index=i, path=path, error=f"cannot read file: {exc}")
        value = self.transform(image) if self.transform is not None else image_to_tensor(image)
        return Sample(input=value, label=label, index=i, path=path)

    def source_files(self) -> list[str]:
        """The files holding the images (the run engine hashes their content for the run identity)."""
        return list(self.files)

    def describe(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        digest.update(repr((self.kind, sorted(self.settings.items()))).encode())
        for f in self.files:
            size = os.path.getsize(f) if os.path.exists(f) else -1
            digest.update(f"{os.path.relpath(f, self.root)}\t{size}\n".encode())
        digest.update(self.labels.tobytes())
        return {
            "kind": self.kind,
            "root": self.root,
            "files": [os.path.relpath(f, self.root) for f in self.files],
            **self.settings,
            "fingerprint": digest.hexdigest(),
            "alpha": self.alpha,
            "transform": " ".join(repr(self.transform).split()),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={self.root!r}, samples={len(self)}, settings={self.settings})"
