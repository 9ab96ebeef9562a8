"""``score_dataset``: every trust score of every sample of a dataset — the :class:`ScoreTask` of the run engine
(:func:`gradtrust.runs.task.run_task`: chunks, resume, ``torchrun``, the folder), merged into ``scores.parquet``,
``logits.parquet`` and ``manifest.json`` (the layout: ``docs/architecture.md``, "Results").

Resume: run the same command again; batches are always cut the same way inside a chunk, so the merged
``scores.parquet`` is identical to that of an uninterrupted run (on the same device type and thread settings).
Labels: ``label`` is the *model's* output index of the sample's class (:func:`gradtrust.data.resolve_class_indices`),
``−1`` when unknown (``correct`` is then ``False``; ``accuracy`` is over labelled samples, ``None`` when there is
none). Unreadable samples get no row: they are listed, with the reason, under ``failures`` in ``manifest.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from gradtrust import schema
from gradtrust.cpu_memory import freed_memory_kept
from gradtrust.data.classes import resolve_class_indices
from gradtrust.errors import DataError, GradTrustError, InputError, ModelError
from gradtrust.estimator import check_int
from gradtrust.runs import chunks as ch
from gradtrust.runs.distributed import resolve_device
from gradtrust.runs.folder import RUN_FILE, RunConflictError, RunFolder, now
from gradtrust.runs.identity import (
    FORMAT_VERSION,
    dataset_identity,
    library_versions,
    model_identity,
    options_identity,
)
from gradtrust.runs.task import PeerError, default_chunk_size, model_labels, run_task
from gradtrust.scores.engine import resolve_methods
from gradtrust.scores.engine import score as score_batch
from gradtrust.scores.options import ScoreOptions, builtin_param_names

__all__ = ["PeerError", "RunConflictError", "RunSummary", "ScoreTask", "default_chunk_size", "score_dataset"]

SCORES_FILE, MANIFEST_FILE = schema.SCORES_FILE, schema.MANIFEST_FILE
LOGITS_FILE = "logits.parquet"


@dataclass
class RunSummary:
    """What :func:`score_dataset` did. ``accuracy`` is over labelled, scored samples (``None`` if none)."""

    out_dir: Path
    scores_path: Path
    manifest_path: Path
    num_samples: int
    num_scored: int
    num_failed: int
    accuracy: float | None
    resumed_chunks: int
    elapsed_s: float
    methods: list[str]


def adjusted_options(options: dict, parameters: dict[str, dict]) -> list[str]:
    """Notes for options a method used with another value than given (``topk`` is at most ``C − 1``)."""
    notes = []
    for method, params in parameters.items():
        for key, used in params.items():
            given = options.get(key)
            if given is not None and used is not None and key != "layer" and given != used:
                why = " (at most C − 1 counterfactual classes)" if key == "topk" else ""
                notes.append(f"{method}: {key}={given} was clamped to {used}{why}")
    return notes


def no_prediction_note(count: int) -> str:
    """What a run says about samples whose logits are not finite (manifest notes, console)."""
    return (f"{count} sample(s) have non-finite logits (NaN or inf): no prediction (prediction −1, "
            "nan_reason_prediction), counted as wrong in the accuracy; every score of theirs is NaN.")


def write_logits(out: Path, layout: ch.ChunkLayout, metas: list[dict]) -> bool:
    """``logits.parquet`` (``index``, ``logits``) from the chunks, streamed, rows in the order of
    ``scores.parquet``. Skipped (and a stale file removed) when a chunk has no logits (written by an older
    version and resumed): a run then simply has no logits, as before."""
    path = out / LOGITS_FILE
    rows = [(k, m) for k, m in enumerate(metas) if m["rows"]]
    widths = {m.get("logits") for _, m in rows}
    if not rows or None in widths or 0 in widths or len(widths) != 1:
        path.unlink(missing_ok=True)
        return False
    width = int(rows[0][1]["logits"])
    schema = pa.schema([pa.field("index", pa.int64()), pa.field("logits", pa.list_(pa.float32(), width))])

    def write(handle) -> None:
        with pq.ParquetWriter(handle, schema, compression="zstd") as writer:
            for k, _ in rows:
                table = ch.read_chunk_table(layout.path(out, k))
                writer.write_table(pa.Table.from_arrays([table["index"], table["logits"]], schema=schema))

    ch.atomic_write(path, write)
    return True


def check_score_options(options: dict | None) -> tuple[dict, dict]:
    """Validate the scoring options: ``(as given, every option with its value)``.

    "Every option" is every option this package declares plus those given: an installed plug-in's options
    left at their defaults are not part of a run's identity, so installing a plug-in does not make
    existing runs look changed.
    """
    given = dict(options or {})
    try:
        full = ScoreOptions.from_kwargs(**given)
    except GradTrustError:
        raise
    except (TypeError, ValueError) as exc:
        text = str(exc).split(" (got ")[0]
        raise InputError(f"bad scoring option: {text}") from None
    own = builtin_param_names()
    return given, {k: v for k, v in full.as_dict().items() if k in own or k in given}


class ScoreTask:
    """Every trust score of every sample (:func:`gradtrust.score` per batch) as a :class:`gradtrust.runs.task.Task`."""

    kind, format, verb, desc = "score", f"gradtrust.scores/{FORMAT_VERSION}", "scored", "scoring"
    outputs: tuple[str, ...] = (SCORES_FILE, LOGITS_FILE)

    def __init__(self, model: Any, dataset: Any, methods=None, options: dict | None = None,
                 dataset_info: dict | None = None) -> None:
        self.model, self.dataset, self.dataset_info = model, dataset, dataset_info
        self.given_options, self.full_options = check_score_options(options)
        chosen, self.explicit = resolve_methods(methods)
        self.method_names = [m.name for m in chosen]
        # How a report names them, so that reading the run needs neither the registry nor its plug-ins.
        self.described = {m.name: {"display_name": m.display_name, "in_paper": m.in_paper} for m in chosen}
        self.methods_arg = self.method_names if self.explicit else None
        classes = getattr(dataset, "classes", None)
        if not classes:
            raise DataError("the dataset has no `classes` (class names in label order).")
        if not isinstance(getattr(model, "module", None), torch.nn.Module):
            raise ModelError("score_dataset takes a gradtrust LoadedModel (gradtrust.load_model(...)).")
        if not model.num_classes:
            raise ModelError(f"the number of outputs of {model.spec or 'the model'} is unknown; pass --num-classes "
                             "(num_classes=...) to load_model.")
        self.class_map = resolve_class_indices(classes, model.class_names, model.num_classes)
        self._model_identity: dict | None = None

    def identity(self) -> dict:
        if self._model_identity is None:
            self._model_identity = model_identity(self.model, self.model.describe())
        return {"model": self._model_identity, "dataset": dataset_identity(self.dataset),
                "methods": {"requested": self.method_names, "explicit": self.explicit},
                "options": options_identity(self.full_options), "class_map": self.class_map}

    def probe(self, inputs: torch.Tensor, index: int) -> None:
        score_batch(self.model.module, inputs, self.methods_arg,  # a one-off: no CUDA graph for it
                    sample_ids=torch.tensor([index]), **{**self.given_options, "cuda_graphs": False})

    def batch(self, batch, inputs: torch.Tensor | None) -> tuple | None:
        if inputs is None:
            return None
        result = score_batch(self.model.module, inputs, self.methods_arg, sample_ids=batch.indices,
                             **self.given_options)
        return (batch.indices.numpy().astype(np.int64), list(batch.paths),
                model_labels(batch.labels, self.class_map).numpy().astype(np.int64),
                result.prediction.numpy().astype(np.int64), result.logits.detach().cpu().numpy().astype(np.float32),
                {name: values.detach().cpu().numpy().astype(np.float64) for name, values in result.scores.items()},
                {name: list(result.reasons[name]) for name in result.scores},
                (result.parameters, result.skipped, result.info),
                list(result.prediction_reasons) or [""] * len(batch.paths))

    def chunk(self, parts: list) -> tuple[pa.Table, dict]:
        parts = [p for p in parts if p is not None]

        def cat(i: int, dtype) -> np.ndarray:
            return np.concatenate([p[i] for p in parts]).astype(dtype) if parts else np.zeros(0, dtype)

        index, label, prediction = cat(0, np.int64), cat(2, np.int64), cat(3, np.int64)
        columns: dict[str, Any] = {"index": index, "path": [x for p in parts for x in p[1]], "label": label,
                                   "prediction": prediction, "correct": (label >= 0) & (label == prediction)}
        methods = list(parts[0][5]) if parts else []
        reasons = {name: [r for p in parts for r in p[6][name]] for name in methods}
        columns.update({name: np.concatenate([p[5][name] for p in parts]).astype(np.float64) for name in methods})
        # A sample with non-finite logits has prediction −1 (never right) and says why in nan_reason_prediction.
        reasons[schema.PREDICTION] = [r for p in parts for r in p[8]]
        nan_reasons = [name for name in (schema.PREDICTION, *methods) if any(reasons[name])]
        columns.update({schema.reason_column(name): reasons[name] for name in nan_reasons})
        fields = schema.arrow_schema(methods, nan_reasons)
        # The logits travel in the chunk (last column) and go to logits.parquet at the end; scores.parquet
        # keeps its columns.
        num_logits = int(parts[0][4].shape[1]) if parts else 0
        if num_logits:
            logits = cat(4, np.float32)
            columns["logits"] = pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)), num_logits)
            fields = fields.append(pa.field("logits", pa.list_(pa.float32(), num_logits)))
        parameters, skipped, info = parts[0][7] if parts else ({}, {}, {})
        return pa.table(columns, schema=fields), {
            "labelled": int((label >= 0).sum()), "correct": int(columns["correct"].sum()), "methods": methods,
            "no_prediction": int((prediction < 0).sum()),
            "nan_reasons": nan_reasons, "parameters": parameters, "skipped": skipped, "info": info,
            "logits": num_logits}

    def finish(self, folder: RunFolder, layout: ch.ChunkLayout, metas: list[dict], execution: dict) -> RunSummary:
        """Merge the chunks into ``scores.parquet`` (streamed, chunk by chunk) and write ``manifest.json``, whose
        ``method_info`` holds each method's display name and ``in_paper``."""
        # rank 0's allocator setting (gradtrust.keep_freed_memory; the CLI's default on a CPU)
        execution = {**execution, "keep_freed_memory": freed_memory_kept()}
        out = folder.out
        methods = list(dict.fromkeys(m for meta in metas for m in meta["methods"]))
        nan_reasons = [m for m in (schema.PREDICTION, *methods) if any(m in meta["nan_reasons"] for meta in metas)]
        table_schema = schema.arrow_schema(methods, nan_reasons)

        def write(handle) -> None:
            with pq.ParquetWriter(handle, table_schema, compression="zstd") as writer:
                for k, meta in enumerate(metas):
                    if not meta["rows"]:
                        continue
                    table = ch.read_chunk_table(layout.path(out, k))
                    columns = []
                    for field in table_schema:
                        if field.name in table.column_names:
                            columns.append(table[field.name])
                        elif schema.is_reason_column(field.name):
                            columns.append(pa.array([""] * table.num_rows, pa.string()))
                        else:
                            raise GradTrustError(f"chunk {layout.path(out, k)} has no column {field.name!r}; "
                                                 "rerun with --force.")
                    writer.write_table(pa.Table.from_arrays(columns, schema=table_schema))

        scores_path = out / SCORES_FILE
        ch.atomic_write(scores_path, write)
        has_logits = write_logits(out, layout, metas)

        scored = sum(m["rows"] for m in metas)
        labelled = sum(m["labelled"] for m in metas)
        correct = sum(m["correct"] for m in metas)
        no_prediction = sum(m.get("no_prediction", 0) for m in metas)
        failures = [{"index": i, "path": p, "reason": r} for m in metas for i, p, r in m["failures"]]
        sample_notes = [{"index": i, "path": p, "note": n} for m in metas for i, p, n in m.get("notes", [])]
        first = next((m for m in metas if m["rows"]), metas[0])
        accuracy = correct / labelled if labelled else None
        from gradtrust.data.open import describe_dataset

        identity = folder.identity
        dataset_section = describe_dataset(self.dataset)
        if self.dataset_info:
            dataset_section["info"] = self.dataset_info
        if "content_sha256" in identity["dataset"]:
            dataset_section["content_sha256"] = identity["dataset"]["content_sha256"]
        model = self.model
        model_section = model.describe()
        model_section["parameters_sha256"] = identity["model"]["parameters_sha256"]
        options = self.full_options
        manifest = {
            "files": {"scores": SCORES_FILE, "run": RUN_FILE, "chunks": f"{ch.CHUNK_DIR}/chunk-<first index>.parquet",
                      **({"logits": LOGITS_FILE} if has_logits else {})},
            "model": model_section,
            "weights_sha256": model.weights_sha256,
            "dataset": dataset_section,
            "class_map": self.class_map,
            "methods_requested": self.method_names if self.explicit else "all",
            "methods": {name: first["parameters"].get(name, {}) for name in methods},
            "method_info": {name: self.described[name] for name in methods if name in self.described},
            "skipped": first["skipped"],
            "notes": adjusted_options(options, {name: first["parameters"].get(name, {}) for name in methods})
            + ([no_prediction_note(no_prediction)] if no_prediction else []),
            "score_info": first["info"],
            "options": options,
            "columns": table_schema.names,
            "counts": {"samples": layout.num_samples, "scored": scored, "failed": len(failures),
                       "labelled": labelled, "correct": correct, "no_prediction": no_prediction},
            "accuracy": accuracy,
            "failures": failures,
            "sample_notes": sample_notes,
            "layout": {"chunk_size": layout.chunk_size, "batch_size": layout.batch_size,
                       "num_chunks": layout.num_chunks},
            "versions": library_versions(),
            "execution": {**execution, "run_created_at": folder.created_at(), "finished_at": now()},
        }
        manifest_path = folder.write_manifest(manifest)
        return RunSummary(out_dir=out, scores_path=scores_path, manifest_path=manifest_path,
                          num_samples=layout.num_samples, num_scored=scored, num_failed=len(failures),
                          accuracy=accuracy, resumed_chunks=int(execution["resumed_chunks"]), elapsed_s=0.0,
                          methods=methods)


