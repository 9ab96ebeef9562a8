"""WebDataset tar shards (``imagenet-val-{000000..000063}.tar``), read with :mod:`tarfile` (no ``webdataset`` package).

A shard is a plain (uncompressed) tar file; consecutive members sharing a *key* — the member's path up to the
first ``.`` of its file name — form one sample, and the rest of the name is the field: ``n01440764_1.jpg`` +
``n01440764_1.cls``. The image is the first member with an image extension (``jpg``, ``jpeg``, ``png``, ``webp``,
``ppm``, ``bmp``, ``tif``/``tiff``, ``gif``) or the one named by ``image_ext``; the label is the text integer of the
``cls`` member, or the ``label_key`` entry of the ``json`` member with ``label_ext="json"``; none → −1. Labels are
the model's output indices. Braces expand as in webdataset: ``{000..063}`` (zero-padded ranges), ``{a,b}``.

The shards are listed once (headers only) into an index of (shard, offset, size, label); a sample is read by
seeking into its shard. When every shard but the last holds the same number of samples, that number is the
dataset's ``preferred_chunk_size``: the run engine then cuts its resumable chunks at shard borders, so that
under ``torchrun`` each rank reads whole shards (chunk ``k`` = shard ``k`` goes to rank ``k mod world size``).
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from typing import Any

import numpy as np

from gradtrust.data.encoded import EncodedImageDataset
from gradtrust.data.images import list_examples
from gradtrust.errors import DataError

__all__ = ["WebDatasetShards", "expand_braces"]

IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "tif", "tiff", "gif")
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(\d+)\.\.(\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """``"a-{000..002}.tar"`` → ``["a-000.tar", "a-001.tar", "a-002.tar"]``; ``"{x,y}.tar"`` → both; nested
    and repeated braces expand left to right (ranges are zero-padded to the width of their first bound)."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    ranged = _RANGE.match(body)
    if ranged:
        lo, hi = int(ranged.group(1)), int(ranged.group(2))
        width = len(ranged.group(1))
        step = 1 if hi >= lo else -1
        choices = [str(v).zfill(width) for v in range(lo, hi + step, step)]
    else:
        choices = body.split(",")
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [expanded for choice in choices for expanded in expand_braces(head + choice + tail)]


class WebDatasetShards(EncodedImageDataset):
    """The samples of WebDataset tar shards (see the module docstring).

    Args:
        pattern: a shard path with braces (``/data/imagenet-val-{000000..000063}.tar``), or a list of paths.
        transform: applied to each RGB PIL image.
        image_ext: the image field (default: the first image extension found in each sample).
        label_ext: ``"cls"`` (default) or ``"json"`` (with ``label_key``, default ``"label"``).
        classes: class names in label order (default: the model's when opened by spec, else ``"0"`` … max).
    """

    def __init__(
        self,
        pattern: str | list[str],
        transform: Any = None,
        *,
        image_ext: str | None = None,
        label_ext: str = "cls",
        label_key: str = "label",
        classes: list[str] | tuple[str, ...] | None = None,
    ) -> None:
        shards = [os.path.abspath(p) for p in (expand_braces(pattern) if isinstance(pattern, str) else pattern)]
        missing = [p for p in shards if not os.path.isfile(p)]
        if missing:
            raise DataError(
                f"wds: {len(missing)} of {len(shards)} shards do not exist: {list_examples(missing)}. "
                "Expected tar files such as DIR/imagenet-val-{000000..000063}.tar (braces expand)"
            )
        shard_of, offsets, sizes, labels, keys = [], [], [], [], []
        per_shard = []
        for s, shard in enumerate(shards):
            count = 0
            with open(shard, "rb") as handle:  # one handle per shard for the small label members
                for key, fields in _samples(shard):
                    image = _pick_image(fields, image_ext)
                    if image is None:
                        continue
                    shard_of.append(s)
                    offsets.append(image[0])
                    sizes.append(image[1])
                    labels.append(_label(handle, shard, key, fields, label_ext, label_key))
                    keys.append(key)
                    count += 1
            per_shard.append(count)
        if not keys:
            raise DataError(
                f"wds: no samples with an image ({image_ext or ', '.join(IMAGE_FIELDS)}) in "
                f"{list_examples(shards)}; each sample is <key>.jpg (or another image) + <key>.cls"
            )
        label_array = np.asarray(labels, dtype=np.int64)
        if not classes:
            classes = [str(i) for i in range(int(label_array.max()) + 1)] if label_array.max() >= 0 else []
        self.shard_of = np.asarray(shard_of, np.int32)
        self.offsets, self.sizes = np.asarray(offsets, np.int64), np.asarray(sizes, np.int64)
        self.keys = np.asarray(keys)
        self.shard_sizes = per_shard
        #: the shard size when every shard but the last has it: chunks at shard borders (whole shards per rank).
        self.preferred_chunk_size = (
            per_shard[0] if per_shard[0] and len(set(per_shard[:-1])) == 1 and per_shard[-1] <= per_shard[0] else None
        )
        root = os.path.commonpath([os.path.dirname(p) for p in shards])
        super().__init__(
            label_array,
            list(classes),
            kind="wds",
            root=root,
            files=shards,
            settings={
                "pattern": pattern if isinstance(pattern, str) else None,
                "image_ext": image_ext,
                "label_ext": label_ext,
                "label_key": label_key,
            },
            transform=transform,
        )

    def encoded(self, index: int) -> bytes:
        with open(self.files[int(self.shard_of[index])], "rb") as f:
            f.seek(int(self.offsets[index]))
            return f.read(int(self.sizes[index]))

    def path(self, index: int) -> str:
        return f"{self.files[int(self.shard_of[index])]}#{self.keys[index]}"


