"""SVHN, the cropped-digits ``.mat`` files (Netzer et al. 2011, http://ufldl.stanford.edu/housenumbers/).

``train_32x32.mat``, ``test_32x32.mat`` and ``extra_32x32.mat`` are MATLAB v5 files with ``X`` (``uint8``
``(32, 32, 3, N)``) and ``y`` (``(N, 1)``, the digit, with **10 for the digit 0**). They are read with
``scipy.io.loadmat``; label 10 becomes 0, so class ``i`` is the digit ``i``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from gradtrust.data.arrays import ArrayImageDataset, missing_files_error
from gradtrust.errors import DataError

__all__ = ["SVHN_CLASSES", "SVHNDataset"]

SVHN_CLASSES = tuple(str(d) for d in range(10))
_LAYOUT = (
    "FILE.mat = train_32x32.mat, test_32x32.mat or extra_32x32.mat (X: uint8 (32, 32, 3, N); y: (N, 1), 10 = digit 0)"
)


class SVHNDataset(ArrayImageDataset):
    """One SVHN cropped-digits ``.mat`` file (see the module docstring); ``transform`` gets 32×32 RGB PIL images."""

    def __init__(self, file: str | os.PathLike, transform: Any = None) -> None:
        path = os.path.abspath(os.fspath(file))
        if os.path.isdir(path):
            found = sorted(f for f in os.listdir(path) if f.endswith(".mat"))
            raise DataError(
                f"svhn: takes the .mat file, not the folder {path} (it holds "
                f"{', '.join(found) or 'no .mat file'}); e.g. svhn:{os.path.join(path, 'test_32x32.mat')}"
            )
        if not os.path.isfile(path):
            raise missing_files_error("svhn", os.path.dirname(path), [os.path.basename(path)], _LAYOUT)
        from scipy.io import loadmat
        from scipy.io.matlab import MatReadError

        try:
            mat = loadmat(path, variable_names=["X", "y"])
        except NotImplementedError:
            raise DataError(
                f"svhn: {path} is a MATLAB v7.3 (HDF5) file; the SVHN release is MATLAB v5 "
                "(scipy.io.loadmat). Expected " + _LAYOUT
            ) from None
        except (MatReadError, ValueError, OSError, TypeError) as exc:
            raise DataError(f"svhn: {path} is not a MATLAB .mat file: {exc}. Expected {_LAYOUT}") from None
        x, y = mat.get("X"), mat.get("y")
        if x is None or y is None or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.size != x.shape[3]:
            raise DataError(
                f"svhn: {path} must hold X (32, 32, 3, N) and y (N, 1); found X "
                f"{None if x is None else x.shape}, y {None if y is None else y.shape}. Expected {_LAYOUT}"
            )
        labels = np.asarray(y, dtype=np.int64).reshape(-1)
        if ((labels < 0) | (labels > 10)).any():
            raise DataError(f"svhn: {path}: y must hold digits 1-10 (10 = digit 0), found {int(labels.max())}")
        labels[labels == 10] = 0
        images = np.ascontiguousarray(np.asarray(x, dtype=np.uint8).transpose(3, 0, 1, 2))
        super().__init__(
            images,
            labels,
            SVHN_CLASSES,
            kind="svhn",
            root=os.path.dirname(path),
            files=[path],
            settings={"file": os.path.basename(path)},
            transform=transform,
        )


def open_svhn(args: list[str], options: dict[str, str], context: Any) -> SVHNDataset:
    """The ``DataSpec.opener`` of this spec (:mod:`gradtrust.data.specs`): its fields, options and context → a dataset."""
    return SVHNDataset(args[0], context.transform)