def score_dataset(model, dataset, out_dir, *, methods=None, options: dict | None = None,
                  batch_size: int = 64, num_workers: int = 0, device: str | None = None, force: bool = False,
                  progress: bool = True, chunk_size: int | None = None,
                  dataset_info: dict | None = None) -> RunSummary:
    """Score every sample of ``dataset`` with ``model`` into ``out_dir`` (see the module docstring).

    ``model``: a :class:`gradtrust.models.LoadedModel` (moved to ``device`` when one is given); ``dataset``: a
    GradTrust dataset (``Sample`` items, ``classes``), e.g. from :func:`gradtrust.data.open.open_dataset`.
    ``methods``: ``None``/``"all"`` (every method that applies; the others are recorded as skipped), or names
    (list or comma-separated): explicitly named methods that cannot apply raise. ``options``: the fields of
    :class:`gradtrust.ScoreOptions`. ``device``: ``None`` = the model's device (under torchrun:
    ``cuda:LOCAL_RANK`` when CUDA is available, else CPU). ``force``: discard the results of a different run
    already in ``out_dir`` instead of refusing. ``progress``: a bar on stderr (rank 0 only). ``chunk_size``:
    samples per chunk file (default: the smallest multiple of ``batch_size`` ≥ 1024; a sharded dataset's shard
    size). ``dataset_info``: extra JSON-serialisable facts about the dataset for the manifest (not part of the
    run's identity).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) chunk ``k`` is scored by rank ``k mod WORLD_SIZE``; rank 0
    merges and writes ``scores.parquet`` and ``manifest.json``; every rank returns the same summary.

    Raises DataError for an empty dataset or classes that do not match the model's outputs (before anything
    is written), RunConflictError when ``out_dir`` holds another run, ModelError/InputError for an explicit
    method that does not apply, inputs the model cannot take…
    """
    t0 = time.perf_counter()
    batch_size = check_int("batch_size", batch_size)
    num_workers = check_int("num_workers", num_workers, 0)
    chunk_size = default_chunk_size(batch_size, dataset) if chunk_size is None else check_int("chunk_size", chunk_size)
    task = ScoreTask(model, dataset, methods, options, dataset_info)
    dev = resolve_device(device, model.device)
    if model.device != dev:
        model.module.to(dev)
    summary: RunSummary = run_task(task, dataset, out_dir, batch_size=batch_size, chunk_size=chunk_size,
                                   num_workers=num_workers, device=dev, force=force, progress=progress)
    summary.elapsed_s = time.perf_counter() - t0
    return summary
