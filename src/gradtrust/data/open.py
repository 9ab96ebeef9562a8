"""``open_dataset(data, model, labels=None)``: what ``gradtrust score --data …`` reads, with its identity.

``data`` is one of

=====================================  ===========================================================
``DIR`` (sub-folders)                  class-folder image layout ``DIR/<class>/<image>``
                                       (:class:`~gradtrust.data.ImageFolderDataset`)
``DIR`` + ``labels=FILE``              flat ImageNet validation layout: every image in ``DIR``, labels in
                                       ``FILE`` (Kaggle's ``LOC_val_solution.csv`` or one label per line;
                                       :class:`~gradtrust.data.FlatImageDataset`, ImageNet-1k classes)
``DIR`` with a video model             Kinetics layout ``DIR/<class>/<clip>.mp4`` sampled as the model's
                                       Kinetics-400 weights expect (:class:`~gradtrust.data.VideoFolderDataset`)
``digits``                             the built-in digits, test split, clean
``digits:<split>``                     ``train`` or ``test``
``digits:<split>:<corruption>[:<s>]``  a corruption (``gaussian_noise``, ``blur``, ``contrast``, or
                                       ``clean``) at severity ``s`` (1, 2, 3; default 1)
``NAME:ARG[:ARG…]``                    a data set in its distributed format (``cifar10:DIR:test``,
                                       ``cifar10c:DIR:fog:3``, ``svhn:FILE.mat``, ``wds:PATTERN`` …): the
                                       registry of :mod:`gradtrust.data.specs` (``gradtrust datasets``)
=====================================  ===========================================================

An existing folder always wins over a spec of the same name (use ``digits:test`` to be
explicit). Images and clips go through the model's own transform (``LoadedModel.transform``); a model
without one (a model file, a ``digits:`` network) gets float ``[0, 1]`` tensors.

The returned :class:`OpenedDataset` behaves as the dataset it wraps (``len``, indexing, ``classes``, every
attribute) and adds :meth:`OpenedDataset.describe`, the dataset's identity for a run manifest
(:func:`describe_dataset`), so that a run refuses to resume over a folder whose content changed.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

from torch.utils.data import Dataset

from gradtrust.data.specs import is_data_spec, open_data_spec
from gradtrust.errors import DataError, UnknownNameError

__all__ = ["OpenedDataset", "describe_dataset", "open_dataset", "parse_digits_spec"]

_DIGITS_SPEC = re.compile(r"^digits(?::[^:]*){0,3}$")


class OpenedDataset(Dataset):
    """A dataset opened by :func:`open_dataset`: delegates everything to ``dataset``, adds ``describe()``."""

    def __init__(self, dataset: Any, spec: str, extra: dict | None = None) -> None:
        self.dataset = dataset
        self.spec = spec
        self.extra = dict(extra or {})
        self.classes = list(dataset.classes)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index]

    def __getattr__(self, name: str):
        # Only called for attributes not found normally; guard the wrapped object itself so that
        # unpickling (in DataLoader workers) never recurses.
        if name in ("dataset", "spec", "extra", "classes") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def describe(self) -> dict[str, Any]:
        """The dataset's identity: kind, root, samples, classes, fingerprint (see the module docstring)."""
        return {**describe_dataset(self.dataset), "spec": self.spec, **self.extra}

    def __repr__(self) -> str:
        return f"OpenedDataset({self.spec!r}, {self.dataset!r})"


def parse_digits_spec(data: str) -> dict[str, Any]:
    """``digits[:split[:corruption[:severity]]]`` → keyword arguments of :class:`DigitsDataset`."""
    parts = data.split(":")
    if parts[0] != "digits" or len(parts) > 4:
        raise DataError(f"not a digits spec: {data!r}; use digits, digits:<split>, "
                        "digits:<split>:<corruption> or digits:<split>:<corruption>:<severity>")
    split = parts[1] if len(parts) > 1 and parts[1] else "test"
    corruption = parts[2] if len(parts) > 2 and parts[2] else None
    severity = 1
    if len(parts) > 3 and parts[3]:
        try:
            severity = int(parts[3])
        except ValueError:
            raise DataError(f"the severity in {data!r} must be an integer (1, 2 or 3), got {parts[3]!r}") from None
    if corruption in (None, "clean") and len(parts) > 3 and parts[3]:
        raise DataError(f"{data!r}: a severity needs a corruption (gaussian_noise, blur or contrast)")
    return {"split": split, "corruption": corruption, "severity": severity}


