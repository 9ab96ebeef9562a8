"""Image datasets read from files: the class-folder layout (``root/<class>/<image>``).

Every image goes through :func:`read_rgb_image`, which decodes it with PIL and converts any mode to
8-bit RGB *before* the transform sees it:

=================  ==================================================================================
mode               conversion
=================  ==================================================================================
``RGB``            unchanged
``L``, ``1``       grey replicated to the three channels
``P``              through the palette; with a ``transparency`` entry it is treated like ``RGBA``
``LA``, ``PA``,    alpha composited on a white background (``alpha="white"``, the default), or the
``RGBA``           alpha channel dropped (``alpha="drop"``, what torchvision's ``ImageFolder`` does
                   with ``Image.convert("RGB")``: fully transparent pixels then show whatever colour
                   they store, often black)
``CMYK``           PIL's conversion (``Image.convert("RGB")``, as torchvision's loader; Adobe's
                   inverted CMYK JPEGs are un-inverted by PIL's decoder), so CMYK white is RGB white
``I;16*``          16-bit grey scaled to 8 bits: ``round(v * 255 / 65535)`` (65535 → 255, never clipped)
``I``              32-bit integer grey: values within ``0..65535`` are scaled as 16-bit data (this is
                   how 16-bit PNG/TIFF files used to open); anything else is stretched min→0, max→255
``F``              32-bit float grey: ``[0, 1]`` → ×255; within ``[0, 255]`` kept; within
                   ``[0, 65535]`` scaled as 16-bit; anything else stretched min→0, max→255; NaN → 0
others             ``Image.convert("RGB")`` (``YCbCr``, ``RGBX``, ``HSV``…); a failure is recorded
=================  ==================================================================================

Only the first frame of an animated GIF or multi-page TIFF is read. EXIF orientation is not applied
(torchvision's reference evaluation does not apply it either).

A file that cannot be read — zero bytes, not an image, truncated, corrupt, unconvertible — gives a
:class:`~gradtrust.data.Sample` with ``input=None`` and the reason; the dataset never raises for one file.
Errors raised by the *transform* are not caught: they mean the transform does not fit the data.

Datasets keep only relative paths (packed into one NumPy byte buffer, so that forked DataLoader workers
do not slowly copy a huge Python list) and labels; nothing is preloaded, and they pickle cheaply.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from gradtrust.data.samples import Sample, check_file
from gradtrust.errors import DataError

__all__ = [
    "ALPHA_MODES",
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "decode_rgb_image",
    "default_image_transform",
    "read_rgb_image",
    "to_rgb",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm",
)
"""File name endings (case-insensitive) taken as images."""

ALPHA_MODES: tuple[str, ...] = ("white", "drop")
"""How transparency is removed: composite on white, or drop the alpha channel."""

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_EXAMPLES = 5  # how many examples an error message lists


def default_image_transform(image: Image.Image) -> torch.Tensor:
    """The default transform: ``pil_to_tensor`` → float ``(3, H, W)`` in ``[0, 1]``."""
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(image).float().div_(255.0)


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """0..65535 → 0..255, rounded (65535 → 255, 257 → 1, 128 → 0)."""
    v = values.astype(np.uint32)
    return ((v * 255 + 32767) // 65535).astype(np.uint8)


def _stretch(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    return np.rint((values.astype(np.float64) - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _grey_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale the pixels of a 16-bit, 32-bit integer or float grey image to 8 bits (see module doc)."""
    if values.size == 0:
        return values.astype(np.uint8)
    if mode == "F":
        v = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(v.min()), float(v.max())
        if lo >= 0.0 and hi <= 1.0:
            return np.rint(v * 255.0).astype(np.uint8)
        if lo >= 0.0 and hi <= 255.0:
            return np.rint(v).astype(np.uint8)
        if lo >= 0.0 and hi <= 65535.0:
            return _scale_16bit(np.rint(v))
        return _stretch(v)
    if mode == "I":
        lo, hi = int(values.min()), int(values.max())
        if lo >= 0 and hi <= 65535:
            return _scale_16bit(values)
        return _stretch(values)
    return _scale_16bit(values)  # I;16 variants


