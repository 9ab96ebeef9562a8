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
``nan_reason_voice_snr`` / ``nan_reason_voice_iou``). The interventions (``occlusion``, ``rise``, ``shape``) are
stored at input resolution, signed, with their own ``map_height_<method>``/``map_width_<method>`` when that
differs from the shared size.

With ``evaluate=True`` (``gradtrust explain --evaluate``) every map and the ``random`` and ``centre`` baselines are
judged by masking (:func:`gradtrust.explanations.evaluate.evaluate_explanations`) and two more files are written::

    <out>/evaluation.parquet             one row per sample and map: index, method, baseline, target, probability,
                                         the metric columns and the deletion/insertion curves
    <out>/evaluation_summary.csv         per map and metric: mean, bootstrap CI, paired difference to the random map

See ``docs/explanations.md``.
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
from gradtrust.evaluation.interventions import summarise_interventions
from gradtrust.explanations.cams import (
    CAM_METHODS,
    Session,
    add_interventions,
    explain_session,
    forward_explanation,
    parse_methods,
    prepare_images,
    runner_up,
)
from gradtrust.explanations.evaluate import METRIC_COLUMNS, evaluate_explanations, parse_metrics
from gradtrust.explanations.maps import minmax, upsample
from gradtrust.explanations.perturbation import PERTURBATION_METHODS, PerturbationOptions
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
EVALUATION_FILE = "evaluation.parquet"
EVALUATION_SUMMARY = "evaluation_summary.csv"
EVAL_PREFIX = "eval."  # chunk columns eval.<map>.<column>, gathered into evaluation.parquet at the end
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


