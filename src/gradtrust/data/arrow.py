"""A Hugging Face ``datasets`` folder written by ``save_to_disk``, read with pyarrow (no ``datasets`` package).

Layout of one split (``Dataset.save_to_disk``)::

    DIR/data-00000-of-0000N.arrow   Arrow IPC streams, the table's rows in order
    DIR/dataset_info.json           "features": the column types ({"_type": "Image"}, {"_type": "ClassLabel",
                                    "names": [...]}, …)
    DIR/state.json                  "_data_files": [{"filename": "data-00000-of-0000N.arrow"}, …]

and of several (``DatasetDict.save_to_disk``): ``DIR/dataset_dict.json`` (``{"splits": ["train", "test"]}``) and
one such folder per split, ``DIR/<split>/``. The image column is an ``Image`` feature — a struct
``{bytes: binary, path: string}`` holding the encoded file (or only a path) — or plain ``binary``; the label
column a ``ClassLabel`` (its ``names`` are the classes) or integers. By default the first ``Image`` column and
the first ``ClassLabel`` column (else one called ``label``/``labels``/``fine_label``) are used;
``image_column=``/``label_column=`` (spec options ``image=``/``label=``) name others. No label column: label −1.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from gradtrust.data.encoded import EncodedImageDataset
from gradtrust.data.images import check_root
from gradtrust.errors import DataError

__all__ = ["ArrowImageDataset"]

_LAYOUT = (
    "DIR/{data-00000-of-00001.arrow, dataset_info.json, state.json} (Dataset.save_to_disk) or "
    "DIR/dataset_dict.json + DIR/<split>/… (DatasetDict.save_to_disk)"
)
_LABEL_NAMES = ("label", "labels", "fine_label")


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"hf-datasets: {path} does not exist. Expected layout: {_LAYOUT}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"hf-datasets: {path} is not valid JSON: {exc}") from None


def _split_folder(root: str, split: str | None) -> tuple[str, str | None]:
    dict_file = os.path.join(root, "dataset_dict.json")
    if os.path.exists(dict_file):
        splits = list(_read_json(dict_file).get("splits") or [])
        if split is None:
            if len(splits) != 1:
                raise DataError(
                    f"hf-datasets: {root} holds the splits {', '.join(splits)}; name one (hf-datasets:{root}:<split>)"
                )
            split = splits[0]
        if split not in splits:
            raise DataError(f"hf-datasets: no split {split!r} in {root}; it holds {', '.join(splits)}")
        return os.path.join(root, str(split)), split
    if split is not None and os.path.isdir(os.path.join(root, split)):
        return os.path.join(root, split), split
    return root, split


class ArrowImageDataset(EncodedImageDataset):
    """The images of a ``save_to_disk`` folder (see the module docstring).

    Args:
        root: the folder (a ``Dataset``'s, or a ``DatasetDict``'s with ``split``).
        split: the split of a ``DatasetDict`` folder (optional when it holds one).
        transform: applied to each RGB PIL image.
        image_column, label_column: column names (default: found from the features).
        classes: class names when the label column has none (default: ``"0"`` … ``"<max label>"``).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = None,
        transform: Any = None,
        *,
        image_column: str | None = None,
        label_column: str | None = None,
        classes: list[str] | tuple[str, ...] | None = None,
    ) -> None:
        folder, split = _split_folder(check_root(root), split)
        state = _read_json(os.path.join(folder, "state.json"))
        names = [entry.get("filename") for entry in state.get("_data_files") or [] if isinstance(entry, dict)]
        if not names or not all(isinstance(n, str) for n in names):
            raise DataError(f"hf-datasets: {folder}/state.json lists no _data_files. Expected layout: {_LAYOUT}")
        files = [os.path.join(folder, str(n)) for n in names]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise DataError(f"hf-datasets: {', '.join(missing)} (listed in state.json) missing. Expected: {_LAYOUT}")
        info_file = os.path.join(folder, "dataset_info.json")
        features = dict(_read_json(info_file).get("features") or {}) if os.path.exists(info_file) else {}
        tables = self._open(files)
        schema = tables[0].schema
        if not features and schema.metadata and b"huggingface" in schema.metadata:
            features = json.loads(schema.metadata[b"huggingface"]).get("info", {}).get("features", {})
        image_column = (
            image_column
            or next((c for c, f in features.items() if _type(f) == "Image"), None)
            or next((c for c in ("image", "img") if c in schema.names), None)
        )
        if image_column not in schema.names:
            raise DataError(
                f"hf-datasets: no image column {image_column!r} in {folder}; its columns are "
                f"{', '.join(schema.names)}; name it with image=<column>"
            )
        if label_column is None:
            label_column = next((c for c, f in features.items() if _type(f) == "ClassLabel"), None) or next(
                (c for c in _LABEL_NAMES if c in schema.names), None
            )
        elif label_column not in schema.names:
            raise DataError(
                f"hf-datasets: no label column {label_column!r} in {folder}; its columns are {', '.join(schema.names)}"
            )
        counts = [t.num_rows for t in tables]
        if label_column is not None:
            labels = (
                np.concatenate([t.column(label_column).to_numpy(zero_copy_only=False) for t in tables]).astype(np.int64)
                if sum(counts)
                else np.zeros(0, np.int64)
            )
            names_of_label = (
                features.get(label_column, {}).get("names") if isinstance(features.get(label_column), dict) else None
            )
        else:
            labels, names_of_label = np.full(sum(counts), -1, np.int64), None
        if names_of_label:
            class_names = [str(n) for n in names_of_label]
        elif classes:
            class_names = list(classes)
        else:
            class_names = [str(i) for i in range(int(labels.max()) + 1)] if labels.size and labels.max() >= 0 else []
        self._tables: list[Any] | None = tables
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.image_column, self.label_column, self.split = image_column, label_column, split
        super().__init__(
            labels,
            class_names,
            kind="hf-datasets",
            root=folder,
            files=files,
            settings={"split": split, "image_column": image_column, "label_column": label_column},
            transform=transform,
        )

    @staticmethod
    def _open(files: list[str]) -> list[Any]:
        import pyarrow as pa

        tables = []
        for f in files:
            try:
                tables.append(pa.ipc.open_stream(pa.memory_map(f)).read_all())
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataError(
                    f"hf-datasets: {f} is not an Arrow IPC stream (what save_to_disk writes): {exc}"
                ) from None
        return tables

    def __getstate__(self) -> dict:  # worker processes map the files again rather than receive the tables
        return {**self.__dict__, "_tables": None}

    def _locate(self, index: int) -> tuple[int, int]:
        k = int(np.searchsorted(self._starts, index, side="right")) - 1
        return k, int(index - self._starts[k])

    def encoded(self, index: int) -> bytes:
        if self._tables is None:
            self._tables = self._open(self.files)
        k, row = self._locate(index)
        value = self._tables[k].column(self.image_column)[row].as_py()
        if isinstance(value, dict):
            if value.get("bytes"):
                return bytes(value["bytes"])
            if value.get("path"):
                with open(value["path"], "rb") as f:  # an Image feature saved as a path only
                    return f.read()
            raise DataError("the image cell holds neither bytes nor a path")
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        raise DataError(f"the image column holds {type(value).__name__}, not an encoded image")

    def path(self, index: int) -> str:
        k, row = self._locate(index)
        return f"{self.files[k]}#{row}"


def _type(feature: Any) -> str | None:
    return feature.get("_type") if isinstance(feature, dict) else None


def open_hf_datasets(args: list[str], options: dict[str, str], context: Any) -> ArrowImageDataset:
    """The ``DataSpec.opener`` of this spec (:mod:`gradtrust.data.specs`): its fields, options and context → a dataset."""
    return ArrowImageDataset(
        args[0],
        args[1] if len(args) > 1 else None,
        context.transform,
        image_column=options.get("image"),
        label_column=options.get("label"),
        classes=context.class_names or None,
    )
