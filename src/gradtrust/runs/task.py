"""One run engine: a :class:`Task` over a dataset, in resumable atomic chunks, sharded under ``torchrun``.

``run_task(task, dataset, out, ...)`` runs ``score``, ``explain``, introspection's feature cache, detection's
challenge sets and GradCON scoring:

1. the identity (``task.identity()`` + the chunk layout) is compared across ranks, the task is probed on one
   readable sample on rank 0 (a model or setting that cannot work fails before any output) and the folder
   is claimed (:class:`gradtrust.runs.folder.RunFolder`: another run's folder refused, ``force``);
2. a resumed run says on the console what it resumes, before the progress bar starts;
3. chunk ``k`` goes to rank ``k mod world size``; each batch (never crossing a chunk border) goes to
   ``task.batch(batch)``, whose parts ``task.chunk(parts)`` turns into one Parquet table + metadata, written
   atomically as ``chunks/chunk-<first index>.parquet``;
4. rank 0 runs ``task.finish(folder, layout, metas)`` and every rank returns its result.

Failures: a rank that fails drops a flag file (``.failed-rank-<r>``) in the shared output folder; every rank
looks for flags after each batch, so the others stop within one batch with :class:`PeerError` naming the
failing rank and its error. A rank that dies without a word ends the others' next collective (PeerError, one
line); a rank alive but silent (no batch finished) for ``GRADTRUST_RANK_TIMEOUT`` seconds (default 30 minutes)
ends the others with a message naming it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader

from gradtrust.data.samples import Batch, Sample, collate_samples
from gradtrust.errors import DataError, GradTrustError
from gradtrust.runs import chunks as ch
from gradtrust.runs.distributed import (
    DistContext,
    PeerError,
    StalledError,
    distributed_session,
    rank_timeout,
    stalled_message,
)
from gradtrust.runs.folder import RunFolder, now

DEFAULT_CHUNK_SAMPLES = 1024
_PROBE_TRIES = 32
_FLAG = ".failed-rank-"
_ALIVE, _DONE = ".alive-rank-", ".done-rank-"  # a rank's last finished batch (mtime) / its share finished
_POLL_S = 0.2


class Task(Protocol):
    """What :func:`run_task` runs. ``kind``/``format``: the tags; ``outputs``: the names ``force`` removes besides
    ``chunks/``; ``verb`` ("scored") and ``desc`` (the bar's label) for the console. ``identity()``: everything
    that changes the numbers (the engine adds the layout); ``probe(inputs, index)``: one readable sample, before
    anything is written; ``batch(batch, inputs)``: one batch's work (``inputs`` on the device, ``None`` when no
    sample was readable) → a part; ``chunk(parts)`` → ``(pyarrow Table, extra metadata)``; ``finish(folder,
    layout, metas, execution)``: rank 0, every chunk written (``execution``: ``device``, ``world_size``,
    ``num_workers``, ``resumed_chunks``, ``started_at``, ``elapsed_s``) → the value every rank returns."""

    kind: str
    format: str
    outputs: tuple[str, ...]
    verb: str
    desc: str

    def identity(self) -> dict: ...
    def probe(self, inputs: torch.Tensor, index: int) -> None: ...
    def batch(self, batch: Batch, inputs: torch.Tensor | None) -> Any: ...
    def chunk(self, parts: list[Any]) -> tuple[Any, dict]: ...
    def finish(self, folder: RunFolder, layout: ch.ChunkLayout, metas: list[dict], execution: dict) -> Any: ...


def default_chunk_size(batch_size: int, dataset: Any = None) -> int:
    """The smallest multiple of ``batch_size`` that is at least 1024 samples — or, for a dataset stored in shards
    of one size (``dataset.preferred_chunk_size``: WebDataset tar shards), the shard size, so that chunks end at
    shard borders and each ``torchrun`` rank reads whole shards."""
    preferred = getattr(dataset, "preferred_chunk_size", None)
    if isinstance(preferred, int) and preferred > 0:
        return preferred
    return batch_size * max(1, -(-DEFAULT_CHUNK_SAMPLES // batch_size))


def task_folder(task: Task, out: str | Path, batch_size: int, chunk_size: int | None = None) -> RunFolder:
    """The run folder ``out`` of ``task`` with this layout: its identity is ``task.identity()`` + the layout."""
    chunk_size = chunk_size or default_chunk_size(batch_size, getattr(task, "dataset", None))
    return RunFolder(out, task.kind, task.format,
                     {**task.identity(), "layout": {"chunk_size": chunk_size, "batch_size": batch_size}},
                     outputs=(ch.CHUNK_DIR, *task.outputs))


def chunk_done(folder: RunFolder, layout: ch.ChunkLayout, k: int) -> dict | None:
    """The metadata of chunk ``k`` when it is complete and belongs to this run, else ``None``."""
    meta = ch.read_chunk_meta(layout.path(folder.out, k))
    start, stop = layout.bounds(k)
    ok = meta is not None and meta.get("run") == folder.run_id and (meta.get("start"), meta.get("stop")) == (start, stop)
    return meta if ok else None


def chunk_metas(folder: RunFolder, layout: ch.ChunkLayout) -> list[dict]:
    """Every chunk's metadata, in order; :class:`GradTrustError` when one is missing (rerun to finish)."""
    metas = []
    for k in range(layout.num_chunks):
        meta = chunk_done(folder, layout, k)
        if meta is None:
            raise GradTrustError(f"chunk {layout.path(folder.out, k)} is missing or belongs to another run; run "
                                 "the same command again to compute it.")
        metas.append(meta)
    return metas


