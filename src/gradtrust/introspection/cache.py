"""Training features on disk, in resumable atomic chunks (what ``gradtrust introspect fit`` uses).

The dataset positions are cut into the runner's fixed chunks (:class:`gradtrust.runs.chunks.ChunkLayout`);
chunk ``k``'s factors are written, once all its samples are done, to ``features-<first position>.npz``
(atomically: temporary file, fsync, rename). A fit stopped at any point and started again with the same
settings loads the complete chunks and computes only the others — the long part of fitting on a large
training set is these forward passes of ``f``. ``features.json`` holds the identity of what is cached
(model weights, dataset, layer, chunk layout); a folder with another identity is emptied first.

Per chunk, for its readable samples: ``a`` (n, C) and ``h`` (n, D) float32 (the unit factors of
``r = vec(a hᵀ)``: ``C + D`` numbers per sample), ``y`` (n,) model class indices, ``logits`` (n, C) and
``valid`` (n,). Fitting then holds the factors of all samples in memory, ``N·(C + D)`` floats.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradtrust.errors import DataError
from gradtrust.introspection.features import FeatureExtractor
from gradtrust.introspection.introspective import check_features
from gradtrust.nn.model import device_of
from gradtrust.runs import chunks as ch

__all__ = ["cached_features"]

IDENTITY_FILE = "features.json"


def _chunk_path(folder: Path, layout: ch.ChunkLayout, k: int) -> Path:
    return folder / f"features-{layout.bounds(k)[0]:09d}.npz"


def cached_features(module: torch.nn.Module, dataset: Any, class_map: list[int], folder: str | Path, *,
                    identity: dict, layer: str | None = None, chunk_size: int = 4096, batch_size: int = 256,
                    num_workers: int = 0, progress: bool = True) -> dict[str, Any]:
    """The training features of a gradtrust dataset, resumable (see the module docstring).

    Returns ``{"a", "h", "y", "logits"}`` (CPU tensors, dataset order, unreadable samples left out),
    ``"layer"``, ``"closed_form"``, ``"resumed_chunks"`` and ``"failed"`` (count of unreadable samples).
    Raises DataError for unlabelled samples, and the errors of :func:`check_features`.
    """
    from tqdm import tqdm

    from gradtrust.data.samples import collate_samples

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ch.remove_temporary_files(folder)
    layout = ch.ChunkLayout(len(dataset), chunk_size, batch_size)
    ident = {"identity": identity, "layer": layer, "chunk_size": chunk_size, "batch_size": batch_size,
             "num_samples": len(dataset), "class_map": list(class_map)}
    old = None
    if (folder / IDENTITY_FILE).is_file():
        try:
            old = json.loads((folder / IDENTITY_FILE).read_text("utf-8"))
        except (OSError, ValueError):
            old = None
    if old != json.loads(json.dumps(ident, default=str)):
        for stale in folder.glob("features-*.npz"):
            stale.unlink()
        ch.atomic_write_json(folder / IDENTITY_FILE, ident)
    pending = [k for k in range(layout.num_chunks) if not _chunk_path(folder, layout, k).is_file()]
    device = device_of(module)
    extractor = FeatureExtractor(module, layer)
    to_model = torch.tensor(class_map, dtype=torch.int64)
    failed = 0
    if pending:
        sampler = ch.ChunkBatchSampler(layout, pending)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_samples,
                                             num_workers=num_workers)
        total = sum(layout.bounds(k)[1] - layout.bounds(k)[0] for k in pending)
        bar = tqdm(total=total, desc="introspective features", unit="sample", disable=not progress)
        parts: list[tuple] = []
        with torch.no_grad():
            # The loader first: its iterator must see StopIteration, or its pin-memory thread waits out a
            # 5 s timeout when it is shut down (5 of 7 s of a 6,000-image GPU run).
            for batch, (k, lo, hi, last) in zip(loader, sampler.plan(), strict=True):
                failed += len(batch.failures)
                if batch.inputs is not None:
                    if bool((batch.labels < 0).any()):
                        raise DataError("the training set has samples without a label; introspective learning "
                                        "needs labelled training data.")
                    f = extractor(batch.inputs.to(device))
                    parts.append((f.a.cpu(), f.h.cpu(), to_model[batch.labels], f.logits.cpu(), f.valid.cpu()))
                bar.update(hi - lo)
                if last:
                    _write_chunk(_chunk_path(folder, layout, k), parts)
                    parts = []
        bar.close()
    arrays: dict[str, list[np.ndarray]] = {key: [] for key in ("a", "h", "y", "logits", "valid")}
    for k in range(layout.num_chunks):
        with np.load(_chunk_path(folder, layout, k)) as data:
            if data["y"].shape[0]:
                for key in arrays:
                    arrays[key].append(data[key])
    if not arrays["y"]:
        raise DataError("no readable training sample: introspective learning needs labelled training data.")
    out = {key: torch.from_numpy(np.concatenate(parts)) for key, parts in arrays.items()}
    check_features(out["y"], out["logits"].shape[1], out["valid"])
    if extractor.closed_form is None:  # every chunk came from the cache: find the layer on one sample
        sample = next(s for s in (dataset[i] for i in range(len(dataset))) if s.input is not None)
        with torch.no_grad():
            extractor(sample.input.unsqueeze(0).to(device))
    return {"a": out["a"], "h": out["h"], "y": out["y"].long(), "logits": out["logits"], "layer": extractor.layer,
            "closed_form": bool(extractor.closed_form), "resumed_chunks": layout.num_chunks - len(pending),
            "failed": failed}


def _write_chunk(path: Path, parts: list[tuple]) -> None:
    if parts:
        a, h, y, logits, valid = (torch.cat([p[i] for p in parts]).numpy() for i in range(5))
    else:  # every sample of the chunk was unreadable
        a = h = logits = np.zeros((0, 0), np.float32)
        y, valid = np.zeros(0, np.int64), np.zeros(0, bool)
    buffer = io.BytesIO()
    np.savez(buffer, a=a, h=h, y=y, logits=logits, valid=valid)
    ch.atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