def to_rgb(image: Image.Image, alpha: str = "white") -> Image.Image:
    """Convert a decoded PIL image of any mode to 8-bit ``RGB`` (see the module docstring for each mode).

    ``alpha="white"`` composites transparent images on white; ``alpha="drop"`` discards the alpha channel.
    Raises `DataError` for a bad ``alpha``, ``ValueError``/``OSError`` when PIL cannot convert the mode.
    """
    if alpha not in ALPHA_MODES:
        raise DataError(f"alpha must be one of {ALPHA_MODES}, got {alpha!r}")
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") and mode not in _SIXTEEN_BIT_MODES:  # signed or odd 16-bit layouts
        image, mode = image.convert("I"), "I"
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        grey = _grey_to_uint8(np.asarray(image), mode)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "P":
        if "transparency" not in image.info:
            return image.convert("RGB")
        image = image.convert("RGBA")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode in ("RGBa", "La"):  # premultiplied alpha
        image = image.convert("RGBA" if mode == "RGBa" else "LA")
    if image.mode in ("RGBA", "LA"):
        if alpha == "drop":
            return image.convert("RGB")
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def read_rgb_image(path: str | os.PathLike, alpha: str = "white") -> Image.Image:
    """Decode one image file fully and convert it to RGB; raise :class:`DataError` saying why it cannot.

    The reasons are short and stable: ``empty file (0 bytes)``, ``not a recognised image format``,
    ``truncated or corrupt image: …``, ``cannot convert mode X to RGB: …``, ``file not found``, ….
    """
    return _decode(check_file(path), alpha)


def decode_rgb_image(data: bytes, alpha: str = "white") -> Image.Image:
    """:func:`read_rgb_image` for an encoded image held in memory (a WebDataset member, an Arrow cell)."""
    if not data:
        raise DataError("empty file (0 bytes)")
    return _decode(io.BytesIO(data), alpha)


def _decode(source: Any, alpha: str) -> Image.Image:
    try:
        with Image.open(source) as image:
            image.load()  # decode now: truncation and corruption show up here
            mode = image.mode
            try:
                rgb = to_rgb(image, alpha)
                rgb.load()
            except (ValueError, OSError) as exc:
                raise DataError(f"cannot convert mode {mode} to RGB: {exc}") from None
            return rgb  # decoded: usable after the file closes
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError("not a recognised image format (PIL cannot identify it)") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error) as exc:
        text = str(exc) or type(exc).__name__
        raise DataError(f"truncated or corrupt image: {text}") from None


class _StringTable:
    """A read-only list of strings stored as one UTF-8 byte buffer plus offsets.

    A Python list of a million ``str`` objects is copied page by page into every forked DataLoader worker
    as soon as the workers touch the reference counts; two NumPy arrays are not.
    """

    def __init__(self, strings: Iterable[str]) -> None:
        encoded = [s.encode("utf-8", "surrogateescape") for s in strings]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        if encoded:
            np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        start, stop = int(self._offsets[i]), int(self._offsets[i + 1])
        return self._buffer[start:stop].tobytes().decode("utf-8", "surrogateescape")

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def normalize_extensions(extensions: Iterable[str]) -> tuple[str, ...]:
    """``["JPG", ".png"]`` → ``(".jpg", ".png")``."""
    if isinstance(extensions, str):
        extensions = (extensions,)
    out = tuple(sorted({("." + e.lower().lstrip(".")) for e in extensions if e}))
    if not out:
        raise DataError("extensions must name at least one file ending, e.g. ('.jpg', '.png')")
    return out


def list_examples(items: Iterable[object], n: int = _EXAMPLES) -> str:
    """The first ``n`` items as reprs joined by commas, then how many there are in all: for error messages."""
    items = list(items)
    shown = ", ".join(repr(x) for x in items[:n])
    return shown + (f", … ({len(items)} in all)" if len(items) > n else "")