def _shared(ctx: DistContext, step: Callable[[], Any], where: str, main_only: bool = False) -> Any:
    """Run ``step`` (on rank 0 only when ``main_only``), share every rank's failure, return rank 0's value.
    A failure is raised on the rank where it happened and as :class:`PeerError` on the others."""
    value, problem = None, None
    if ctx.is_main or not main_only:
        try:
            value = step()
        except Exception as exc:
            if not ctx.active or isinstance(exc, StalledError):  # a stalled peer would never join the gather
                raise
            problem = exc
    statuses = ctx.all_gather((None if problem is None else f"{type(problem).__name__}: {problem}", value))
    if problem is not None:
        raise problem
    bad = [(rank, s) for rank, (s, _) in enumerate(statuses) if s is not None]
    if bad:
        raise PeerError(f"{where}: " + "; ".join(f"rank {r} failed: {m}" for r, m in bad))
    return statuses[0][1]


def run_task(task: Task, dataset: Any, out: str | Path, *, batch_size: int, chunk_size: int | None = None,
             num_workers: int = 0, device: torch.device, force: bool = False, progress: bool = True,
             replace: bool = False, echo: Callable[[str], None] | None = None) -> Any:
    """Run ``task`` over every sample of ``dataset`` into ``out`` (see the module docstring).

    ``force``: discard what ``out`` holds; ``replace``: discard it only when it is another run (a cache).
    ``echo``: where the resume message goes (default: stderr, rank 0 only). Returns ``task.finish``'s value.
    """
    t0 = time.perf_counter()
    if len(dataset) == 0:
        raise DataError("the dataset holds no samples.")
    chunk_size = chunk_size or default_chunk_size(batch_size, dataset)
    layout = ch.ChunkLayout(len(dataset), chunk_size, batch_size)
    folder = task_folder(task, out, batch_size, chunk_size)
    with distributed_session(device) as ctx:
        if len(set(ctx.all_gather(folder.run_id))) != 1:
            raise GradTrustError("the processes do not run the same task (their models, data or settings differ: a "
                                 "random-weight model must be initialised from the same seed on every rank).")

        started_at = now()

        def prepare() -> int:
            _probe(task, dataset, device)
            folder.claim(force or (replace and bool(folder.differences())))
            (folder.out / ch.CHUNK_DIR).mkdir(exist_ok=True)
            ch.remove_temporary_files(folder.out / ch.CHUNK_DIR)
            for prefix in (_FLAG, _ALIVE, _DONE):
                for flag in folder.out.glob(f"{prefix}*"):
                    flag.unlink(missing_ok=True)
            done = [k for k in range(layout.num_chunks) if chunk_done(folder, layout, k) is not None]
            samples = sum(layout.bounds(k)[1] - layout.bounds(k)[0] for k in done)
            if done:
                (echo or (lambda text: print(text, file=sys.stderr, flush=True)))(
                    f"resuming: {samples:,} of {layout.num_samples:,} samples already {task.verb} in {folder.out}")
            return len(done)

        resumed = _shared(ctx, prepare, "preparing the run", main_only=True)
        mine = [k for k in range(layout.num_chunks) if k % ctx.world_size == ctx.rank]
        pending = [k for k in mine if chunk_done(folder, layout, k) is None]

        def work() -> None:
            _work(task, dataset, folder, layout, pending, device, num_workers, progress and ctx.is_main, ctx)
            _wait_for_peers(folder.out, ctx)

        _shared(ctx, work, "computing the chunks")
        execution = {"device": str(device), "world_size": ctx.world_size, "num_workers": num_workers,
                     "threads": torch.get_num_threads(), "resumed_chunks": resumed, "started_at": started_at}
        return _shared(ctx, lambda: task.finish(folder, layout, chunk_metas(folder, layout),
                                                {**execution, "elapsed_s": round(time.perf_counter() - t0, 3)}),
                       "finishing the run", main_only=True)