def explain_dataset(model, dataset, out_dir, *, methods=CAM_METHODS, layer: str | None = None,
                    contrast: int | None = None, voice: bool = False, threshold: float = 0.1, save_images: int = 0,
                    batch_size: int = 32, num_workers: int = 0, device: str | None = None, force: bool = False,
                    progress: bool = True, chunk_size: int | None = None,
                    perturbation: PerturbationOptions | None = None, evaluate: bool = False,
                    metrics: str | list[str] | None = None, steps: int | None = None, seed: int = 0,
                    resamples: int = 1000) -> ExplainSummary:
    """Explain every sample of ``dataset`` with ``model`` (a :class:`gradtrust.LoadedModel`) into ``out_dir``.

    ``contrast``: Q for every sample (a class index; a sample predicted as Q gets its runner-up, and the
    ``contrast`` column says which Q was used), or ``None`` for each sample's runner-up. A run stopped
    at any point resumes from its complete chunks; another run's folder is refused unless ``force``; under
    ``torchrun`` the chunks are shared between the processes (:func:`gradtrust.runs.task.run_task`).
    ``perturbation``: the options of occlusion, RISE and SHAPE (recorded in the run's identity when one runs).
    ``evaluate``: judge every map by masking (``metrics``, ``steps`` and ``seed`` as in
    :func:`~gradtrust.explanations.evaluate.evaluate_explanations`; the random baseline of the batch starting at
    dataset position ``i`` uses seed ``seed + i``) and summarise with ``resamples`` bootstrap resamples.
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
    evaluation = None
    if evaluate:
        evaluation = {"metrics": parse_metrics(metrics), "steps": None if steps is None else check_int("steps", steps),
                      "seed": check_int("seed", seed, 0), "resamples": check_int("resamples", resamples, 0)}
    task = ExplainTask(model, dataset, parse_methods(methods), layer, contrast, voice, threshold, save_images,
                       Path(out_dir).expanduser().resolve(), perturbation or PerturbationOptions(), evaluation,
                       progress)
    return run_task(task, dataset, out_dir, batch_size=batch_size, chunk_size=chunk_size, num_workers=num_workers,
                    device=dev, force=force, progress=progress)


class ExplainTask:
    """Maps and VOICE of every sample, from one shared forward pass per batch (a :class:`gradtrust.runs.Task`)."""

    kind, format, verb, desc = "explain", FORMAT, "explained", "explaining"
    outputs: tuple[str, ...] = (EXPLANATIONS_FILE, IMAGES_DIR)

    def __init__(self, model: Any, dataset: Any, methods: list[str], layer: str | None, contrast: int | None,
                 voice: bool, threshold: float, save_images: int, out: Path,
                 perturbation: PerturbationOptions | None = None, evaluation: dict | None = None,
                 progress: bool = False):
        self.model, self.dataset, self.module = model, dataset, model.module
        self.methods, self.layer_arg, self.save_images = methods, layer, save_images
        self.contrast, self.voice, self.threshold = contrast, voice, threshold
        self.class_map = resolve_class_indices(dataset.classes, model.class_names, model.num_classes)
        self.layer: str | None = None
        self.closed_form: bool | None = None
        self.out = out  # where the overlays of the first ``save_images`` samples go
        self.perturbation = perturbation or PerturbationOptions()
        self.evaluation = evaluation  # None, or the settings of evaluate_explanations
        self.progress = progress

    def identity(self) -> dict:
        settings: dict[str, Any] = {"methods": self.methods, "layer": self.layer_arg, "contrast": self.contrast,
                                    "voice": self.voice, "threshold": self.threshold, "save_images": self.save_images}
        if set(self.methods) & set(PERTURBATION_METHODS):  # only then: earlier runs keep their identity
            settings["perturbation"] = self.perturbation.identity()
        if self.evaluation is not None:
            settings["evaluation"] = dict(self.evaluation)
        return {"model": model_identity(self.model, self.model.describe()), "dataset": dataset_identity(self.dataset),
                "settings": settings, "class_map": self.class_map}

    def explain(self, inputs: torch.Tensor) -> tuple[Any, Any]:
        x = prepare_images(self.module, inputs)
        cams = [m for m in self.methods if m in CAM_METHODS]
        v = None
        with scoring_state(self.module):
            if cams or self.voice:
                s = Session(self.module, x, self.layer_arg)
                q = None
                if self.contrast is not None:  # a sample predicted as Q gets its runner-up instead (documented)
                    q = torch.full_like(s.logits[:, 0], self.contrast, dtype=torch.int64)
                    q = torch.where(q == s.logits.argmax(1), runner_up(s.logits, s.logits.argmax(1)), q)
                ex = explain_session(s, x, cams, None, q)
                v = voice_session(s, x, None, self.threshold) if self.voice else None
                self.layer, self.closed_form = s.spec.name, s.weights.closed_form
            else:
                ex = forward_explanation(self.module, x)
            add_interventions(self.module, x, ex, self.methods, self.perturbation, self.progress)
        return ex, v

    def probe(self, inputs: torch.Tensor, index: int) -> None:
        self.explain(inputs)

    def batch(self, batch, inputs: torch.Tensor | None) -> list[dict[str, Any]]:
        if inputs is None:
            return []
        ex, v = self.explain(inputs)
        labels = model_labels(batch.labels, self.class_map)
        if self.save_images:
            _save_images(self.out, batch, ex, v, self.save_images, self.model.class_names, labels)
        rows = _rows(batch, labels, ex, v)
        if self.evaluation is not None:
            self.evaluate(inputs, ex, batch, rows)
        return rows

    def evaluate(self, inputs: torch.Tensor, ex, batch, rows: list[dict[str, Any]]) -> None:
        """``eval.<map>.<column>`` values of every map and baseline, added to the batch's rows."""
        settings = self.evaluation
        assert settings is not None
        table = evaluate_explanations(self.module, inputs, ex, target=ex.target, metrics=settings["metrics"],
                                      steps=settings["steps"], seed=settings["seed"] + int(batch.indices[0]),
                                      progress=self.progress)
        columns = [c for group in settings["metrics"] for c in METRIC_COLUMNS[group]]
        for record in table.to_dict("records"):
            row = rows[int(record["sample"])]
            row[f"{EVAL_PREFIX}{record['method']}.probability"] = float(record["probability"])
            for column in columns:
                value = record[column]
                row[f"{EVAL_PREFIX}{record['method']}.{column}"] = (np.asarray(value, np.float32)
                                                                     if column.endswith("_curve") else float(value))

    def chunk(self, parts: list[list[dict[str, Any]]]) -> tuple[pa.Table, dict]:
        rows = [row for part in parts for row in part]
        kinds = {"index": pa.int64(), "path": pa.string(), "label": pa.int64(), "prediction": pa.int64(),
                 "correct": pa.bool_(), "target": pa.int64(), "contrast": pa.int64(), "valid": pa.bool_(),
                 "map_height": pa.int32(), "map_width": pa.int32(), "voice_snr": pa.float64(),
                 "voice_iou": pa.float64(), reason_column("voice_snr"): pa.string(),
                 reason_column("voice_iou"): pa.string()}
        names = list(rows[0]) if rows else list(kinds)[:10]
        fields = [pa.field(name, kinds.get(name, _column_type(name))) for name in names]
        return pa.table({name: [r[name] for r in rows] for name in names}, schema=pa.schema(fields)), {}

    def finish(self, folder: RunFolder, layout: ch.ChunkLayout, metas: list[dict], execution: dict) -> ExplainSummary:
        out = folder.out
        tables = [ch.read_chunk_table(layout.path(out, k)).replace_schema_metadata(None)
                  for k, meta in enumerate(metas) if meta["rows"]]
        table = pa.concat_tables(tables) if tables else pa.table({"index": pa.array([], pa.int64())})
        table = table.sort_by("index")
        evaluated = [c for c in table.column_names if c.startswith(EVAL_PREFIX)]
        summary_rows = None
        if evaluated:
            assert self.evaluation is not None
            long = _evaluation_table(table, evaluated)
            ch.atomic_write(out / EVALUATION_FILE, lambda handle: pq.write_table(long, handle, compression="zstd"))
            numbers = long.drop_columns([c for c in long.column_names if c.endswith("_curve")]).to_pandas()
            summary = summarise_interventions(numbers.rename(columns={"index": "sample"}),
                                              n_resamples=self.evaluation["resamples"], seed=self.evaluation["seed"])
            text = summary.to_csv(index=False, float_format="%.6g")
            ch.atomic_write(out / EVALUATION_SUMMARY, lambda handle: handle.write(text.encode()))
            summary_rows = len(summary)
            table = table.drop_columns(evaluated)
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
            **({"evaluation": {"file": EVALUATION_FILE, "summary": EVALUATION_SUMMARY, "rows": summary_rows}}
               if summary_rows is not None else {}),
            "elapsed_s": execution["elapsed_s"]})
        return ExplainSummary(out, out / EXPLANATIONS_FILE, manifest, layout.num_samples, table.num_rows,
                              len(failures), images, execution["elapsed_s"], self.layer, no_prediction)