def open_dataset(data: Any, model: Any, labels: str | os.PathLike | None = None) -> OpenedDataset:
    """Open ``data`` for ``model`` (a :class:`~gradtrust.models.LoadedModel`); see the module docstring.

    Raises :class:`DataError` for a missing or empty folder, a missing labels file, an unknown digits
    spec, a label file given with a video model or the digits, and digits data with an image/video model.
    """
    if data is None or (isinstance(data, str) and not data.strip()):
        raise DataError("no data given: pass a dataset folder, or 'digits' for the built-in digits.")
    text = os.fspath(data) if isinstance(data, os.PathLike) else str(data)
    input_kind = getattr(model, "input_kind", "image")
    transform = getattr(model, "transform", None)

    if not os.path.isdir(text) and _DIGITS_SPEC.match(text):
        if labels is not None:
            raise DataError("--labels applies to a flat image folder, not to the built-in digits.")
        if input_kind in ("image", "video"):
            raise DataError(
                f"the built-in digits are 1×8×8 tensors for the digits:* networks, but the model "
                f"{getattr(model, 'spec', '?')} takes {input_kind}s; use --model digits:<name> "
                "(gradtrust models --family digits) or give an image folder as --data."
            )
        from gradtrust.data.digits import DigitsDataset

        return OpenedDataset(DigitsDataset(**parse_digits_spec(text)), text)

    if not os.path.exists(text) and is_data_spec(text):
        if labels is not None:
            raise DataError(f"--labels applies to a flat image folder, not to the data spec {text!r} (it reads its "
                            "own labels).")
        return OpenedDataset(open_data_spec(text, model=model), text)

    root = os.path.abspath(text)
    if not os.path.exists(root):
        hint = " (for the built-in digits use 'digits' or 'digits:<split>[:<corruption>[:<severity>]]')" \
            if text.startswith("digits") else ""
        raise DataError(f"Dataset folder {root} does not exist{hint}.")
    if not os.path.isdir(root):
        raise DataError(f"Dataset path {root} is a file, not a folder; --data takes a folder "
                        "(the label file of a flat layout goes to --labels).")
    if not any(not e.startswith(".") for e in os.listdir(root)):
        raise DataError(f"Dataset folder {root} is empty.")

    if input_kind == "video":
        if labels is not None:
            raise DataError("--labels applies to a flat image folder; video data must be in class folders "
                            "(root/<class>/<clip>.mp4).")
        from gradtrust.data.video import VideoFolderDataset

        try:
            dataset = VideoFolderDataset.for_model(root, getattr(model, "spec", ""), transform)
        except UnknownNameError:  # not a torchvision video model: its own clip length, every 2nd frame
            dataset = VideoFolderDataset(root, transform, clip_len=int(getattr(model, "clip_len", None) or 16))
        return OpenedDataset(dataset, text)

    if labels is not None:
        from gradtrust.data.imagenet import FlatImageDataset

        return OpenedDataset(FlatImageDataset(root, labels, transform), text)

    from gradtrust.data.images import ImageFolderDataset

    try:
        folder = ImageFolderDataset(root, transform)
    except DataError as exc:
        if "FlatImageDataset" in str(exc):
            raise DataError(str(exc).replace("use FlatImageDataset", "pass the label file with --labels")) from None
        raise
    return OpenedDataset(folder, text)


def describe_dataset(dataset: Any) -> dict[str, Any]:
    """A JSON-serialisable identity of any GradTrust dataset (or of an :class:`OpenedDataset`).

    Keys: ``kind``, ``root`` (folders), ``samples``, ``num_classes``, ``classes`` (up to 1000 names),
    ``fingerprint`` (SHA-256 of ``relative path<TAB>size<TAB>label`` lines in dataset order — the order
    is the sorted one), plus the settings that change what is read (digits split/corruption, clip
    sampling, label file). A dataset of another type is described by its ``describe()`` when it has one,
    else by its type, length and ``repr``.
    """
    if isinstance(dataset, OpenedDataset):
        return dataset.describe()
    from gradtrust.data.digits import DigitsDataset
    from gradtrust.data.images import ImageFileDataset

    classes = [str(c) for c in getattr(dataset, "classes", [])]
    info: dict[str, Any] = {"kind": type(dataset).__name__, "samples": len(dataset), "num_classes": len(classes),
                            "classes": classes if len(classes) <= 1000 else classes[:1000]}
    if isinstance(dataset, DigitsDataset):
        info["kind"] = "digits"
        info.update({k: v for k, v in dataset.spec.items() if k not in ("dataset", "samples")})
        info["fingerprint"] = hashlib.sha256(repr(sorted(dataset.spec.items())).encode()
                                             + dataset.labels.tobytes()).hexdigest()
        return info
    if isinstance(dataset, ImageFileDataset):
        info["root"] = dataset.root
        info["fingerprint"] = _files_fingerprint(dataset)
        for attr in ("labels_file", "label_offset", "clip_len", "frame_stride", "frame_rate", "alpha", "variant",
                     "corruption", "severity"):
            if hasattr(dataset, attr):
                info[attr] = getattr(dataset, attr)
        if hasattr(dataset, "extensions"):
            info["extensions"] = list(dataset.extensions)
        info["transform"] = " ".join(repr(dataset.transform).split())
        return info
    describe = getattr(dataset, "describe", None)
    if callable(describe):
        info.update(describe())
        return info
    if type(dataset).__repr__ is not object.__repr__:  # the default repr holds a memory address
        info["repr"] = re.sub(r" at 0x[0-9a-fA-F]+", "", " ".join(repr(dataset).split()))[:500]
    return info


def _files_fingerprint(dataset: Any) -> str:
    digest = hashlib.sha256()
    root = dataset.root
    targets = dataset.targets
    for i in range(len(dataset)):
        path = dataset.path(i)
        try:
            size = os.stat(path).st_size
        except OSError:
            size = -1
        rel = os.path.relpath(path, root)
        digest.update(f"{rel}\t{size}\t{int(targets[i])}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()