def _probe(task: Task, dataset: Any, device: torch.device) -> None:
    for i in range(min(len(dataset), _PROBE_TRIES)):
        sample = dataset[i]
        if sample.input is not None and not sample.error:
            task.probe(sample.input.unsqueeze(0).to(device), int(sample.index))
            return


def _peer_failure(out: Path, rank: int) -> str | None:
    for flag in out.glob(f"{_FLAG}*"):
        if flag.name != f"{_FLAG}{rank}":
            try:
                return f"rank {flag.name[len(_FLAG):]} failed: {flag.read_text('utf-8')}"
            except OSError:
                return f"rank {flag.name[len(_FLAG):]} failed"
    return None


def _wait_for_peers(out: Path, ctx: DistContext) -> None:
    """Under torchrun, after this rank's share: say so, then wait until every rank has said so — without a
    collective, whose timeout would end a legitimately long wait (a resumed run leaves unequal shares). A
    peer whose heartbeat (``.alive-rank-<r>``, touched after each batch) does not move for
    :func:`~gradtrust.runs.distributed.rank_timeout` seconds is stalled: this rank stops with a message."""
    if not ctx.active:
        return
    (out / f"{_DONE}{ctx.rank}").touch()
    timeout, others = rank_timeout(), [r for r in range(ctx.world_size) if r != ctx.rank]
    seen: dict[int, tuple[float | None, float]] = {r: (None, time.monotonic()) for r in others}
    while True:
        waiting = [r for r in others if not (out / f"{_DONE}{r}").exists()]
        if not waiting:
            return
        peer = _peer_failure(out, ctx.rank)
        if peer is not None:
            raise PeerError(f"stopped: {peer}")
        now_s = time.monotonic()
        for r in waiting:
            try:
                beat: float | None = (out / f"{_ALIVE}{r}").stat().st_mtime
            except OSError:
                beat = None
            if beat != seen[r][0]:
                seen[r] = (beat, now_s)
        stalled = [r for r in waiting if now_s - seen[r][1] > timeout]
        if stalled:
            raise StalledError(stalled_message(stalled, timeout))
        time.sleep(_POLL_S)


