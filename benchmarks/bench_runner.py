"""Throughput of ``gradtrust.runs.score_dataset`` on a class-folder of synthetic JPEGs (images/s, end to end).

    python benchmarks/bench_runner.py                                   # 2,000 224×224 JPEGs, resnet18, CPU
    python benchmarks/bench_runner.py --n 200 --size 64 --workers 1     # a quick look on a small machine
    python benchmarks/bench_runner.py --device cuda --workers 8 --batch-size 128

Writes ``--n`` JPEGs (smooth random images, ``--size`` pixels square) into ``<tmp>/<wnid>/`` folders (the
first ten ImageNet-1k WordNet IDs, so that a 1000-class torchvision model maps them), then times, each in a
fresh output folder:

* ``forward``  — a plain DataLoader + ``model(x)`` under ``torch.no_grad`` (the floor: reading + one forward);
* ``one-pass`` — ``score_dataset`` with the one-forward-pass group (softmax … gradnorm);
* ``all``      — ``score_dataset`` with every method that applies (ODIN, Purview, MC dropout when the model
  has dropout).

``score_dataset`` figures are end to end: probe, identity hash, chunk writes, merge and manifest included.
The model has random weights (nothing is downloaded); its cost is that of the trained network.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from gradtrust.data import collate_samples, load_imagenet_wnids
from gradtrust.data.open import open_dataset
from gradtrust.models import load_model
from gradtrust.runs import score_dataset

FORWARD_GROUP = ["softmax", "entropy", "max_logit", "margin", "brier", "logit_margin", "energy", "doctor",
                 "maxlogit_pnorm", "gradtrust", "gradtrust_topk", "gradnorm"]


def write_images(root: Path, n: int, size: int, classes: int = 10) -> None:
    rng = np.random.default_rng(0)
    wnids = load_imagenet_wnids()[:classes]
    for w in wnids:
        (root / w).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((size, size), Image.BILINEAR)
        image.save(root / wnids[i % classes] / f"img_{i:06d}.jpg", quality=90)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_forward(model, dataset, batch_size: int, workers: int, device: torch.device) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_samples,
                        pin_memory=device.type == "cuda")
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        for batch in loader:
            if batch.inputs is not None:
                model.module(batch.inputs.to(device, non_blocking=True))
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="number of JPEGs (default 2000)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    parser.add_argument("--model", default="torchvision:resnet18")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--groups", default="forward,one-pass,all", help="comma-separated: forward,one-pass,all")
    parser.add_argument("--keep", default=None, help="write the images and runs here instead of a temp folder")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="gradtrust-bench-"))
    images = base / "images"
    try:
        start = time.perf_counter()
        if not images.exists():
            write_images(images, args.n, args.size)
        print(f"{args.n} JPEGs of {args.size}x{args.size} in {images} ({time.perf_counter() - start:.1f} s)")
        device = torch.device(args.device)
        torch.manual_seed(0)
        model = load_model(args.model, None, None, device=device)
        dataset = open_dataset(str(images), model)
        print(f"model {args.model} (random weights, {model.num_classes} classes) on {device}; batch "
              f"{args.batch_size}, {args.workers} workers, {torch.get_num_threads()} torch threads; "
              f"torch {torch.__version__}")
        if device.type == "cuda":
            print(f"GPU: {torch.cuda.get_device_name(device)}")
            plain_forward(model, torch.utils.data.Subset(dataset, range(min(len(dataset), 2 * args.batch_size))),
                          args.batch_size, 0, device)  # warm-up (cuDNN, allocator)

        results = {}
        for group in [g.strip() for g in args.groups.split(",") if g.strip()]:
            if group == "forward":
                elapsed = plain_forward(model, dataset, args.batch_size, args.workers, device)
                methods = None
            else:
                methods = {"one-pass": FORWARD_GROUP, "all": "all"}[group]
                out = base / f"run-{group}"
                shutil.rmtree(out, ignore_errors=True)
                summary = score_dataset(model, dataset, out, methods=methods, batch_size=args.batch_size,
                                        num_workers=args.workers, device=str(device), progress=False)
                elapsed = summary.elapsed_s
                methods = summary.methods
            results[group] = args.n / elapsed
            print(f"{group:9s} {args.n / elapsed:9.1f} images/s  ({elapsed:.1f} s"
                  + (f"; {len(methods)} methods" if methods else "") + ")", flush=True)
        if "forward" in results:
            for group in ("one-pass", "all"):
                if group in results:
                    print(f"{group} / forward: {results[group] / results['forward']:.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
