"""Open and read times of the ``--data`` spec readers on synthetic files of the releases' sizes.

    python benchmarks/bench_data_specs.py                 # CIFAR-10 (50,000 + 10,000), CIFAR-10-C fog, 64 shards
    python benchmarks/bench_data_specs.py --shards 8      # fewer WebDataset shards

Writes, in a temporary folder, CIFAR-10's six python pickle batches (10,000 random images each, Python 2
``str`` opcodes as in the release), one CIFAR-10-C ``.npy`` (50,000 images) with its ``labels.npy``, and
``--shards`` WebDataset tar shards of ``--per-shard`` 32×32 PNGs with ``.cls`` labels; then times, on one
thread, opening each spec (unpickling, memory-mapping, indexing the shards) and reading samples one by one
with the default transform (float ``[0, 1]`` tensors), as a DataLoader worker does.
"""

from __future__ import annotations

import argparse
import io
import pickle
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gradtrust.data import open_data_spec


class _Python2Pickler(pickle._Pickler):  # noqa: SLF001 - bytes written as Python 2 str, as the release has them
    dispatch = dict(pickle._Pickler.dispatch)  # noqa: SLF001

    def save_str2(self, obj: bytes) -> None:
        self.write(pickle.BINSTRING + len(obj).to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[bytes] = save_str2


def write_files(root: Path, shards: int, per_shard: int) -> None:
    rng = np.random.default_rng(0)
    cifar = root / "cifar-10-batches-py"
    cifar.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (10000, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, 10000)],
        }
        with open(cifar / name, "wb") as f:
            _Python2Pickler(f, protocol=2).dump(batch)
    corrupted = root / "CIFAR-10-C"
    corrupted.mkdir()
    np.save(corrupted / "fog.npy", rng.integers(0, 256, (50000, 32, 32, 3), dtype=np.uint8))
    np.save(corrupted / "labels.npy", rng.integers(0, 10, 50000).astype(np.uint8))
    wds = root / "wds"
    wds.mkdir()
    for s in range(shards):
        with tarfile.open(wds / f"val-{s:06d}.tar", "w") as tar:
            for i in range(s * per_shard, (s + 1) * per_shard):
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, format="PNG")
                for field, data in (("png", buffer.getvalue()), ("cls", str(i % 1000).encode())):
                    info = tarfile.TarInfo(f"k{i:07d}.{field}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def time_spec(label: str, spec: str, n: int) -> None:
    t0 = time.perf_counter()
    dataset = open_data_spec(spec)
    t1 = time.perf_counter()
    n = min(n, len(dataset))
    for i in range(n):
        dataset[i]
    t2 = time.perf_counter()
    rate = f"{n / (t2 - t1):9,.0f} samples/s" if n else ""
    print(f"{label:34s} open {t1 - t0:6.2f} s   read {n:6d} {t2 - t1:6.2f} s {rate}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--per-shard", type=int, default=100)
    parser.add_argument("--read", type=int, default=10000, help="samples read per spec")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_files(root, args.shards, args.per_shard)
        time_spec("cifar10 test (10,000)", f"cifar10:{root}:test", args.read)
        time_spec("cifar10 train (50,000), open only", f"cifar10:{root}:train", 0)
        time_spec("cifar10c fog:3 (10,000)", f"cifar10c:{root}:fog:3", args.read)
        time_spec(
            f"wds {args.shards} shards x {args.per_shard}",
            f"wds:{root}/wds/val-{{000000..{args.shards - 1:06d}}}.tar",
            args.read,
        )


if __name__ == "__main__":
    sys.exit(main())
