"""The end of a score run (:func:`gradtrust.runs.score_dataset`): its complete chunks merged into
``scores.parquet`` and ``logits.parquet``, and ``manifest.json`` written, each atomically; the file names of a
run folder; the :class:`RunSummary` it returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gradtrust import schema
from gradtrust.errors import GradTrustError
from gradtrust.runs import chunks as ch
from gradtrust.runs.folder import RUN_FILE, RunFolder, now
from gradtrust.runs.identity import library_versions

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

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("out_dir", "scores_path", "manifest_path"):
            out[key] = str(out[key])
        return out

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> RunSummary:
        """The inverse of :meth:`to_dict`."""
        return cls(**{**value, **{k: Path(value[k]) for k in ("out_dir", "scores_path", "manifest_path")}})


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


def finish_run(task: Any, folder: RunFolder, layout: ch.ChunkLayout, metas: list[dict],
               execution: dict) -> RunSummary:
    """Merge the chunks of a :class:`gradtrust.runs.score.ScoreTask` into ``scores.parquet`` (streamed,
    chunk by chunk) and write ``manifest.json``, whose ``method_info`` holds each method's display name and
    ``in_paper``."""
    out = folder.out
    methods: list[str] = []
    for meta in metas:
        methods += [m for m in meta["methods"] if m not in methods]
    nan_reasons = [m for m in methods if any(m in meta["nan_reasons"] for meta in metas)]
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
    failures = [{"index": i, "path": p, "reason": r} for m in metas for i, p, r in m["failures"]]
    sample_notes = [{"index": i, "path": p, "note": n} for m in metas for i, p, n in m.get("notes", [])]
    first = next((m for m in metas if m["rows"]), metas[0])
    accuracy = correct / labelled if labelled else None
    from gradtrust.data.open import describe_dataset

    identity = folder.identity
    dataset_section = describe_dataset(task.dataset)
    if task.dataset_info:
        dataset_section["info"] = task.dataset_info
    if "content_sha256" in identity["dataset"]:
        dataset_section["content_sha256"] = identity["dataset"]["content_sha256"]
    model = task.model
    model_section = model.describe()
    model_section["parameters_sha256"] = identity["model"]["parameters_sha256"]
    options = task.full_options
    manifest = {
        "files": {"scores": SCORES_FILE, "run": RUN_FILE, "chunks": f"{ch.CHUNK_DIR}/chunk-<first index>.parquet",
                  **({"logits": LOGITS_FILE} if has_logits else {})},
        "model": model_section,
        "weights_sha256": model.weights_sha256,
        "dataset": dataset_section,
        "class_map": task.class_map,
        "methods_requested": task.method_names if task.explicit else "all",
        "methods": {name: first["parameters"].get(name, {}) for name in methods},
        "method_info": {name: task.described[name] for name in methods if name in task.described},
        "skipped": first["skipped"],
        "notes": adjusted_options(options, {name: first["parameters"].get(name, {}) for name in methods}),
        "score_info": first["info"],
        "options": options,
        "columns": table_schema.names,
        "counts": {"samples": layout.num_samples, "scored": scored, "failed": len(failures),
                   "labelled": labelled, "correct": correct},
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
