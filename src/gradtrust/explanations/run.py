"""``explain_dataset``: the explanations (and VOICE statistics) of every sample of a dataset, in resumable atomic
chunks — an :class:`ExplainTask` run by :func:`gradtrust.runs.task.run_task`.

Output folder::

    <out>/run.json                       the run's identity (model, dataset, settings), written before any work
    <out>/chunks/chunk-<first>.parquet   one file per chunk of dataset positions, written atomically
    <out>/explanations.parquet           the chunks merged, sorted by ``index``
    <out>/manifest.json                  identity, counts, failures, timings
    <out>/images/<index>.png             overlays of the first ``save_images`` samples

Columns of ``explanations.parquet``: ``index``, ``path``, ``label`` (model class index, −1 if unknown),
``prediction`` (−1 where the logits are not finite), ``correct``, ``target`` (P), ``contrast`` (Q, −1 without a
contrast map), ``valid`` (finite logits), ``map_height``, ``map_width``, one ``map_<method>`` column per method
(the layer-resolution ReLU'd map, row-major, ``list<float32>`` of ``map_height·map_width`` values: small) and,
with VOICE, ``map_voice`` (the uncertainty map area-averaged to the layer's resolution, for galleries),
``voice_snr`` and ``voice_iou`` (float64; NaN where the logits are not finite, with the reason in
``nan_reason_voice_snr`` / ``nan_reason_voice_iou``). See ``docs/explanations.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.nn import functional as F

from gradtrust.data.classes import resolve_class_indices
from gradtrust.errors import InputError, ModelError
from gradtrust.estimator import check_int
from gradtrust.explanations.cams import (
    METHODS,
    Session,
    explain_session,
    parse_methods,
    prepare_images,
    runner_up,
)
from gradtrust.explanations.maps import minmax, upsample
from gradtrust.explanations.uncertainty import voice_session
from gradtrust.nn.state import scoring_state
from gradtrust.runs import chunks as ch
from gradtrust.runs.distributed import resolve_device
from gradtrust.runs.folder import RunFolder
from gradtrust.runs.identity import dataset_identity, library_versions, model_identity
from gradtrust.runs.task import model_labels, run_task
from gradtrust.schema import reason_column
from gradtrust.scores.packing import NONFINITE

EXPLANATIONS_FILE = "explanations.parquet"
IMAGES_DIR = "images"
FORMAT = "gradtrust.explanations/1"


@dataclass
class ExplainSummary:
    out_dir: Path
    explanations_path: Path
    manifest_path: Path
    num_samples: int
    num_explained: int
    num_failed: int
    images: list[Path]
    elapsed_s: float
    layer: str | None
    num_no_prediction: int = 0  # samples with non-finite logits (prediction −1, VOICE NaN)


def explain_dataset(model, dataset, out_dir, *, methods=METHODS, layer: str | None = None, contrast: int | None = None,
                    voice: bool = False, threshold: float = 0.1, save_images: int = 0, batch_size: int = 32,
                    num_workers: int = 0, device: str | None = None, force: bool = False, progress: bool = True,
                    chunk_size: int | None = None) -> ExplainSummary:
    """Explain every sample of ``dataset`` with ``model`` (a :class:`gradtrust.LoadedModel`) into ``out_dir``.

    ``contrast``: Q for every sample (a class index; a sample predicted as Q gets its runner-up, and the
    ``contrast`` column says which Q was used), or ``None`` for each sample's runner-up. A run stopped
    at any point resumes from its complete chunks; another run's folder is refused unless ``force``; under
    ``torchrun`` the chunks are shared between the processes (:func:`gradtrust.runs.task.run_task`).
    """
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold must be in [0, 1], got {threshold}.")
    batch_size = check_int("batch_size", batch_size)
    save_images = check_int("save_images", save_images, 0)
    module = getattr(model, "module", None)
    if not isinstance(module, torch.nn.Module) or not model.num_classes:
        raise ModelError("explain_dataset takes a gradtrust LoadedModel with a known number of classes.")
    if contrast is not None and not 0 <= int(contrast) < model.num_classes:
        raise InputError(f"contrast class {contrast} is outside 0..{model.num_classes - 1}.")
    dev = resolve_device(device, model.device)
    if model.device != dev:
        module.to(dev)
    task = ExplainTask(model, dataset, parse_methods(methods), layer, contrast, voice, threshold, save_images,
                       Path(out_dir).expanduser().resolve())
    return run_task(task, dataset, out_dir, batch_size=batch_size, chunk_size=chunk_size, num_workers=num_workers,
                    device=dev, force=force, progress=progress)


class ExplainTask:
    """Maps and VOICE of every sample, from one shared forward pass per batch (a :class:`gradtrust.runs.Task`)."""

    kind, format, verb, desc = "explain", FORMAT, "explained", "explaining"
    outputs: tuple[str, ...] = (EXPLANATIONS_FILE, IMAGES_DIR)

    def __init__(self, model: Any, dataset: Any, methods: list[str], layer: str | None, contrast: int | None,
                 voice: bool, threshold: float, save_images: int, out: Path):
        self.model, self.dataset, self.module = model, dataset, model.module
        self.methods, self.layer_arg, self.save_images = methods, layer, save_images
        self.contrast, self.voice, self.threshold = contrast, voice, threshold
        self.class_map = resolve_class_indices(dataset.classes, model.class_names, model.num_classes)
        self.layer: str | None = None
        self.closed_form: bool | None = None
        self.out = out  # where the overlays of the first ``save_images`` samples go

    def identity(self) -> dict:
        return {"model": model_identity(self.model, self.model.describe()), "dataset": dataset_identity(self.dataset),
                "settings": {"methods": self.methods, "layer": self.layer_arg, "contrast": self.contrast,
                             "voice": self.voice, "threshold": self.threshold, "save_images": self.save_images},
                "class_map": self.class_map}

    def explain(self, inputs: torch.Tensor) -> tuple[Any, Any]:
        x = prepare_images(self.module, inputs)
        with scoring_state(self.module):
            s = Session(self.module, x, self.layer_arg)
            q = None
            if self.contrast is not None:  # a sample predicted as Q gets its runner-up instead (documented)
                q = torch.full_like(s.logits[:, 0], self.contrast, dtype=torch.int64)
                q = torch.where(q == s.logits.argmax(1), runner_up(s.logits, s.logits.argmax(1)), q)
            ex = explain_session(s, x, self.methods, None, q)
            v = voice_session(s, x, None, self.threshold) if self.voice else None
        self.layer, self.closed_form = s.spec.name, s.weights.closed_form
        return ex, v

    def probe(self, inputs: torch.Tensor, index: int) -> None:
        self.explain(inputs)

    def batch(self, batch, inputs: torch.Tensor | None) -> list[dict[str, Any]]:
        if inputs is None:
            return []
        ex, v = self.explain(inputs)
        if self.save_images:
            _save_images(self.out, batch, ex, v, self.save_images, self.model.class_names)
        return _rows(batch, model_labels(batch.labels, self.class_map), ex, v)

    def chunk(self, parts: list[list[dict[str, Any]]]) -> tuple[pa.Table, dict]:
        rows = [row for part in parts for row in part]
        kinds = {"index": pa.int64(), "path": pa.string(), "label": pa.int64(), "prediction": pa.int64(),
                 "correct": pa.bool_(), "target": pa.int64(), "contrast": pa.int64(), "valid": pa.bool_(),
                 "map_height": pa.int32(), "map_width": pa.int32(), "voice_snr": pa.float64(),
                 "voice_iou": pa.float64(), reason_column("voice_snr"): pa.string(),
                 reason_column("voice_iou"): pa.string()}
        names = list(rows[0]) if rows else list(kinds)[:10]
        fields = [pa.field(name, kinds.get(name, pa.list_(pa.float32()))) for name in names]
        return pa.table({name: [r[name] for r in rows] for name in names}, schema=pa.schema(fields)), {}

    def finish(self, folder: RunFolder, layout: ch.ChunkLayout, metas: list[dict], execution: dict) -> ExplainSummary:
        out = folder.out
        tables = [ch.read_chunk_table(layout.path(out, k)).replace_schema_metadata(None)
                  for k, meta in enumerate(metas) if meta["rows"]]
        table = pa.concat_tables(tables) if tables else pa.table({"index": pa.array([], pa.int64())})
        table = table.sort_by("index")
        ch.atomic_write(out / EXPLANATIONS_FILE, lambda handle: pq.write_table(table, handle, compression="zstd"))
        failures = [{"index": i, "path": p, "reason": r} for m in metas for i, p, r in m["failures"]]
        images = sorted((out / IMAGES_DIR).glob("*.png"))
        no_prediction = int(table.num_rows - sum(table["valid"].to_pylist())) if "valid" in table.column_names else 0
        manifest = folder.write_manifest({
            "identity": folder.identity, "layer": self.layer, "closed_form": self.closed_form,
            "counts": {"samples": layout.num_samples, "explained": table.num_rows, "failed": len(failures),
                       "no_prediction": no_prediction},
            "failures": failures, "versions": library_versions(),
            "images": [str(p.relative_to(out)) for p in images], "execution": execution,
            "elapsed_s": execution["elapsed_s"]})
        return ExplainSummary(out, out / EXPLANATIONS_FILE, manifest, layout.num_samples, table.num_rows,
                              len(failures), images, execution["elapsed_s"], self.layer, no_prediction)


def _rows(batch, labels: torch.Tensor, ex, v) -> list[dict[str, Any]]:
    prediction = ex.prediction.cpu()
    q = ex.contrast.cpu() if ex.contrast is not None else torch.full_like(prediction, -1)
    maps = {m: ex.layer_maps[m].detach().float().cpu() for m in ex.layer_maps}
    h, w = next(iter(maps.values())).shape[-2:]
    # VOICE's uncertainty lives at input resolution; the gallery gets its area average at the layer's size
    voice_small = None if v is None else F.adaptive_avg_pool2d(v.uncertainty[:, None].float(), (h, w))[:, 0].cpu()
    out = []
    for j in range(prediction.shape[0]):
        valid = bool(ex.valid[j])
        # non-finite logits: no prediction (−1, never correct) and no VOICE statistics (NaN, with the reason), as
        # in scores.parquet
        predicted = int(prediction[j]) if valid else -1
        row = {"index": int(batch.indices[j]), "path": batch.paths[j], "label": int(labels[j]),
               "prediction": predicted, "correct": bool(labels[j] >= 0 and labels[j] == predicted),
               "target": int(ex.target[j]), "contrast": int(q[j]), "valid": valid,
               "map_height": int(h), "map_width": int(w)}
        for m, values in maps.items():
            row[f"map_{m}"] = values[j].flatten().numpy()
        if v is not None and voice_small is not None:
            row["map_voice"] = voice_small[j].flatten().numpy()
            nan = float("nan")
            row["voice_snr"], row["voice_iou"] = (float(v.snr[j]), float(v.iou[j])) if valid else (nan, nan)
            for name in ("voice_snr", "voice_iou"):
                row[reason_column(name)] = "" if valid else NONFINITE
        out.append(row)
    return out


def _save_images(out: Path, batch, ex, v, limit: int, class_names: list[str]) -> None:
    from gradtrust.explanations.overlay import save_overlay

    chosen = [j for j in range(len(batch.paths)) if int(batch.indices[j]) < limit]
    if not chosen:
        return
    full = {m: ex[m] for m in ex.layer_maps}
    for j in chosen:
        maps = {m: full[m][j].cpu().numpy() for m in full}
        if v is not None:
            maps["voice"] = v.uncertainty[j].cpu().numpy()
        p = int(ex.target[j])
        q = int(ex.contrast[j]) if ex.contrast is not None else None
        caption = (f"VOICE SNR {float(v.snr[j]):.2f}, IoU {float(v.iou[j]):.2f}" if v is not None else "")
        path = out / IMAGES_DIR / f"{int(batch.indices[j]):06d}.png"
        save_overlay(path, batch.inputs[j], maps, _name(class_names, p), None if q is None else _name(class_names, q),
                     caption)


def _name(names: list[str], index: int) -> str:
    return names[index] if 0 <= index < len(names) else str(index)


def load_maps(table, method: str) -> np.ndarray:
    """The ``map_<method>`` column of an ``explanations.parquet`` table as an (N, h, w) float32 array."""
    h, w = int(table["map_height"][0].as_py()), int(table["map_width"][0].as_py())
    values = np.asarray(table[f"map_{method}"].combine_chunks().flatten(), dtype=np.float32)
    return values.reshape(-1, h, w)


def full_resolution(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Stored layer-resolution maps → the normalised input-resolution maps ``explain`` returns."""
    return minmax(upsample(torch.from_numpy(np.array(maps, dtype=np.float32)), size)).numpy()
