"""Purview's per-sample convolution weight gradients: grouped kernel vs per-sample loop, on this device.

    python benchmarks/bench_conv_strategies.py --device cuda

``gradtrust.per_sample.layers.conv_weight_grads`` picks the per-sample loop on CPUs and unfold+bmm (one
group) or the grouped kernel elsewhere; this prints Purview's cost in plain forward passes with each
strategy forced (unfold applies to one-group Conv2d only; other layers keep the default), to check that choice.
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

import gradtrust
from gradtrust.per_sample import layers as per_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    model = torchvision.models.resnet18().to(device).eval()
    x = torch.randn(args.batch_size, 3, 224, 224, device=device)

    def best(fn):
        fn()
        times = []
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return min(times)

    def forward():
        with torch.no_grad():
            model(x)

    t_forward = best(forward)
    original = per_sample.conv_weight_grads
    for strategy in ("grouped", "per_sample", "unfold"):
        def forced(module, a, g, strategy=strategy):
            if strategy == "unfold" and not (type(module) is torch.nn.Conv2d and module.groups == 1):
                return original(module, a, g)
            return original(module, a, g, strategy=strategy)

        per_sample.conv_weight_grads = forced
        try:
            t = best(lambda: gradtrust.score(model, x, ["purview_final"], chunk_bytes=2**30))
        finally:
            per_sample.conv_weight_grads = original
        print(f"{strategy:10s}: purview = {t / t_forward:.2f} forward passes")


if __name__ == "__main__":
    main()