def check_root(root: str | os.PathLike) -> str:
    """Absolute path of a dataset folder, or :class:`DataError` when it is missing or not a folder."""
    path = os.path.abspath(os.fspath(root))
    if not os.path.exists(path):
        raise DataError(f"Dataset folder {path} does not exist.")
    if not os.path.isdir(path):
        raise DataError(f"Dataset path {path} is a file, not a folder.")
    return path


def scan_class_folders(
    root: str, extensions: tuple[str, ...], kind: str = "image", example: str = "img_001.jpg"
) -> tuple[list[str], list[str], list[int]]:
    """Walk ``root/<class>/…`` (recursively inside each class folder, following links, skipping hidden
    entries) and return ``(classes, relative_paths, labels)``, classes and files sorted.

    Symbolic links to files and folders are followed; a folder whose real path was already walked (a link
    cycle) is not entered again, and a file whose real path was already listed is not listed twice (a
    warning says how many of each).

    Raises :class:`DataError` saying what was found when there are no class folders or no matching files.
    """
    entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
    classes = [e for e in entries if os.path.isdir(os.path.join(root, e))]
    loose = [e for e in entries if e not in classes]
    layout = f"one sub-folder per class, e.g. {os.path.join(root, '<class_name>', example)}"
    if not classes:
        if loose:
            found = f"{len(loose)} files directly in it ({list_examples(loose)}) and no sub-folders"
            hint = (" If all images are in one folder with a labels file (the ImageNet validation layout),"
                    " use FlatImageDataset." if kind == "image" else "")
        else:
            found, hint = "nothing (the folder is empty)", ""
        raise DataError(f"No class sub-folders in {root}: found {found}. Expected {layout}.{hint}")

    other_files: list[str] = []
    per_class: list[list[str]] = []
    real_root = os.path.realpath(root)
    loops: list[str] = []
    for cls in classes:
        found_here: list[str] = []
        seen_dirs: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, cls), followlinks=True):
            # Symbolic links are followed, but a folder already visited (a link back to a parent: a cycle, or
            # two links to one folder) is walked once, and the dataset root or its parents never (os.walk itself
            # would loop until the path is too long).
            seen_dirs.add(os.path.realpath(dirpath))
            keep = []
            for d in sorted(d for d in dirnames if not d.startswith(".")):
                real = os.path.realpath(os.path.join(dirpath, d))
                if real in seen_dirs or real == real_root or real_root.startswith(real.rstrip(os.sep) + os.sep):
                    loops.append(os.path.relpath(os.path.join(dirpath, d), root))
                    continue
                keep.append(d)
            dirnames[:] = keep
            rel_dir = os.path.relpath(dirpath, root)
            for name in filenames:
                if name.startswith("."):
                    continue
                rel = os.path.join(rel_dir, name)
                if name.lower().endswith(extensions):
                    found_here.append(rel)
                elif len(other_files) < 50:
                    other_files.append(rel)
        per_class.append(sorted(found_here))
    # One file reached through several paths is listed once: under its own (link-free) path when that is one
    # of them (so a link from one class folder into another does not relabel the files), else its first path.
    chosen: dict[str, str] = {}  # real path → the relative path it is listed under
    for rel in (rel for rels in per_class for rel in rels):
        real = os.path.realpath(os.path.join(root, rel))
        direct = os.path.join(real_root, rel) == real
        if real not in chosen or (direct and os.path.join(real_root, chosen[real]) != real):
            chosen[real] = rel
    keep_paths = set(chosen.values())
    kept = [[rel for rel in rels if rel in keep_paths] for rels in per_class]  # per class, in sorted order
    duplicates = [rel for rels in per_class for rel in rels if rel not in keep_paths]
    empty_classes = [cls for cls, rels in zip(classes, kept, strict=True) if not rels]
    paths = [rel for rels in kept for rel in rels]
    labels = [label for label, rels in enumerate(kept) for _ in rels]
    if loops or duplicates:
        warnings.warn(
            f"{root}: symbolic links reach {len(loops)} already-visited folder(s) ({list_examples(loops)}) and "
            f"{len(duplicates)} already-listed file(s) ({list_examples(duplicates)}); each folder is walked and each file "
            "is listed once (under its own path when one of them is, else its first path in sorted order).",
            stacklevel=3,
        )

    if not paths:
        others = f"; other files found: {list_examples(other_files)}" if other_files else "; the class folders are empty"
        raise DataError(
            f"No {kind} files ({', '.join(extensions)}) in the {len(classes)} class sub-folders of {root} "
            f"({list_examples(classes)}){others}. Expected {layout}."
        )
    if empty_classes:
        warnings.warn(
            f"{len(empty_classes)} of {len(classes)} class folders in {root} hold no {kind} files: "
            f"{list_examples(empty_classes)}. They keep their class index (sorted folder order).",
            stacklevel=3,
        )
    return classes, paths, labels


