"""Chunk files and atomic writes.

The dataset positions ``0 … N−1`` are cut into fixed ranges of ``chunk_size`` positions; chunk ``k`` covers
``[k·chunk_size, min((k+1)·chunk_size, N))`` and is stored, once every sample of it has been scored, as
``chunks/chunk-<first position:09d>.parquet``, atomically (:func:`atomic_write`).

Besides the task's rows, a chunk file carries in its Parquet key-value metadata (key ``gradtrust``) a JSON
object: the run's identity hash, the range, the **failures** of the range (``[index, path, reason]``) and
what the task adds (a score run: methods, parameters, skipped methods). One file holds all of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gradtrust.estimator import fsync_path

META_KEY = b"gradtrust"
CHUNK_DIR = "chunks"
_TMP_MARK = ".tmp-"


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Call ``write(binary file)`` on a temporary file next to ``path``, fsync it, rename it to ``path``, fsync
    the folder: ``path`` then holds the old bytes or the new ones, whatever kills the process."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # platforms without directory handles
        fsync_path(path.parent)


def atomic_write_json(path: Path, value: Any) -> None:
    """``value`` as indented UTF-8 JSON, written with :func:`atomic_write`."""
    data = (json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8")
    atomic_write(path, lambda handle: handle.write(data))


def remove_outputs(*paths: Path) -> None:
    """Delete a run's outputs (``--force``): each path a folder (removed with its contents) or a file."""
    import shutil

    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def remove_temporary_files(folder: Path) -> None:
    """Delete temporary files left by a killed writer (``.<name>.tmp-<pid>-<id>``)."""
    for entry in folder.iterdir() if folder.is_dir() else ():
        if entry.name.startswith(".") and _TMP_MARK in entry.name:
            with contextlib.suppress(OSError):
                entry.unlink()


@dataclass(frozen=True)
class ChunkLayout:
    """Fixed ranges of dataset positions, and the batches inside each (never crossing a chunk border)."""

    num_samples: int
    chunk_size: int
    batch_size: int

    @property
    def num_chunks(self) -> int:
        return -(-self.num_samples // self.chunk_size)

    def bounds(self, k: int) -> tuple[int, int]:
        start = k * self.chunk_size
        return start, min(start + self.chunk_size, self.num_samples)

    def batches(self, k: int) -> Iterator[tuple[int, int]]:
        start, stop = self.bounds(k)
        for lo in range(start, stop, self.batch_size):
            yield lo, min(lo + self.batch_size, stop)

    def num_batches(self, k: int) -> int:
        start, stop = self.bounds(k)
        return -(-(stop - start) // self.batch_size)

    def path(self, folder: Path, k: int) -> Path:
        return Path(folder) / CHUNK_DIR / f"chunk-{self.bounds(k)[0]:09d}.parquet"


class ChunkBatchSampler:
    """A DataLoader ``batch_sampler`` over some chunks: batch ``[lo, hi)`` after batch, lazily (flat memory)."""

    def __init__(self, layout: ChunkLayout, chunks: list[int]) -> None:
        self.layout = layout
        self.chunks = list(chunks)

    def plan(self) -> Iterator[tuple[int, int, int, bool]]:
        """``(chunk, lo, hi, last batch of the chunk)`` in the order the batches are yielded."""
        for k in self.chunks:
            n = self.layout.num_batches(k)
            for j, (lo, hi) in enumerate(self.layout.batches(k)):
                yield k, lo, hi, j == n - 1

    def __iter__(self) -> Iterator[list[int]]:
        for _, lo, hi, _ in self.plan():
            yield list(range(lo, hi))

    def __len__(self) -> int:
        return sum(self.layout.num_batches(k) for k in self.chunks)


def write_chunk(path: Path, table: pa.Table, meta: dict) -> None:
    """Write ``table`` with ``meta`` (JSON, key ``gradtrust``) as a zstd Parquet file, atomically."""
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True, default=str).encode()})
    atomic_write(path, lambda handle: pq.write_table(table, handle, compression="zstd"))


def read_chunk_meta(path: Path) -> dict | None:
    """The ``gradtrust`` metadata of a chunk file, or ``None`` when the file is missing or unreadable."""
    try:
        metadata = pq.read_schema(path).metadata or {}
        return json.loads(metadata[META_KEY])
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None


def read_chunk_table(path: Path) -> pa.Table:
    return pq.read_table(path)
