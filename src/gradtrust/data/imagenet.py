"""The flat ImageNet validation layout: every image in one folder, the labels in a separate file.

Two label files are understood (the format is detected from the content):

* a CSV with a header ``ImageId,PredictionString``, as Kaggle's ``LOC_val_solution.csv``:
  ``ILSVRC2012_val_00000001,n01751748 1 1 499 499 …`` — ``ImageId`` is the file name without extension
  (an extension is tolerated), the first token of ``PredictionString`` is the class's WordNet ID
  (or, with custom ``classes``, the class name);
* a text file with one label per line for the images **in sorted file name order**, each line a WordNet ID
  (``n01751748``) or a 0-based integer class index in the standard ImageNet-1k order (sorted WordNet IDs,
  the order of torchvision's and timm's ImageNet weights). ``label_offset`` is added to integer labels,
  e.g. ``label_offset=-1`` for a 1-based file *in that same order*.

The devkit's ``ILSVRC2012_validation_ground_truth.txt`` is **not** such a file: its numbers are the
devkit's own 1-based ``ILSVRC2012_ID``\\ s, whose order (the devkit's ``meta.mat``) is not the sorted
WordNet ID order — ``label_offset=-1`` alone would give wrong labels. Pass ``devkit_meta=`` the devkit's
``data/meta.mat`` (or the devkit folder; reading it needs SciPy) and the IDs are translated through it,
or use Kaggle's ``LOC_val_solution.csv``. A label file with that name, or with the label 1000, given
without ``devkit_meta`` raises :class:`DataError` explaining this.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from gradtrust.data.classes import load_imagenet_class_names, load_imagenet_wnids
from gradtrust.data.images import (
    IMAGE_EXTENSIONS,
    ImageFileDataset,
    check_root,
    list_examples,
    normalize_extensions,
)
from gradtrust.errors import DataError

__all__ = ["FlatImageDataset", "read_devkit_meta"]

_DEVKIT_GT_NAME = "ILSVRC2012_validation_ground_truth"
_MAX_BAD = 5


def read_devkit_meta(path: str | os.PathLike) -> dict[int, str]:
    """``{ILSVRC2012_ID: wnid}`` for the 1000 leaf synsets of the ImageNet devkit's ``meta.mat``.

    ``path`` is ``meta.mat`` itself or the devkit folder (``<devkit>/data/meta.mat``). Needs SciPy.
    """
    p = Path(path)
    if p.is_dir():
        candidates = [p / "data" / "meta.mat", p / "meta.mat"]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise DataError(f"no meta.mat in the devkit folder {p} (looked for {', '.join(map(str, candidates))})")
        p = found[0]
    if not p.is_file():
        raise DataError(f"devkit meta file {p} does not exist")
    try:
        import scipy.io
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        raise DataError("reading the devkit's meta.mat needs SciPy: pip install scipy") from None
    try:
        synsets = scipy.io.loadmat(str(p), squeeze_me=True)["synsets"]
        mapping = {
            int(s["ILSVRC2012_ID"]): str(s["WNID"]).strip()
            for s in synsets.ravel()
            if int(s["num_children"]) == 0
        }
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad meta file
        raise DataError(f"cannot read the devkit meta file {p}: {exc} (expected the ILSVRC2012 devkit's "
                        "data/meta.mat with a 'synsets' struct)") from None
    return mapping


def _strip_image_extension(image_id: str) -> str:
    stem, ext = os.path.splitext(image_id)
    return stem if ext and ext.lower() in IMAGE_EXTENSIONS else image_id


def _looks_like_csv(path: str) -> bool:
    if path.lower().endswith(".csv"):
        return True
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            if line.strip():
                return "imageid" in line.lower().replace(" ", "") and "," in line
    return False


class FlatImageDataset(ImageFileDataset):
    """All images in one folder (e.g. ``ILSVRC2012_val_00000001.JPEG`` …), labels from a file.

    ``root`` is not searched recursively; images are sorted by file name, ``index`` is the position in that
    order. ``labels_file``: a ``ImageId,PredictionString`` CSV or a one-label-per-line text file (module doc).
    ``classes``: the class list labels refer to (text labels are looked up in it, integer labels index it);
    default the 1000 ImageNet-1k WordNet IDs in output order, whose readable names :attr:`class_names` gives.
    ``label_offset`` is added to every integer label; with ``devkit_meta`` (the devkit's ``meta.mat`` or
    folder) integer labels are devkit ``ILSVRC2012_ID``\\ s, translated to WordNet IDs.
    ``allow_unused_labels``: with a CSV, ignore labels whose image is not in ``root`` (score a subset of the
    validation set) instead of raising. ``transform``, ``extensions``, ``alpha``: as :class:`ImageFolderDataset`.

    Raises :class:`DataError` (listing a few examples) for: an image without a label, a label without an
    image, a malformed CSV row, a line count that differs from the image count, an unknown class, an
    out-of-range index.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        labels_file: str | os.PathLike,
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        classes: Sequence[str] | None = None,
        label_offset: int = 0,
        devkit_meta: str | os.PathLike | None = None,
        allow_unused_labels: bool = False,
        extensions: Iterable[str] = IMAGE_EXTENSIONS,
        alpha: str = "white",
    ) -> None:
        root_path = check_root(root)
        exts = normalize_extensions(extensions)
        labels_path = os.path.abspath(os.fspath(labels_file))
        if not os.path.isfile(labels_path):
            raise DataError(f"Labels file {labels_path} does not exist.")
        self._imagenet = classes is None
        class_list = load_imagenet_wnids() if classes is None else [str(c) for c in classes]
        if not class_list:
            raise DataError("classes is empty")
        self.labels_file = labels_path
        self.label_offset = int(label_offset)

        files = self._list_images(root_path, exts)
        class_index = {c: i for i, c in enumerate(class_list)}
        if _looks_like_csv(labels_path):
            if devkit_meta is not None or label_offset:
                raise DataError("devkit_meta and label_offset apply to one-label-per-line text files, "
                                f"not to the CSV {labels_path}")
            labels = self._labels_from_csv(labels_path, files, class_index, allow_unused_labels)
        else:
            devkit = read_devkit_meta(devkit_meta) if devkit_meta is not None else None
            labels = self._labels_from_lines(labels_path, files, class_index, devkit)
        super().__init__(root_path, files, labels, class_list, transform=transform, alpha=alpha)
        self.extensions = exts

    @property
    def class_names(self) -> list[str]:
        """Readable class names (ImageNet names for the default classes, else ``classes``)."""
        return load_imagenet_class_names() if self._imagenet else list(self.classes)

    @staticmethod
    def _list_images(root: str, exts: tuple[str, ...]) -> list[str]:
        entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
        files = [e for e in entries if e.lower().endswith(exts) and os.path.isfile(os.path.join(root, e))]
        if not files:
            dirs = [e for e in entries if os.path.isdir(os.path.join(root, e))]
            others = [e for e in entries if e not in dirs]
            found = []
            if dirs:
                found.append(f"{len(dirs)} sub-folders ({list_examples(dirs)})")
            if others:
                found.append(f"{len(others)} other files ({list_examples(others)})")
            hint = (" If the images are in one sub-folder per class, use ImageFolderDataset instead."
                    if dirs else "")
            raise DataError(
                f"No image files ({', '.join(exts)}) directly in {root}: found "
                f"{' and '.join(found) or 'nothing (the folder is empty)'}. Expected all images in that one "
                f"folder, e.g. {os.path.join(root, 'ILSVRC2012_val_00000001.JPEG')}.{hint}"
            )
        return files

    def _labels_from_csv(
        self, path: str, files: list[str], class_index: dict[str, int], allow_unused: bool
    ) -> list[int]:
        expected = ("expected a header 'ImageId,PredictionString' and rows such as "
                    "'ILSVRC2012_val_00000001,n01751748 1 1 499 499' (Kaggle's LOC_val_solution.csv)")
        by_id: dict[str, int] = {}
        bad: list[str] = []
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                columns = [h.strip() for h in header] if header else []
                if "ImageId" not in columns or "PredictionString" not in columns:
                    raise DataError(f"Malformed labels CSV {path}: header is {header!r}; {expected}.")
                id_col, pred_col = columns.index("ImageId"), columns.index("PredictionString")
                for row in reader:
                    line = reader.line_num
                    if not row or not any(cell.strip() for cell in row):
                        continue
                    problem = ""
                    if len(row) <= max(id_col, pred_col):
                        problem = f"{len(row)} fields"
                    else:
                        image_id = _strip_image_extension(row[id_col].strip())
                        tokens = row[pred_col].split()
                        if not image_id:
                            problem = "empty ImageId"
                        elif not tokens:
                            problem = "empty PredictionString"
                        elif tokens[0] not in class_index:
                            problem = f"unknown class {tokens[0]!r}"
                        elif image_id in by_id and by_id[image_id] != class_index[tokens[0]]:
                            problem = f"ImageId {image_id!r} listed twice with different classes"
                        else:
                            by_id[image_id] = class_index[tokens[0]]
                    if problem:
                        bad.append(f"line {line}: {problem} ({','.join(row)[:80]!r})")
        except (UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"Malformed labels CSV {path}: {exc}; {expected}.") from None
        if bad:
            raise DataError(f"Malformed labels CSV {path}: {len(bad)} bad rows, e.g. {'; '.join(bad[:_MAX_BAD])}. "
                            f"{expected}.")
        if not by_id:
            raise DataError(f"Labels CSV {path} has a header but no rows; {expected}.")

        stems: dict[str, str] = {}
        duplicates = []
        for name in files:
            stem = os.path.splitext(name)[0]
            if stem in stems:
                duplicates.append(f"{stems[stem]} / {name}")
            stems[stem] = name
        if duplicates:
            raise DataError(f"{len(duplicates)} images in the folder share a name but not the extension, "
                            f"so the CSV's ImageId is ambiguous: {list_examples(duplicates)}")
        unlabeled = [name for name in files if os.path.splitext(name)[0] not in by_id]
        if unlabeled:
            raise DataError(
                f"{len(unlabeled)} of {len(files)} images have no label in {path}: {list_examples(unlabeled)}. "
                "Every image in the folder needs a row (ImageId = file name without extension)."
            )
        unused = [i for i in by_id if i not in stems]
        if unused and not allow_unused:
            raise DataError(
                f"{len(unused)} of {len(by_id)} labels in {path} have no image in the folder: {list_examples(sorted(unused))}. "
                "Pass allow_unused_labels=True to score only the images present."
            )
        return [by_id[os.path.splitext(name)[0]] for name in files]

    def _labels_from_lines(
        self, path: str, files: list[str], class_index: dict[str, int], devkit: dict[int, str] | None
    ) -> list[int]:
        is_devkit_file = _DEVKIT_GT_NAME.lower() in os.path.basename(path).lower()
        devkit_hint = (
            "The ImageNet devkit's ILSVRC2012_validation_ground_truth.txt holds the devkit's own 1-based "
            "ILSVRC2012_IDs, whose order is not the sorted-WordNet-ID order models use (label_offset=-1 "
            "would give wrong labels): pass devkit_meta='<devkit>/data/meta.mat' to translate them, or use "
            "Kaggle's LOC_val_solution.csv."
        )
        if is_devkit_file and devkit is None and self.label_offset == 0:
            raise DataError(f"{path}: {devkit_hint}")
        try:
            with open(path, encoding="utf-8-sig") as f:
                lines = [line.strip() for line in f]
        except UnicodeDecodeError as exc:
            raise DataError(f"Labels file {path} is not text: {exc}") from None
        while lines and not lines[-1]:
            lines.pop()
        if len(lines) != len(files):
            raise DataError(
                f"Labels file {path} has {len(lines)} lines but {len(files)} images are in the folder; line i "
                f"must label the i-th image in sorted file name order (first {files[0]!r}, last {files[-1]!r})."
            )
        n_classes = len(class_index)
        labels: list[int] = []
        bad: list[str] = []
        saw_top = False
        for number, (text, name) in enumerate(zip(lines, files, strict=False), start=1):
            label: int | None = None
            problem = ""
            if not text:
                problem = "empty line"
            elif text in class_index:
                label = class_index[text]
            else:
                try:
                    value = int(text)
                except ValueError:
                    problem = f"{text!r} is neither a known class{' (WordNet ID)' if self._imagenet else ''} nor an integer"
                else:
                    if devkit is not None:
                        wnid = devkit.get(value)
                        if wnid is None:
                            problem = f"{value} is not an ILSVRC2012_ID of the devkit's meta.mat"
                        elif wnid not in class_index:
                            problem = f"devkit ID {value} is {wnid}, not one of the classes"
                        else:
                            label = class_index[wnid]
                    else:
                        label = value + self.label_offset
                        saw_top = saw_top or value == n_classes
                        if not 0 <= label < n_classes:
                            problem = f"class index {label} out of range 0..{n_classes - 1}"
                            label = None
            if problem:
                bad.append(f"line {number} ({name}): {problem}")
            else:
                labels.append(int(label))  # type: ignore[arg-type]
        if bad:
            hint = f" {devkit_hint}" if saw_top and devkit is None and self._imagenet else ""
            raise DataError(
                f"Labels file {path}: {len(bad)} bad lines, e.g. {'; '.join(bad[:_MAX_BAD])}. Each line must be a "
                f"{'WordNet ID or a ' if self._imagenet else 'class name or a '}0-based class index.{hint}"
            )
        return labels
