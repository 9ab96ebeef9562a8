"""Labelled image sets for the GradCON command: a class-folder dataset or the built-in digits, read whole.

GradCON needs pixels in ``[0, 1]`` with no normalisation, so folders are read with their own transform
(``pil_to_tensor / 255``, RGB, or grey with ``grayscale=True``) rather than a classifier's preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from gradtrust.errors import DataError, UnknownNameError
from gradtrust.gradcon.inputs import collect_images

__all__ = ["LabelledImages", "load_labelled", "resolve_class"]


class _FolderTransform:
    """PIL image → float ``(C, H, W)`` in ``[0, 1]`` (grey when ``grayscale``). A class, so workers can pickle it."""

    def __init__(self, grayscale: bool) -> None:
        self.grayscale = grayscale

    def __call__(self, image: Any) -> torch.Tensor:
        # NumPy rather than torchvision's pil_to_tensor: importing torchvision costs seconds.
        if self.grayscale:
            image = image.convert("L")
        array = np.array(image, dtype=np.uint8)  # a writable copy
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(array)).float().div_(255.0)

    def __repr__(self) -> str:
        return f"gradcon_transform(grayscale={self.grayscale})"


@dataclass
class LabelledImages:
    """A whole dataset in memory: ``images`` ``(N, C, H, W)`` in ``[0, 1]``, ``labels``, dataset ``indices``,
    ``paths``, ``classes`` (names by label), ``failures`` (index, path, reason) and ``description`` (the
    dataset identity for a manifest)."""

    images: torch.Tensor
    labels: np.ndarray
    indices: np.ndarray
    paths: list[str]
    classes: list[str]
    failures: list[tuple[int, str, str]] = field(default_factory=list)
    description: dict[str, Any] = field(default_factory=dict)

    def of_class(self, label: int) -> torch.Tensor:
        """The images of one class; :class:`DataError` when it has none."""
        mask = self.labels == int(label)
        if not mask.any():
            counts = {self.classes[c]: int((self.labels == c).sum()) for c in np.unique(self.labels)}
            listing = ", ".join(f"{k!r}: {v}" for k, v in counts.items())
            raise DataError(f"the inlier class {self.classes[int(label)]!r} has no images in "
                            f"{self.description.get('root', self.description.get('kind', 'the data'))}; images per "
                            f"class: {listing}. Pick a class that has images (--inlier)")
        return self.images[torch.from_numpy(mask)]


def _as_is(sample: Any) -> Any:
    return sample


def resolve_class(inlier: str | int, classes: list[str]) -> int:
    """The label of a class given by name (a folder name, ``"3"`` for the digits) or by index."""
    text = str(inlier)
    if text in classes:
        return classes.index(text)
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(classes):
        return int(text)
    shown = ", ".join(classes[:20]) + (", …" if len(classes) > 20 else "")
    raise UnknownNameError(f"unknown inlier class {text!r}: the data has classes {shown} "
                           f"(give a name or an index 0..{len(classes) - 1})")


def load_labelled(data: str, *, grayscale: bool = False, workers: int = 0, progress: bool = False) -> LabelledImages:
    """Read every image of ``data`` (a class-folder dataset, or ``digits[:split[:corruption[:severity]]]``).

    Unreadable files are set aside in ``failures``; images of different sizes raise :class:`InputError`.
    """
    from torch.utils.data import DataLoader

    from gradtrust.data.open import open_dataset

    reader = SimpleNamespace(input_kind="tensor", transform=_FolderTransform(grayscale), spec="gradcon")
    dataset = open_dataset(data, reader)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=_as_is)
    kept: list[Any] = []
    failures: list[tuple[int, str, str]] = []
    iterator: Any = loader
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(loader, total=len(dataset), desc="reading images", leave=False)
    for sample in iterator:
        if sample.input is None or sample.error:
            failures.append((int(sample.index), str(sample.path), sample.error or "unreadable"))
        else:
            kept.append(sample)
    if not kept:
        raise DataError(f"no readable image in {data} ({len(failures)} unreadable)")
    return LabelledImages(images=collect_images([s.input for s in kept], f"the images of {data}"),
                          labels=np.asarray([int(s.label) for s in kept], dtype=np.int64),
                          indices=np.asarray([int(s.index) for s in kept], dtype=np.int64),
                          paths=[str(s.path) for s in kept], classes=[str(c) for c in dataset.classes],
                          failures=failures, description=dataset.describe())