def _work(task: Task, dataset: Any, folder: RunFolder, layout: ch.ChunkLayout, pending: list[int],
          device: torch.device, num_workers: int, progress: bool, ctx: DistContext) -> None:
    alive = folder.out / f"{_ALIVE}{ctx.rank}"
    if ctx.active:
        alive.touch()
    if not pending:
        return
    from tqdm import tqdm

    sampler = ch.ChunkBatchSampler(layout, pending)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_samples,
                        pin_memory=device.type == "cuda", prefetch_factor=2 if num_workers > 0 else None)
    total = sum(layout.bounds(k)[1] - layout.bounds(k)[0] for k in pending)
    desc = task.desc if ctx.world_size == 1 else f"{task.desc} (rank 0 of {ctx.world_size})"
    bar = tqdm(total=total, desc=desc, unit="sample", disable=not progress, file=sys.stderr, dynamic_ncols=True,
               mininterval=0.5, smoothing=0.1)
    parts: list[Any] = []
    failures: list[list] = []
    notes: list[list] = []
    try:
        # The loader first: its iterator must see StopIteration, or its pin-memory thread waits out a 5 s
        # timeout when it is shut down (5 of 7 s of a 6,000-image GPU run).
        for batch, (k, lo, hi, last) in zip(loader, sampler.plan(), strict=True):
            failures += [[int(i), str(p), str(r)] for i, p, r in batch.failures]
            notes += [[int(i), str(p), str(n)] for i, p, n in batch.notes]
            inputs = None if batch.inputs is None else batch.inputs.to(device, non_blocking=True)
            parts.append(task.batch(batch, inputs))
            bar.update(hi - lo)
            if failures:
                bar.set_postfix(failed=len(failures), refresh=False)
            if last:
                table, extra = task.chunk(parts)
                start, stop = layout.bounds(k)
                meta = {**extra, "format": task.format, "run": folder.run_id, "chunk": k, "start": start,
                        "stop": stop, "rows": table.num_rows, "failures": sorted(failures), "notes": sorted(notes),
                        "written_by": {"rank": ctx.rank, "world_size": ctx.world_size}}
                ch.write_chunk(layout.path(folder.out, k), table, meta)
                parts, failures, notes = [], [], []
            if ctx.active:
                os.utime(alive)  # a heartbeat: this rank finished a batch
                peer = _peer_failure(folder.out, ctx.rank)
                if peer is not None:
                    raise PeerError(f"stopped: {peer}")
    except PeerError:
        raise
    except BaseException as exc:  # tell the other ranks (they look after each batch), then fail here
        if ctx.active:
            (folder.out / f"{_FLAG}{ctx.rank}").write_text(f"{type(exc).__name__}: {exc}", "utf-8")
        raise
    finally:
        bar.close()


class TensorSamples(torch.utils.data.Dataset):
    """In-memory inputs ``x`` (N, ...) as a dataset of :class:`gradtrust.data.Sample` (label −1, no path), so
    that sets made in memory (detection's challenge sets, GradCON's images) run through :func:`run_task`."""

    classes: list[str] = []

    def __init__(self, x: torch.Tensor, labels: Any = None) -> None:
        self.x = x
        self.labels = [-1] * len(x) if labels is None else [int(v) for v in labels]

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, index: int) -> Sample:
        return Sample(self.x[index], self.labels[index], int(index), "")


def model_labels(labels: torch.Tensor, class_map: list[int]) -> torch.Tensor:
    """Dataset labels → the model's class indices (``class_map``), −1 (unknown) kept."""
    to_model = torch.tensor(class_map, dtype=torch.int64)
    return torch.where(labels >= 0, to_model[labels.clamp(min=0, max=len(class_map) - 1)], torch.full_like(labels, -1))


def env_rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    return int(os.environ.get("RANK", "0") or 0)