class ImageFileDataset(Dataset):
    """Base of the image datasets: relative paths + labels in memory, decode on ``__getitem__``."""

    root: str
    classes: list[str]

    def __init__(
        self,
        root: str,
        rel_paths: Sequence[str],
        labels: Sequence[int],
        classes: Sequence[str],
        # What the transform receives is the subclass's decoded item: a PIL image here, a clip tensor for video.
        transform: Callable[[Any], Any] | None = None,
        alpha: str = "white",
    ) -> None:
        if alpha not in ALPHA_MODES:
            raise DataError(f"alpha must be one of {ALPHA_MODES}, got {alpha!r}")
        self.root = root
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.transform = transform
        self.alpha = alpha
        self._files = _StringTable(rel_paths)
        self._labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._files)

    def _position(self, index: int) -> int:
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        return i

    def path(self, index: int) -> str:
        """Absolute path of sample ``index``."""
        return os.path.join(self.root, self._files[self._position(index)])

    def label(self, index: int) -> int:
        return int(self._labels[self._position(index)])

    @property
    def targets(self) -> np.ndarray:
        """All labels (int64, a read-only view), in dataset order."""
        view = self._labels.view()
        view.flags.writeable = False
        return view

    def __getitem__(self, index: int) -> Sample:
        i = self._position(index)
        path, label = self.path(i), self.label(i)
        # PIL warns (DecompressionBombWarning) for images over ~89 megapixels; the warning would leak to the
        # console once per file, so it is caught here and recorded with the sample (manifest: sample_notes).
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            try:
                image = read_rgb_image(path, self.alpha)
            except DataError as exc:
                return Sample(input=None, label=label, index=i, path=path, error=str(exc))
        note = "; ".join(f"{w.category.__name__}: {w.message}" for w in caught
                         if issubclass(w.category, Image.DecompressionBombWarning))
        for w in caught:  # anything else is passed on as it was
            if not issubclass(w.category, Image.DecompressionBombWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        transform = self.transform if self.transform is not None else default_image_transform
        return Sample(input=transform(image), label=label, index=i, path=path, error="", note=note)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={self.root!r}, samples={len(self)}, classes={len(self.classes)}, "
                f"alpha={self.alpha!r}, transform={self.transform!r})")


class ImageFolderDataset(ImageFileDataset):
    """Images in ``root/<class_name>/…``: each non-hidden sub-folder is a class (searched recursively), its
    index the folder's position in sorted order. ``transform`` gets the RGB PIL image (default
    :func:`default_image_transform`); ``extensions`` are case-insensitive; ``alpha``: ``"white"`` composites
    transparent images on white, ``"drop"`` drops the alpha channel.

    Files are sorted by their path within ``root``, so ``index`` is the same on every run and machine.
    A class folder without images keeps its index (with a warning); no class folder or no image at all
    raises :class:`DataError`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable[[Image.Image], Any] | None = None,
        extensions: Iterable[str] = IMAGE_EXTENSIONS,
        *,
        alpha: str = "white",
    ) -> None:
        root_path = check_root(root)
        exts = normalize_extensions(extensions)
        classes, rel_paths, labels = scan_class_folders(root_path, exts, kind="image")
        super().__init__(root_path, rel_paths, labels, classes, transform=transform, alpha=alpha)
        self.extensions = exts
