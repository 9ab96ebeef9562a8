"""The built-in digits data: scikit-learn's ``load_digits`` (ships with sklearn, nothing to download).

1,797 grey 8x8 images of hand-written digits, pixel values 0..16, ten classes. GradTrust splits them once
and for all into a train half (the bundled ``digits_*`` networks are trained on it) and a test half (what
the trust scores are evaluated on), and offers deterministic corruptions of either half so that the bundled
networks make enough mistakes for the scores to rank.

The split (``SPLIT_VERSION = 1``) must never change, since the shipped weights depend on it:

* for each class ``c = 0, 1, …, 9`` in turn, the row numbers of ``load_digits()`` with label ``c`` (in
  ascending order) are permuted by ONE ``numpy.random.RandomState(0)``, consumed class after class
  (``RandomState`` is NumPy's frozen, version-stable stream);
* the first ``ceil(n_c / 2)`` permuted rows of class ``c`` go to the test split, the rest to train;
* within each split the rows are sorted ascending; dataset position ``i`` of a split is its ``i``-th row.

This gives 901 test and 896 train images, every class split in half (stratified, odd counts round
up towards test).

Corruptions (``CORRUPTIONS``), applied to the ``[0, 1]``-scaled image, at severities ``SEVERITIES``:

* ``gaussian_noise``: add ``sigma * N(0, 1)`` noise, clip to ``[0, 1]``. The noise of the sample at
  position ``index`` comes from ``RandomState([seed, 1, index])``, so a sample's pixels depend only on
  ``(seed, index, severity)``, never on which other samples are read or in which order; the same noise
  pattern is scaled by each severity's ``sigma``.
* ``blur``: a Gaussian blur (zero padding outside the image) of standard deviation ``sigma`` pixels.
* ``contrast``: pull every pixel towards the image's mean, ``m + c * (x - m)``.

Test accuracy of the bundled networks (``gradtrust/models/weights/digits_accuracy.json``), clean and at
the default severity 1 (``digits_tiny`` is a deliberately fragile 3-unit bottleneck):

==============  =====  ==============  =====  ========
network         clean  gaussian_noise  blur   contrast
==============  =====  ==============  =====  ========
digits_tiny     0.769  0.269           0.301  0.101
digits_linear   0.911  0.780           0.859  0.810
digits_mlp      0.958  0.804           0.890  0.929
digits_cnn      0.981  0.704           0.698  0.600
==============  =====  ==============  =====  ========
"""

from __future__ import annotations

import functools
import math
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import Dataset

from gradtrust.data.samples import Sample
from gradtrust.errors import DataError

__all__ = [
    "CORRUPTIONS",
    "DIGITS_CLASSES",
    "SEVERITIES",
    "SPLITS",
    "SPLIT_VERSION",
    "DigitsDataset",
    "apply_corruption",
    "digits_arrays",
    "digits_image",
    "digits_split_indices",
]

DIGITS_CLASSES: list[str] = [str(d) for d in range(10)]
SPLITS: tuple[str, ...] = ("train", "test")
SPLIT_VERSION = 1
SPLIT_SEED = 0
CORRUPTIONS: tuple[str, ...] = ("gaussian_noise", "blur", "contrast")
SEVERITIES: tuple[int, ...] = (1, 2, 3)

# Per corruption, its parameter at severity 1, 2, 3 (tuned on the bundled networks, see module docstring).
_GAUSSIAN_NOISE_SIGMA = (0.35, 0.5, 0.7)
_BLUR_SIGMA = (0.8, 1.0, 1.3)
_CONTRAST_FACTOR = (0.4, 0.3, 0.2)
# Stream numbers so that two corruptions never share a noise stream (only gaussian_noise draws noise).
_STREAM = {"gaussian_noise": 1}


@functools.lru_cache(maxsize=1)
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All of ``load_digits()``: read-only ``images`` (1797, 8, 8) float64 in 0..16 and ``labels`` (1797,)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64)  # (1797, 8, 8), values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


@functools.lru_cache(maxsize=1)
def _split_indices() -> dict[str, np.ndarray]:
    _, labels = digits_arrays()
    rng = np.random.RandomState(SPLIT_SEED)
    test: list[np.ndarray] = []
    train: list[np.ndarray] = []
    for c in range(len(DIGITS_CLASSES)):
        rows = np.flatnonzero(labels == c)  # ascending
        perm = rows[rng.permutation(len(rows))]
        n_test = math.ceil(len(rows) / 2)
        test.append(perm[:n_test])
        train.append(perm[n_test:])
    out = {"train": np.sort(np.concatenate(train)), "test": np.sort(np.concatenate(test))}
    for a in out.values():
        a.setflags(write=False)
    return out


def digits_split_indices(split: str) -> np.ndarray:
    """The ``load_digits()`` row numbers of a split, ascending (read-only int64 array)."""
    _check_split(split)
    return _split_indices()[split]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown digits split {split!r}; valid splits: {', '.join(SPLITS)}")


def _check_corruption(corruption: str | None) -> str | None:
    if corruption is None or corruption == "clean":
        return None
    if corruption not in CORRUPTIONS:
        raise DataError(
            f"unknown digits corruption {corruption!r}; valid corruptions: {', '.join(CORRUPTIONS)} "
            "(or None / 'clean' for the clean images)"
        )
    return corruption


def _check_severity(severity: Any) -> int:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or int(severity) not in SEVERITIES:
        raise DataError(
            f"unknown corruption severity {severity!r}; valid severities: {', '.join(map(str, SEVERITIES))}"
        )
    return int(severity)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**32:
        raise DataError(f"corruption seed must be an integer in [0, 2**32), got {seed!r}")
    return int(seed)