def _samples(shard: str):
    """``(key, {field: TarInfo})`` for each group of consecutive members sharing a key."""
    try:
        tar = tarfile.open(shard, "r:")
    except tarfile.ReadError as exc:
        raise DataError(
            f"wds: {shard} is not an uncompressed tar file ({exc}); decompress .tar.gz shards first"
        ) from None
    with tar:
        key: str | None = None
        fields: dict[str, tarfile.TarInfo] = {}
        for member in tar:
            if not member.isfile():
                continue
            folder, name = os.path.split(member.name)
            if "." not in name or name.startswith("."):
                continue
            stem, field = name.split(".", 1)
            this = f"{folder}/{stem}" if folder else stem
            if this != key:
                if key is not None:
                    yield key, fields
                key, fields = this, {}
            fields[field.lower()] = member
        if key is not None:
            yield key, fields


def _pick_image(fields: dict, image_ext: str | None) -> tuple[int, int] | None:
    names = [image_ext.lower()] if image_ext else list(IMAGE_FIELDS)
    for name in names:
        if name in fields:
            return fields[name].offset_data, fields[name].size
    return None


def _label(handle: Any, shard: str, key: str, fields: dict, label_ext: str, label_key: str) -> int:
    member = fields.get(label_ext)
    if member is None:
        return -1
    handle.seek(member.offset_data)
    text = handle.read(member.size).decode("utf-8", "replace").strip()
    try:
        value: Any = json.loads(text)[label_key] if label_ext == "json" else int(text)
        return int(value)
    except (ValueError, KeyError, TypeError, IndexError):
        raise DataError(
            f"wds: {shard}: the {label_ext} field of sample {key!r} is not "
            f"{'a JSON object with an integer ' + repr(label_key) if label_ext == 'json' else 'an integer'}: "
            f"{text[:60]!r}"
        ) from None


def open_wds(args: list[str], options: dict[str, str], context: Any) -> WebDatasetShards:
    """The ``DataSpec.opener`` of this spec (:mod:`gradtrust.data.specs`): its fields, options and context → a dataset."""
    return WebDatasetShards(
        ":".join(args),
        context.transform,
        image_ext=options.get("image"),
        label_ext=options.get("label", "cls"),
        label_key=options.get("label_key", "label"),
        classes=context.class_names or None,
    )