def _rows(batch, labels: torch.Tensor, ex, v) -> list[dict[str, Any]]:
    prediction = ex.prediction.cpu()
    q = ex.contrast.cpu() if ex.contrast is not None else torch.full_like(prediction, -1)
    maps = {m: ex.layer_maps[m].detach().float().cpu() for m in ex.layer_maps}
    h, w = next(iter(maps.values())).shape[-2:]
    own_size = {m: tuple(v.shape[-2:]) for m, v in maps.items() if tuple(v.shape[-2:]) != (h, w)}
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
            if m in own_size:
                row[f"map_height_{m}"], row[f"map_width_{m}"] = own_size[m]
        if v is not None and voice_small is not None:
            row["map_voice"] = voice_small[j].flatten().numpy()
            nan = float("nan")
            row["voice_snr"], row["voice_iou"] = (float(v.snr[j]), float(v.iou[j])) if valid else (nan, nan)
            for name in ("voice_snr", "voice_iou"):
                row[reason_column(name)] = "" if valid else NONFINITE
        out.append(row)
    return out


def _column_type(name: str) -> pa.DataType:
    """The Arrow type of a column outside the fixed ones: map sizes, evaluation numbers, else a float32 list."""
    if name.startswith(("map_height_", "map_width_")):
        return pa.int32()
    if name.startswith(EVAL_PREFIX) and not name.endswith("_curve"):
        return pa.float64()
    return pa.list_(pa.float32())


def _evaluation_table(table: pa.Table, columns: list[str]) -> pa.Table:
    """The ``eval.<map>.<column>`` chunk columns as one row per sample and map (``evaluation.parquet``)."""
    from gradtrust.evaluation.interventions import BASELINES

    by_map: dict[str, list[str]] = {}
    for name in columns:
        method, column = name[len(EVAL_PREFIX):].rsplit(".", 1)
        by_map.setdefault(method, []).append(column)
    parts = []
    for method, cols in by_map.items():
        n = table.num_rows
        part = {"index": table["index"], "method": pa.array([method] * n), "baseline": pa.array([method in BASELINES] * n),
                "target": table["target"]}
        part.update({c: table[f"{EVAL_PREFIX}{method}.{c}"] for c in cols})
        parts.append(pa.table(part))
    return pa.concat_tables(parts)


def _save_images(out: Path, batch, ex, v, limit: int, class_names: list[str], labels: torch.Tensor) -> None:
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
        label = int(labels[j])
        save_overlay(path, batch.inputs[j], maps, _name(class_names, p), None if q is None else _name(class_names, q),
                     caption, true_name=_name(class_names, label) if label >= 0 else None)


def _name(names: list[str], index: int) -> str:
    return names[index] if 0 <= index < len(names) else str(index)


def load_maps(table, method: str) -> np.ndarray:
    """The ``map_<method>`` column of an ``explanations.parquet`` table as an (N, h, w) float32 array."""
    own = f"map_height_{method}" in table.column_names  # an intervention map at input resolution
    h = int(table[f"map_height_{method}" if own else "map_height"][0].as_py())
    w = int(table[f"map_width_{method}" if own else "map_width"][0].as_py())
    values = np.asarray(table[f"map_{method}"].combine_chunks().flatten(), dtype=np.float32)
    return values.reshape(-1, h, w)


def full_resolution(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Stored layer-resolution maps → the normalised input-resolution maps ``explain`` returns."""
    return minmax(upsample(torch.from_numpy(np.array(maps, dtype=np.float32)), size)).numpy()