def _gaussian_kernel_matrix(sigma: float, size: int = 8) -> np.ndarray:
    """``B`` with ``(B @ X @ B.T)`` = Gaussian blur of ``X`` with zero padding outside the image."""
    radius = max(1, int(math.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    offset = np.arange(size)[None, :] - np.arange(size)[:, None]  # b[i, j] = taps[j − i] inside the window
    return np.where(np.abs(offset) <= radius, taps[np.clip(offset + radius, 0, 2 * radius)], 0.0)


def apply_corruption(image: np.ndarray, corruption: str | None, severity: int = 1, seed: int = 0,
                     index: int = 0) -> np.ndarray:
    """Corrupt one ``[0, 1]``-scaled 8x8 float64 image; a pure function of its arguments.

    ``index`` is the sample's dataset position: it selects the noise stream (``gaussian_noise`` only).
    """
    corruption = _check_corruption(corruption)
    x = np.asarray(image, dtype=np.float64).reshape(8, 8)
    if corruption is None:
        return x.copy()
    severity = _check_severity(severity)
    seed = _check_seed(seed)
    level = severity - 1
    if corruption == "gaussian_noise":
        rng = np.random.RandomState([seed, _STREAM[corruption], int(index)])
        noise = rng.standard_normal((8, 8))
        return np.clip(x + _GAUSSIAN_NOISE_SIGMA[level] * noise, 0.0, 1.0)
    if corruption == "blur":
        b = _gaussian_kernel_matrix(_BLUR_SIGMA[level])
        # einsum without BLAS: the same summation order everywhere.
        return np.clip(np.einsum("ij,jk,lk->il", b, x, b, optimize=False), 0.0, 1.0)
    if corruption == "contrast":
        m = x.mean()
        return np.clip(m + _CONTRAST_FACTOR[level] * (x - m), 0.0, 1.0)
    raise AssertionError(corruption)  # pragma: no cover


class DigitsDataset(Dataset):
    """One split of the built-in digits, optionally corrupted; yields :class:`~gradtrust.data.Sample`.

    ``input`` is a float32 tensor (1, 8, 8) in ``[0, 1]`` (pixel / 16, then the corruption), ``label`` the
    digit, ``index`` the position in the split, ``path`` ``digits/<split>/<corruption or clean>/<index:04d>``.
    """

    classes: list[str] = DIGITS_CLASSES

    def __init__(self, split: str = "test", corruption: str | None = None, severity: int = 1, seed: int = 0):
        _check_split(split)
        self.split = split
        self.corruption = _check_corruption(corruption)
        self.severity = _check_severity(severity)
        self.seed = _check_seed(seed)
        self.classes = list(DIGITS_CLASSES)
        self.source_indices = digits_split_indices(split)  # load_digits() row of each position
        images, labels = digits_arrays()
        self._images = images[self.source_indices] / 16.0
        self._labels = labels[self.source_indices]
        self._tag = self.corruption or "clean"

    @property
    def spec(self) -> dict[str, Any]:
        """What identifies this dataset (for a manifest)."""
        return {
            "dataset": "digits",
            "split": self.split,
            "split_version": SPLIT_VERSION,
            "corruption": self.corruption,
            "severity": self.severity if self.corruption else None,
            "seed": self.seed if self.corruption else None,
            "samples": len(self),
        }

    @property
    def labels(self) -> np.ndarray:
        """The labels of every position (int64 array, a copy)."""
        return self._labels.copy()

    def __len__(self) -> int:
        return len(self.source_indices)

    def __getitem__(self, index: int) -> Sample:
        i = int(index)
        if not 0 <= i < len(self):
            raise IndexError(f"digits {self.split} index {index} out of range [0, {len(self)})")
        x = apply_corruption(self._images[i], self.corruption, self.severity, self.seed, i)
        tensor = torch.from_numpy(x.astype(np.float32)).reshape(1, 8, 8)
        return Sample(
            input=tensor,
            label=int(self._labels[i]),
            index=i,
            path=f"digits/{self.split}/{self._tag}/{i:04d}",
            error="",
        )

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split at once: inputs (N, 1, 8, 8) float32 and labels (N,) int64."""
        # Bundled digits are never unreadable: every Sample here carries a tensor.
        inputs = torch.stack([cast(torch.Tensor, self[i].input) for i in range(len(self))])
        return inputs, torch.from_numpy(self._labels.astype(np.int64))

    def __repr__(self) -> str:
        extra = f", corruption={self.corruption!r}, severity={self.severity}, seed={self.seed}" if self.corruption else ""
        return f"DigitsDataset(split={self.split!r}{extra}, samples={len(self)})"


def digits_image(sample_input: torch.Tensor | np.ndarray) -> np.ndarray:
    """A digits input (1, 8, 8) or (8, 8) in ``[0, 1]`` as an 8x8 ``uint8`` grey image (0 = black, 255 = white).

    sklearn's digits are white-on-black in this encoding (ink = high values); draw with ``cmap="gray_r"``
    for dark ink on white paper.
    """
    arr = (sample_input.detach().to("cpu", torch.float64).numpy() if isinstance(sample_input, torch.Tensor)
           else np.asarray(sample_input, dtype=np.float64))
    if arr.size != 64:
        raise DataError(f"a digits input has 64 pixels (shape (1, 8, 8) or (8, 8)), got shape {arr.shape}")
    return np.rint(np.clip(arr.reshape(8, 8), 0.0, 1.0) * 255.0).astype(np.uint8)
