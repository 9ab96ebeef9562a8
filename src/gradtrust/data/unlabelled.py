"""Images without labels: what production data looks like (``gradtrust score --data`` without ``--labels``).

:func:`unlabelled_paths` recognises four forms of ``--data``:

=====================================  ===========================================================
``IMG.png``                            one image file (any of :data:`~gradtrust.data.IMAGE_EXTENSIONS`)
``DIR`` (images, no sub-folders)       a flat folder: every image directly in it, sorted by name
``'DIR/**/*.jpg'`` (quoted)            a glob pattern (``**`` spans folders), matches sorted
``LIST.txt``                           a text file listing image paths, one per line (relative paths are
                                       relative to the list's folder; blank lines and ``#`` comments skipped)
=====================================  ===========================================================

Every sample has ``label = −1`` (unknown); a score run writes ``correct`` as null for it and computes no metric
that needs labels. The dataset's ``classes`` are the model's class names, so that the run's class map is the
identity. A ``digits:`` network reads an image file as the 8×8 grey image :func:`gradtrust.data.digits_image`
writes (ink = white), scaled to ``[0, 1]``: the inverse of that function.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from gradtrust.data.images import IMAGE_EXTENSIONS, ImageFileDataset, list_examples
from gradtrust.errors import DataError

__all__ = ["UnlabelledImageDataset", "digits_file_transform", "is_glob", "unlabelled_paths"]

_GLOB_CHARS = ("*", "?", "[")


def is_glob(text: str) -> bool:
    """Whether ``--data`` is a glob pattern (it holds ``*``, ``?`` or ``[`` and names no existing path)."""
    return any(ch in text for ch in _GLOB_CHARS) and not os.path.exists(text)


def _images(paths: Sequence[str]) -> list[str]:
    return [p for p in paths if p.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(p)]


def _read_list(path: str) -> list[str]:
    base = os.path.dirname(os.path.abspath(path))
    out = []
    with open(path, encoding="utf-8-sig") as handle:
        for line in handle:
            entry = line.strip()
            if entry and not entry.startswith("#"):
                out.append(os.path.normpath(os.path.join(base, os.path.expanduser(entry))))
    if not out:
        raise DataError(f"the list {path} names no file (one image path per line).")
    missing = [p for p in out if not os.path.isfile(p)]
    if missing:
        raise DataError(f"the list {path} names {len(missing)} file(s) that do not exist: {list_examples(missing)}.")
    return out


def unlabelled_paths(data: str) -> list[str] | None:
    """The image paths of an unlabelled ``--data`` form (module docstring), absolute and in a stable order, or
    ``None`` when ``data`` is none of them (a class-folder dataset, a built-in spec). A form whose files are not
    there raises :class:`DataError` saying what was found."""
    text = os.path.expanduser(str(data))
    if is_glob(text):
        matched = sorted(os.path.abspath(p) for p in glob.glob(text, recursive=True))
        images = _images(matched)
        if not images:
            others = f" (it matches {list_examples(matched)}, none an image file)" if matched else ""
            raise DataError(
                f"the pattern {data!r} matches no image file{others}; quote it so that the shell does "
                f"not expand it, e.g. --data 'photos/**/*.jpg'. Image endings: {', '.join(IMAGE_EXTENSIONS)}."
            )
        return images
    if os.path.isfile(text):
        path = os.path.abspath(text)
        if path.lower().endswith(".txt"):
            return _read_list(path)
        if path.lower().endswith(IMAGE_EXTENSIONS):
            return [path]
        return None
    if os.path.isdir(text):
        entries = sorted(e for e in os.listdir(text) if not e.startswith("."))
        if any(os.path.isdir(os.path.join(text, e)) for e in entries):
            return None  # class folders: the labelled layout
        images = _images([os.path.abspath(os.path.join(text, e)) for e in entries])
        return images or None
    return None


def digits_file_transform(image: Image.Image) -> torch.Tensor:
    """An image file as a ``digits:`` network's input: grey, 8×8 (resized when it is not), ``[0, 1]``, shape
    ``(1, 8, 8)`` — the inverse of :func:`gradtrust.data.digits_image` (``value / 255``)."""
    grey = image.convert("L")
    if grey.size != (8, 8):
        grey = grey.resize((8, 8), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(grey, dtype=np.float32) / 255.0).unsqueeze(0)


class UnlabelledImageDataset(ImageFileDataset):
    """Image files without labels (``label = −1`` for every sample), in the order given.

    Args:
        paths: image files (absolute or relative to the current folder).
        classes: the class names predictions refer to (the model's, in output order).
        transform: applied to the RGB PIL image; default float ``(3, H, W)`` in ``[0, 1]``.
        alpha: ``"white"`` (default) or ``"drop"``: how transparency is removed.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        classes: Sequence[str],
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        alpha: str = "white",
    ) -> None:
        absolute = [os.path.abspath(os.fspath(p)) for p in paths]
        if not absolute:
            raise DataError("no image to score: the unlabelled dataset is empty.")
        if not classes:
            raise DataError("an unlabelled dataset needs the model's class names (or its number of outputs).")
        root = os.path.commonpath([os.path.dirname(p) for p in absolute])
        rel = [os.path.relpath(p, root) for p in absolute]
        super().__init__(root, rel, [-1] * len(rel), list(classes), transform=transform, alpha=alpha)
        self.extensions = IMAGE_EXTENSIONS
