"""``score_dataset``: every trust score of every sample of a dataset, in resumable atomic chunks.

Output folder::

    <out>/run.json                          the run's identity, written (atomically) before any work
    <out>/chunks/chunk-000000000.parquet    one file per chunk of ``chunk_size`` dataset positions, written
    <out>/chunks/chunk-000001024.parquet    atomically when the chunk is complete; its failures live in
    …                                       the file's Parquet metadata (:mod:`gradtrust.runner.chunks`)
    <out>/scores.parquet                    all chunks merged, sorted by ``index`` (written atomically)
    <out>/logits.parquet                    ``index`` and the model's ``logits`` (float32 list per row), in
                                            the same row order (calibration needs the probability vector)
    <out>/manifest.json                     identity, counts, failures, versions, timings (atomically)

Resume: run the same command again. Complete chunks are kept, the others are scored again; batches are
always cut the same way inside a chunk (``[start + j·batch_size, …)``), so the merged ``scores.parquet`` is
identical to that of an uninterrupted run (on the same device type and thread settings). A folder that
holds a run with another identity (model, weights, dataset, methods, options, batch or chunk size — see
:mod:`gradtrust.runner.identity`) is refused unless ``force=True``, which discards its results first.

Labels: ``label`` is the *model's* output index of the sample's class (the dataset's classes are mapped
with :func:`gradtrust.data.resolve_class_indices` before any work), ``−1`` when the dataset does not know
the label; ``correct`` is then ``False``, and ``accuracy`` is computed over labelled samples only
(``None`` when there is none). Samples whose file cannot be read get no row: they are listed, with the
reason, under ``failures`` in ``manifest.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader

from gradtrust import schema
from gradtrust.cpu_memory import freed_memory_kept
from gradtrust.data.classes import resolve_class_indices
from gradtrust.data.open import describe_dataset
from gradtrust.data.samples import collate_samples
from gradtrust.errors import DataError, GradTrustError, InputError, ModelError
from gradtrust.runner import chunks as ch
from gradtrust.runner.distributed import DistContext, distributed_session, resolve_device
from gradtrust.runner.finish import LOGITS_FILE, MANIFEST_FILE, RUN_FILE, SCORES_FILE, RunSummary, finish_run, now
from gradtrust.runner.identity import (
    FORMAT_VERSION,
    dataset_identity,
    identity_differences,
    model_identity,
    options_identity,
    sha256_of,
)
from gradtrust.scores.engine import resolve_methods
from gradtrust.scores.engine import score as score_batch
from gradtrust.scores.options import ScoreOptions, builtin_param_names

__all__ = ["DEFAULT_CHUNK_SAMPLES", "PeerError", "RunConflictError", "RunSummary", "default_chunk_size",
           "score_dataset"]

DEFAULT_CHUNK_SAMPLES = 1024
_PROBE_TRIES = 32


class RunConflictError(GradTrustError):
    """The output folder holds results of a different run (use another output folder or ``force``)."""


class PeerError(GradTrustError):
    """Under torchrun: another rank failed (that rank reports the cause); raised on the other ranks."""


def default_chunk_size(batch_size: int) -> int:
    """The smallest multiple of ``batch_size`` that is at least 1024 samples."""
    return batch_size * max(1, -(-DEFAULT_CHUNK_SAMPLES // batch_size))


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


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


# --------------------------------------------------------------------------- the run


def score_dataset(model, dataset, out_dir, *, methods=None, options: dict | None = None,
                  batch_size: int = 64, num_workers: int = 0, device: str | None = None, force: bool = False,
                  progress: bool = True, chunk_size: int | None = None,
                  dataset_info: dict | None = None) -> RunSummary:
    """Score every sample of ``dataset`` with ``model`` into ``out_dir`` (see the module docstring).

    Args:
        model: a :class:`gradtrust.models.LoadedModel` (moved to ``device`` when one is given).
        dataset: a GradTrust dataset (``Sample`` items, ``classes``), e.g. from
            :func:`gradtrust.data.open.open_dataset`.
        out_dir: the output folder (created).
        methods: ``None``/``"all"`` (every method that applies; the others are recorded as skipped), or
            names (list or comma-separated): explicitly named methods that cannot apply raise.
        options: scoring options (:class:`gradtrust.ScoreOptions` fields: ``odin_temperature``,
            ``mc_samples``, ``topk``, ``layer``, ``seed``, ``pnorm_p``…).
        batch_size: samples per forward pass.
        num_workers: DataLoader worker processes that read and transform the samples.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``…; ``None`` = the model's device (under torchrun:
            ``cuda:LOCAL_RANK`` when CUDA is available, else CPU).
        force: discard the results of a different run already in ``out_dir`` instead of refusing.
        progress: show a progress bar (samples/s and ETA) on stderr (rank 0 only).
        chunk_size: samples per chunk file (default: the smallest multiple of ``batch_size`` ≥ 1024).
        dataset_info: extra JSON-serialisable facts about the dataset for the manifest (not part of the
            run's identity).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) chunk ``k`` is scored by rank ``k mod WORLD_SIZE``; rank 0
    merges and writes ``scores.parquet`` and ``manifest.json``; every rank returns the same summary.

    Raises:
        DataError: an empty dataset, classes that do not match the model's outputs (before anything is
            written); RunConflictError: ``out_dir`` holds another run; ModelError/InputError: an explicit
            method that does not apply, inputs the model cannot take…
    """
    t0 = time.perf_counter()
    started_at = now()
    batch_size = _positive_int(batch_size, "batch_size")
    num_workers = _positive_int(num_workers, "num_workers", 0)
    chunk_size = default_chunk_size(batch_size) if chunk_size is None else _positive_int(chunk_size, "chunk_size")
    given_options, full_options = check_score_options(options)
    chosen, explicit = resolve_methods(methods)
    method_names = [m.name for m in chosen]
    # How a report names them, so that reading the run needs neither the registry nor its plug-ins.
    described = {m.name: {"display_name": m.display_name, "in_paper": m.in_paper} for m in chosen}
    methods_arg = method_names if explicit else None

    num_samples = len(dataset)
    if num_samples == 0:
        raise DataError("the dataset holds no samples.")
    classes = getattr(dataset, "classes", None)
    if not classes:
        raise DataError("the dataset has no `classes` (class names in label order).")
    module = getattr(model, "module", None)
    if not isinstance(module, torch.nn.Module):
        raise ModelError("score_dataset takes a gradtrust LoadedModel (gradtrust.load_model(...)).")
    if not model.num_classes:
        raise ModelError(f"the number of outputs of {model.spec or 'the model'} is unknown; pass --num-classes "
                         "(num_classes=...) to load_model.")
    class_map = resolve_class_indices(classes, model.class_names, model.num_classes)

    dev = resolve_device(device, model.device)
    with distributed_session(dev) as ctx:
        if model.device != dev:
            module.to(dev)
        description = describe_dataset(dataset)
        identity: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "model": model_identity(model, model.describe()),
            "dataset": dataset_identity(description),
            "methods": {"requested": method_names, "explicit": explicit},
            "options": options_identity(full_options),
            "class_map": class_map,
            "layout": {"chunk_size": chunk_size, "batch_size": batch_size},
        }
        run_id = sha256_of(identity)
        out = Path(out_dir).expanduser().resolve()
        layout = ch.ChunkLayout(num_samples, chunk_size, batch_size)

        if len(set(ctx.all_gather(run_id))) != 1:
            raise GradTrustError("the processes do not score the same run (their models, data or options "
                                 "differ: a random-weight model must be initialised from the same seed on "
                                 "every rank).")

        # Rank 0 checks the model on one sample and prepares the folder; the others wait for its verdict.
        # (Under torchrun every failure is shared before it is raised, so that no rank waits forever.)
        problem = None
        if ctx.is_main:
            try:
                _probe(module, dataset, dev, methods_arg, given_options)
                _prepare_out_dir(out, identity, run_id, force, started_at)
            except Exception as exc:
                if not ctx.active:
                    raise
                problem = exc
        verdict = ctx.broadcast(None if problem is None else f"{type(problem).__name__}: {problem}")
        if problem is not None:
            raise problem
        if verdict is not None:
            raise PeerError(f"rank 0 stopped the run: {verdict}")

        mine = [k for k in range(layout.num_chunks) if k % ctx.world_size == ctx.rank]
        pending = [k for k in mine if not _chunk_done(out, layout, k, run_id)]
        resumed = len(mine) - len(pending)
        failure = None
        try:
            _score_chunks(module, dataset, out, layout, pending, run_id, class_map, methods_arg, given_options,
                          dev, num_workers, progress and ctx.is_main, ctx)
        except Exception as exc:
            if not ctx.active:
                raise
            failure = exc
        statuses = ctx.all_gather((None if failure is None else f"{type(failure).__name__}: {failure}", resumed))
        if failure is not None:
            raise failure
        bad = [(rank, s[0]) for rank, s in enumerate(statuses) if s[0] is not None]
        if bad:
            raise PeerError("; ".join(f"rank {r} failed: {m}" for r, m in bad))
        resumed_total = sum(s[1] for s in statuses)

        summary = None
        problem = None
        if ctx.is_main:
            try:
                execution = {
                    "device": str(dev), "world_size": ctx.world_size, "num_workers": num_workers,
                    "resumed_chunks": resumed_total, "started_at": started_at,
                    # rank 0's allocator setting (gradtrust.keep_freed_memory; the CLI's default on a CPU)
                    "keep_freed_memory": freed_memory_kept(),
                }
                summary = finish_run(out, layout, run_id, model, identity["model"]["parameters_sha256"], description,
                                  dataset_info, class_map, method_names if explicit else "all", full_options,
                                  execution, t0, described)
            except Exception as exc:
                if not ctx.active:
                    raise
                problem = exc
        shared = ctx.broadcast(None if summary is None else summary.to_dict())
        if problem is not None:
            raise problem
        if shared is None:
            raise PeerError("rank 0 could not merge the chunks (see its error).")
        if summary is None:
            summary = RunSummary(**{**shared, **{k: Path(shared[k]) for k in ("out_dir", "scores_path",
                                                                             "manifest_path")}})
        summary.elapsed_s = time.perf_counter() - t0
        return summary


# --------------------------------------------------------------------------- steps


def _probe(module, dataset, dev, methods_arg, options) -> None:
    """Score one readable sample, so that a model or method that cannot work fails before any output."""
    for i in range(min(len(dataset), _PROBE_TRIES)):
        sample = dataset[i]
        if sample.input is None or sample.error:
            continue
        score_batch(module, sample.input.unsqueeze(0).to(dev), methods_arg,  # a one-off: no CUDA graph for it
                    sample_ids=torch.tensor([int(sample.index)]), **{**options, "cuda_graphs": False})
        return


def _prepare_out_dir(out: Path, identity: dict, run_id: str, force: bool, started_at: str) -> None:
    if out.exists() and not out.is_dir():
        raise RunConflictError(f"the output path {out} is a file; give a folder to --out.")
    run_file = out / RUN_FILE
    old = None
    if run_file.is_file():
        try:
            old = json.loads(run_file.read_text("utf-8"))
        except (OSError, ValueError):
            old = {}
    leftovers = [p for p in (out / ch.CHUNK_DIR, out / SCORES_FILE, out / MANIFEST_FILE, out / LOGITS_FILE)
                 if p.exists()]
    if old is None and leftovers and not force:
        raise RunConflictError(
            f"the output folder {out} holds results ({', '.join(p.name for p in leftovers)}) but no {RUN_FILE}, "
            "so they cannot be resumed safely. Use another --out, or --force to discard them."
        )
    if old is not None and old.get("identity_sha256") != run_id and not force:
        diffs = identity_differences(old.get("identity", {}), identity)
        shown = "; ".join(diffs[:6]) + (f"; … ({len(diffs)} differences)" if len(diffs) > 6 else "")
        raise RunConflictError(
            f"the output folder {out} holds a run with other settings ({shown or 'unreadable ' + RUN_FILE}). "
            "Use another --out to keep both, or --force to discard the old results."
        )
    if force:
        ch.remove_outputs(out / ch.CHUNK_DIR, out / SCORES_FILE, out / MANIFEST_FILE, out / LOGITS_FILE, run_file)
        old = None
    (out / ch.CHUNK_DIR).mkdir(parents=True, exist_ok=True)
    ch.remove_temporary_files(out)
    ch.remove_temporary_files(out / ch.CHUNK_DIR)
    if old is None:
        ch.atomic_write_json(run_file, {"identity_sha256": run_id, "created_at": started_at, "identity": identity})


def _chunk_done(out: Path, layout: ch.ChunkLayout, k: int, run_id: str) -> bool:
    meta = ch.read_chunk_meta(layout.path(out, k))
    if not meta:
        return False
    start, stop = layout.bounds(k)
    return meta.get("run") == run_id and meta.get("start") == start and meta.get("stop") == stop


class _ChunkBuffer:
    """The rows and failures of one chunk as its batches arrive."""

    def __init__(self, k: int, start: int, stop: int) -> None:
        self.k, self.start, self.stop = k, start, stop
        self.index: list[np.ndarray] = []
        self.paths: list[str] = []
        self.label: list[np.ndarray] = []
        self.prediction: list[np.ndarray] = []
        self.logits: list[np.ndarray] = []
        self.scores: dict[str, list[np.ndarray]] = {}
        self.reasons: dict[str, list[str]] = {}
        self.failures: list[list] = []
        self.notes: list[list] = []
        self.parameters: dict = {}
        self.skipped: dict = {}
        self.info: dict = {}

    def add_failures(self, failures) -> None:
        self.failures.extend([int(i), str(p), str(r)] for i, p, r in failures)

    def add(self, batch, labels: torch.Tensor, result) -> None:
        self.index.append(batch.indices.numpy().astype(np.int64))
        self.paths.extend(batch.paths)
        self.label.append(labels.numpy().astype(np.int64))
        self.prediction.append(result.prediction.numpy().astype(np.int64))
        self.logits.append(result.logits.detach().cpu().numpy().astype(np.float32))
        if not self.scores:
            self.parameters, self.skipped, self.info = result.parameters, result.skipped, result.info
        for name, values in result.scores.items():
            self.scores.setdefault(name, []).append(values.detach().cpu().numpy().astype(np.float64))
            self.reasons.setdefault(name, []).extend(result.reasons[name])

    def write(self, path: Path, run_id: str, ctx: DistContext) -> None:
        def cat(parts: list[np.ndarray], dtype) -> np.ndarray:
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

        index, label, prediction = cat(self.index, np.int64), cat(self.label, np.int64), cat(self.prediction, np.int64)
        columns: dict[str, Any] = {"index": index, "path": self.paths, "label": label, "prediction": prediction,
                                   "correct": (label >= 0) & (label == prediction)}
        methods = list(self.scores)
        for name in methods:
            columns[name] = cat(self.scores[name], np.float64)
        nan_reasons = [name for name in methods if any(self.reasons[name])]
        for name in nan_reasons:
            columns[schema.reason_column(name)] = self.reasons[name]
        fields = schema.arrow_schema(methods, nan_reasons)
        # The logits travel in the chunk (last column) and go to logits.parquet at the end; scores.parquet
        # keeps its columns.
        num_logits = int(self.logits[0].shape[1]) if self.logits else 0
        if num_logits:
            logits = np.concatenate(self.logits)
            columns["logits"] = pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)), num_logits)
            fields = fields.append(pa.field("logits", pa.list_(pa.float32(), num_logits)))
        labelled = label >= 0
        meta = {
            "format": FORMAT_VERSION, "run": run_id, "chunk": self.k, "start": self.start, "stop": self.stop,
            "rows": int(index.shape[0]), "labelled": int(labelled.sum()), "correct": int(columns["correct"].sum()),
            "failures": sorted(self.failures), "notes": sorted(self.notes), "methods": methods,
            "nan_reasons": nan_reasons, "parameters": self.parameters, "skipped": self.skipped, "info": self.info,
            "logits": num_logits,
            "written_by": {"rank": ctx.rank, "world_size": ctx.world_size},
        }
        ch.write_chunk(path, columns, fields, meta)


def _score_chunks(module, dataset, out: Path, layout: ch.ChunkLayout, pending: list[int], run_id: str,
                  class_map: list[int], methods_arg, options: dict, dev: torch.device, num_workers: int,
                  progress: bool, ctx: DistContext) -> None:
    if not pending:
        return
    from tqdm import tqdm

    sampler = ch.ChunkBatchSampler(layout, pending)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_samples,
                        pin_memory=dev.type == "cuda", prefetch_factor=2 if num_workers > 0 else None)
    to_model = torch.tensor(class_map, dtype=torch.int64)
    total = sum(layout.bounds(k)[1] - layout.bounds(k)[0] for k in pending)
    desc = "scoring" if ctx.world_size == 1 else f"scoring (rank 0 of {ctx.world_size})"
    bar = tqdm(total=total, desc=desc, unit="sample", disable=not progress, file=sys.stderr, dynamic_ncols=True,
               mininterval=0.5, smoothing=0.1)
    failed = 0
    buffer: _ChunkBuffer | None = None
    try:
        # The loader first: its iterator must see StopIteration, or its pin-memory thread waits out a 5 s
        # timeout when it is shut down (5 of 7 s of a 6,000-image GPU run).
        for batch, (k, lo, hi, last) in zip(loader, sampler.plan(), strict=True):
            if buffer is None:
                buffer = _ChunkBuffer(k, *layout.bounds(k))
            buffer.add_failures(batch.failures)
            buffer.notes.extend([int(i), str(p), str(n)] for i, p, n in batch.notes)
            failed += len(batch.failures)
            if batch.inputs is not None:
                inputs = batch.inputs.to(dev, non_blocking=True)
                result = score_batch(module, inputs, methods_arg, sample_ids=batch.indices, **options)
                labels = batch.labels
                mapped = torch.where(labels >= 0, to_model[labels.clamp(min=0, max=len(class_map) - 1)],
                                     torch.full_like(labels, -1))
                buffer.add(batch, mapped, result)
            bar.update(hi - lo)
            if failed:
                bar.set_postfix(failed=failed, refresh=False)
            if last:
                buffer.write(layout.path(out, k), run_id, ctx)
                buffer = None
    finally:
        bar.close()
