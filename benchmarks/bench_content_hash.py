"""Cost of the data-content part of a run's identity (``gradtrust.runs.identity.files_sha256``) on small JPEGs.

    python benchmarks/bench_content_hash.py                  # 50,000 JPEGs of 64x64 px in 100 class folders
    python benchmarks/bench_content_hash.py --n 2000         # a quick look

Writes ``--n`` JPEGs (about 2 KB each) into a temporary class folder, then times, each with an empty
``GRADTRUST_CACHE_DIR`` first:

* ``first``   — every file read and hashed (what the first run of a new dataset pays, once);
* ``cached``  — the second check: one ``stat`` per file against the cached ``(size, mtime_ns)``;
* ``one new`` — one image replaced by another of the same size: that file hashed again;
* ``describe``— the existing ``describe_dataset`` fingerprint (path, size, label) of the same folder, for scale.

The cache is one JSON file per folder under ``$GRADTRUST_CACHE_DIR/file-sha256/``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write_images(root: Path, n: int, size: int, classes: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        folder = root / f"class_{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        path = folder / f"img_{i:06d}.jpg"
        Image.fromarray(small).resize((size, size), Image.BILINEAR).save(path, quality=90)
        paths.append(str(path))
    return sorted(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=100)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gradtrust-hash-"))
    os.environ["GRADTRUST_CACHE_DIR"] = str(work / "cache")
    from gradtrust.data.images import ImageFolderDataset
    from gradtrust.data.open import describe_dataset
    from gradtrust.runs.identity import files_sha256

    try:
        t0 = time.perf_counter()
        paths = write_images(work / "data", args.n, args.size, args.classes)
        megabytes = sum(os.path.getsize(p) for p in paths) / 1e6
        print(f"wrote {len(paths):,} JPEGs ({megabytes:.0f} MB) in {time.perf_counter() - t0:.1f} s")
        timings = {}
        for label in ("first", "cached"):
            t0 = time.perf_counter()
            digest = files_sha256(paths)
            timings[label] = time.perf_counter() - t0
        replaced = Path(paths[len(paths) // 2])
        data = replaced.read_bytes()
        replaced.write_bytes(bytes(reversed(data)))  # same size, other bytes
        t0 = time.perf_counter()
        changed = files_sha256(paths)
        timings["one new"] = time.perf_counter() - t0
        assert changed != digest
        t0 = time.perf_counter()
        describe_dataset(ImageFolderDataset(str(work / "data"), None))
        timings["describe"] = time.perf_counter() - t0
        for label, seconds in timings.items():
            print(f"{label:9s} {seconds:7.2f} s  ({1e6 * seconds / len(paths):6.1f} µs per file)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
