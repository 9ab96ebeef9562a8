"""``explain_dataset``: the explanations (and VOICE statistics) of every sample of a dataset, in resumable atomic
chunks — the chunk layout, atomic writes, run identity and ``torchrun`` sharding of :mod:`gradtrust.runs`.

Output folder::

    <out>/run.json                       the run's identity (model, dataset, settings), written before any work
    <out>/chunks/chunk-<first>.parquet   one file per chunk of dataset positions, written atomically
    <out>/explanations.parquet           the chunks merged, sorted by ``index``
    <out>/manifest.json                  identity, counts, failures, timings
    <out>/images/<index>.png             overlays of the first ``save_images`` samples

Columns of ``explanations.parquet``: ``index``, ``path``, ``label`` (model class index, −1 if unknown),
``prediction``, ``correct``, ``target`` (P), ``contrast`` (Q, −1 without a contrast map), ``valid`` (finite
logits), ``map_height``, ``map_width``, one ``map_<method>`` column per method (the layer-resolution ReLU'd map,
row-major, ``list<float32>`` of ``map_height·map_width`` values: small) and, with VOICE, ``map_voice`` (the
uncertainty map area-averaged to the layer's resolution, for galleries), ``voice_snr`` and ``voice_iou``
(float64). See ``docs/explanations.md``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from gradtrust.data.classes import resolve_class_indices
from gradtrust.data.open import describe_dataset
from gradtrust.data.samples import collate_samples
from gradtrust.errors import DataError, GradTrustError, InputError, ModelError
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
from gradtrust.runs.distributed import distributed_session, resolve_device
from gradtrust.runs.identity import (
    dataset_identity,
    identity_differences,
    library_versions,
    model_identity,
    sha256_of,
)

EXPLANATIONS_FILE = "explanations.parquet"
MANIFEST_FILE = "manifest.json"
RUN_FILE = "run.json"
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


def explain_dataset(model, dataset, out_dir, *, methods=METHODS, layer: str | None = None, contrast: int | None = None,
                    voice: bool = False, threshold: float = 0.1, save_images: int = 0, batch_size: int = 32,
                    num_workers: int = 0, device: str | None = None, force: bool = False, progress: bool = True,
                    chunk_size: int | None = None) -> ExplainSummary:
    """Explain every sample of ``dataset`` with ``model`` (a :class:`gradtrust.LoadedModel`) into ``out_dir``.

    ``contrast``: Q for every sample (a class index; a sample predicted as Q gets its runner-up, and the
    ``contrast`` column says which Q was used), or ``None`` for each sample's runner-up. A run stopped
    at any point resumes from its complete chunks; another run's folder is refused unless ``force``.
    """
    t0 = time.perf_counter()
    wanted = parse_methods(methods)
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold must be in [0, 1], got {threshold}.")
    if batch_size < 1 or save_images < 0:
        raise InputError("batch_size must be >= 1 and save_images >= 0.")
    chunk_size = chunk_size or batch_size * max(1, -(-1024 // batch_size))
    if len(dataset) == 0:
        raise DataError("the dataset holds no samples.")
    module = getattr(model, "module", None)
    if not isinstance(module, torch.nn.Module) or not model.num_classes:
        raise ModelError("explain_dataset takes a gradtrust LoadedModel with a known number of classes.")
    if contrast is not None and not 0 <= int(contrast) < model.num_classes:
        raise InputError(f"contrast class {contrast} is outside 0..{model.num_classes - 1}.")
    class_map = resolve_class_indices(dataset.classes, model.class_names, model.num_classes)
    dev = resolve_device(device, model.device)
    if model.device != dev:
        module.to(dev)
    settings = {"methods": wanted, "layer": layer, "contrast": contrast, "voice": voice, "threshold": threshold}
    identity = {"format": FORMAT, "model": model_identity(model, model.describe()),
                "dataset": dataset_identity(describe_dataset(dataset)), "settings": settings, "class_map": class_map,
                "layout": {"chunk_size": chunk_size, "batch_size": batch_size}}
    run_id = sha256_of(identity)
    out = Path(out_dir).expanduser().resolve()
    layout = ch.ChunkLayout(len(dataset), chunk_size, batch_size)
    explainer = _BatchExplainer(module, wanted, layer, contrast, voice, threshold)

    with distributed_session(dev) as ctx:
        if ctx.is_main:
            _probe(explainer, dataset, dev)
            _prepare(out, identity, run_id, force)
        ctx.barrier()
        mine = [k for k in range(layout.num_chunks) if k % ctx.world_size == ctx.rank]
        pending = [k for k in mine if _chunk_run(layout.path(out, k)) != run_id]
        images: list[Path] = []
        _explain_chunks(explainer, dataset, out, layout, pending, run_id, class_map, dev, num_workers,
                        progress and ctx.is_main, save_images, model.class_names, images)
        ctx.barrier()
        if not ctx.is_main:
            return ExplainSummary(out, out / EXPLANATIONS_FILE, out / MANIFEST_FILE, len(dataset), 0, 0, images,
                                  time.perf_counter() - t0, explainer.layer)
        rows, failures = _merge(out, layout, run_id)
        manifest = {"format": FORMAT, "run_id": run_id, "identity": identity, "layer": explainer.layer,
                    "closed_form": explainer.closed_form,
                    "counts": {"samples": len(dataset), "explained": rows, "failed": len(failures)},
                    "failures": failures, "versions": library_versions(),
                    "images": sorted(str(p.relative_to(out)) for p in (out / IMAGES_DIR).glob("*.png")),
                    "elapsed_s": round(time.perf_counter() - t0, 3)}
        ch.atomic_write_json(out / MANIFEST_FILE, manifest)
        return ExplainSummary(out, out / EXPLANATIONS_FILE, out / MANIFEST_FILE, len(dataset), rows, len(failures),
                              images, time.perf_counter() - t0, explainer.layer)


class _BatchExplainer:
    """Maps and VOICE of one batch from one shared forward pass."""

    def __init__(self, module: torch.nn.Module, methods: list[str], layer: str | None, contrast: int | None,
                 voice: bool, threshold: float):
        self.module, self.methods, self.layer_arg = module, methods, layer
        self.contrast, self.voice, self.threshold = contrast, voice, threshold
        self.layer: str | None = None
        self.closed_form: bool | None = None

    def __call__(self, inputs: torch.Tensor) -> tuple[Any, Any]:
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


def _probe(explainer: _BatchExplainer, dataset, dev: torch.device) -> None:
    """Explain one readable sample, so that a bad layer or input size fails before any output is written."""
    for i in range(min(len(dataset), 32)):
        sample = dataset[i]
        if sample.input is not None and not sample.error:
            explainer(sample.input.unsqueeze(0).to(dev))
            return
    raise DataError("none of the first 32 samples of the dataset could be read.")


def _prepare(out: Path, identity: dict, run_id: str, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"the output path {out} is a file; give a folder to --out.")
    run_file = out / RUN_FILE
    old = json.loads(run_file.read_text("utf-8")) if run_file.is_file() else None
    if old is not None and old.get("identity_sha256") != run_id and not force:
        diffs = identity_differences(old.get("identity", {}), identity)
        raise GradTrustError(f"the output folder {out} holds explanations with other settings "
                             f"({'; '.join(diffs[:5])}). Use another --out, or --force to discard them.")
    if force or (old is not None and old.get("identity_sha256") != run_id):
        ch.remove_outputs(out / ch.CHUNK_DIR, out / IMAGES_DIR, out / EXPLANATIONS_FILE, out / MANIFEST_FILE, run_file)
        old = None
    (out / ch.CHUNK_DIR).mkdir(parents=True, exist_ok=True)
    ch.remove_temporary_files(out / ch.CHUNK_DIR)
    if old is None:
        ch.atomic_write_json(run_file, {"identity_sha256": run_id, "identity": identity})


def _chunk_run(path: Path) -> str | None:
    meta = ch.read_chunk_meta(path)
    return None if meta is None else meta.get("run")


def _explain_chunks(explainer: _BatchExplainer, dataset, out: Path, layout: ch.ChunkLayout, pending: list[int],
                    run_id: str, class_map: list[int], dev: torch.device, num_workers: int, progress: bool,
                    save_images: int, class_names: list[str], images: list[Path]) -> None:
    if not pending:
        return
    from tqdm import tqdm

    sampler = ch.ChunkBatchSampler(layout, pending)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_samples,
                        pin_memory=dev.type == "cuda")
    to_model = torch.tensor(class_map, dtype=torch.int64)
    total = sum(layout.bounds(k)[1] - layout.bounds(k)[0] for k in pending)
    bar = tqdm(total=total, desc="explaining", unit="sample", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, mininterval=0.5)
    rows: list[dict[str, Any]] = []
    failures: list[list] = []
    try:
        # The loader first: its iterator must see StopIteration, or its pin-memory thread waits out a 5 s
        # timeout when it is shut down (5 of 7 s of a 6,000-image GPU run).
        for batch, (k, lo, hi, last) in zip(loader, sampler.plan(), strict=True):
            failures += [[int(i), str(p), str(r)] for i, p, r in batch.failures]
            if batch.inputs is not None:
                ex, v = explainer(batch.inputs.to(dev))
                labels = batch.labels
                mapped = torch.where(labels >= 0, to_model[labels.clamp(0, len(class_map) - 1)],
                                     torch.full_like(labels, -1))
                rows += _rows(batch, mapped, ex, v)
                _save_images(out, batch, ex, v, save_images, class_names, images)
            bar.update(hi - lo)
            if last:
                _write_chunk(layout.path(out, k), rows, failures, run_id, k, layout.bounds(k))
                rows, failures = [], []
    finally:
        bar.close()


def _rows(batch, labels: torch.Tensor, ex, v) -> list[dict[str, Any]]:
    prediction = ex.prediction.cpu()
    q = ex.contrast.cpu() if ex.contrast is not None else torch.full_like(prediction, -1)
    maps = {m: ex.layer_maps[m].detach().float().cpu() for m in ex.layer_maps}
    h, w = next(iter(maps.values())).shape[-2:]
    # VOICE's uncertainty lives at input resolution; the gallery gets its area average at the layer's size
    voice_small = None if v is None else F.adaptive_avg_pool2d(v.uncertainty[:, None].float(), (h, w))[:, 0].cpu()
    out = []
    for j in range(prediction.shape[0]):
        row = {"index": int(batch.indices[j]), "path": batch.paths[j], "label": int(labels[j]),
               "prediction": int(prediction[j]), "correct": bool(labels[j] >= 0 and labels[j] == prediction[j]),
               "target": int(ex.target[j]), "contrast": int(q[j]), "valid": bool(ex.valid[j]),
               "map_height": int(h), "map_width": int(w)}
        for m, values in maps.items():
            row[f"map_{m}"] = values[j].flatten().numpy()
        if v is not None and voice_small is not None:
            row["map_voice"] = voice_small[j].flatten().numpy()
            row["voice_snr"], row["voice_iou"] = float(v.snr[j]), float(v.iou[j])
        out.append(row)
    return out


def _write_chunk(path: Path, rows: list[dict[str, Any]], failures: list[list], run_id: str, k: int,
                 bounds: tuple[int, int]) -> None:
    columns: dict[str, Any] = {}
    fields = []
    kinds = {"index": pa.int64(), "path": pa.string(), "label": pa.int64(), "prediction": pa.int64(),
             "correct": pa.bool_(), "target": pa.int64(), "contrast": pa.int64(), "valid": pa.bool_(),
             "map_height": pa.int32(), "map_width": pa.int32(), "voice_snr": pa.float64(), "voice_iou": pa.float64()}
    names = list(rows[0]) if rows else list(kinds)[:10]
    for name in names:
        kind = kinds.get(name, pa.list_(pa.float32()))
        fields.append(pa.field(name, kind))
        columns[name] = [r[name] for r in rows]
    meta = {"run": run_id, "chunk": k, "start": bounds[0], "stop": bounds[1], "rows": len(rows),
            "failures": sorted(failures)}
    ch.write_chunk(path, columns, pa.schema(fields), meta)


def _merge(out: Path, layout: ch.ChunkLayout, run_id: str) -> tuple[int, list[dict]]:
    tables, failures = [], []
    for k in range(layout.num_chunks):
        meta = ch.read_chunk_meta(layout.path(out, k))
        if not meta or meta.get("run") != run_id:
            raise GradTrustError(f"chunk {layout.path(out, k)} is missing; run the same command again to finish it.")
        failures += [{"index": i, "path": p, "reason": r} for i, p, r in meta["failures"]]
        if meta["rows"]:
            tables.append(ch.read_chunk_table(layout.path(out, k)).replace_schema_metadata(None))
    table = pa.concat_tables(tables) if tables else pa.table({"index": pa.array([], pa.int64())})
    table = table.sort_by("index")
    ch.atomic_write(out / EXPLANATIONS_FILE, lambda handle: pq.write_table(table, handle, compression="zstd"))
    return table.num_rows, failures


def _save_images(out: Path, batch, ex, v, limit: int, class_names: list[str], images: list[Path]) -> None:
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
        images.append(path)


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
