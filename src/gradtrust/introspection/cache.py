"""Training features on disk, in resumable atomic chunks (what ``gradtrust introspect fit`` uses).

An :class:`IntrospectFeatures` task run by :func:`gradtrust.runs.task.run_task` into ``<fit>/features/``, so a
fit stopped at any point computes only the missing chunks when started again (the long part of fitting on a
large training set is these forward passes of ``f``). A cache of another identity is replaced (it is a cache:
the fit's own folder is what refuses other results).

Per chunk, for its readable samples: ``a`` (n, C) and ``h`` (n, D) float32 (the unit factors of
``r = vec(a hᵀ)``: ``C + D`` numbers per sample), ``y`` model class indices, ``logits`` (n, C) and ``valid``.
Fitting then holds the factors of all samples in memory, ``N·(C + D)`` floats.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from gradtrust.errors import DataError
from gradtrust.introspection.features import FeatureExtractor
from gradtrust.introspection.introspective import check_features
from gradtrust.nn.model import device_of
from gradtrust.runs import chunks as ch
from gradtrust.runs.folder import RunFolder
from gradtrust.runs.identity import dataset_identity, model_identity
from gradtrust.runs.task import model_labels, run_task

__all__ = ["IntrospectFeatures", "cached_features"]

_MATRICES = ("a", "h", "logits")


class IntrospectFeatures:
    """The introspective features of every training sample (a :class:`gradtrust.runs.Task`)."""

    kind, format, verb, desc = "introspect", "gradtrust.introspect-features/1", "computed", "introspective features"
    outputs: tuple[str, ...] = ()

    def __init__(self, model: Any, dataset: Any, class_map: list[int], layer: str | None) -> None:
        self.model, self.dataset, self.class_map, self.layer = model, dataset, list(class_map), layer
        self.extractor = FeatureExtractor(model.module, layer)

    def identity(self) -> dict:
        return {"model": model_identity(self.model, self.model.describe()), "dataset": dataset_identity(self.dataset),
                "layer": self.layer, "class_map": self.class_map}

    def probe(self, inputs: torch.Tensor, index: int) -> None:
        with torch.no_grad():
            self.extractor(inputs)

    def batch(self, batch, inputs: torch.Tensor | None) -> dict[str, np.ndarray] | None:
        if inputs is None:
            return None
        if bool((batch.labels < 0).any()):
            raise DataError("the training set has samples without a label; introspective learning needs labelled "
                            "training data.")
        with torch.no_grad():
            f = self.extractor(inputs)
        return {"a": f.a.cpu().numpy(), "h": f.h.cpu().numpy(), "logits": f.logits.cpu().numpy(),
                "y": model_labels(batch.labels, self.class_map).numpy(), "valid": f.valid.cpu().numpy()}

    def chunk(self, parts: list) -> tuple[pa.Table, dict]:
        parts = [p for p in parts if p is not None]
        columns: dict[str, Any] = {}
        for key in ("y", "valid", *_MATRICES):
            values = np.concatenate([p[key] for p in parts]) if parts else np.zeros((0, 0) if key in _MATRICES else 0)
            if key in _MATRICES:
                width = values.shape[1]
                values = pa.FixedSizeListArray.from_arrays(pa.array(values.astype(np.float32).reshape(-1)), width)
            columns[key] = values
        return pa.table(columns), {}

    def finish(self, folder: RunFolder, layout: ch.ChunkLayout, metas: list[dict], execution: dict) -> dict:
        return {"resumed_chunks": execution["resumed_chunks"], "failed": sum(len(m["failures"]) for m in metas)}


def cached_features(model: Any, dataset: Any, class_map: list[int], folder: str | Path, *, layer: str | None = None,
                    chunk_size: int = 4096, batch_size: int = 256, num_workers: int = 0, progress: bool = True
                    ) -> dict[str, Any]:
    """The training features of a gradtrust dataset for a :class:`gradtrust.LoadedModel`, resumable (see the
    module docstring).

    Returns ``{"a", "h", "y", "logits"}`` (CPU tensors, dataset order, unreadable samples left out),
    ``"layer"``, ``"closed_form"``, ``"resumed_chunks"`` and ``"failed"`` (count of unreadable samples).
    Raises DataError for unlabelled samples, and the errors of :func:`check_features`.
    """
    task = IntrospectFeatures(model, dataset, class_map, layer)
    done = run_task(task, dataset, folder, batch_size=batch_size, chunk_size=chunk_size, num_workers=num_workers,
                    device=device_of(model.module), replace=True, progress=progress)  # a cache of other features is replaced
    layout = ch.ChunkLayout(len(dataset), chunk_size, batch_size)
    arrays: dict[str, list[np.ndarray]] = {key: [] for key in ("a", "h", "y", "logits", "valid")}
    for k in range(layout.num_chunks):
        table = ch.read_chunk_table(layout.path(Path(folder).expanduser().resolve(), k))
        for key in arrays:
            column = table[key].combine_chunks()
            values = column.flatten().to_numpy() if key in _MATRICES else column.to_numpy(zero_copy_only=False)
            arrays[key].append(values.reshape(table.num_rows, -1) if key in _MATRICES else values)
    if not any(len(y) for y in arrays["y"]):
        raise DataError("no readable training sample: introspective learning needs labelled training data.")
    out = {key: torch.from_numpy(np.concatenate([p for p in parts if len(p)])) for key, parts in arrays.items()}
    check_features(out["y"], out["logits"].shape[1], out["valid"])
    return {"a": out["a"], "h": out["h"], "y": out["y"].long(), "logits": out["logits"],
            "layer": task.extractor.layer, "closed_form": bool(task.extractor.closed_form), **done}
