"""What Purview's gradient features cost, in plain forward passes of the same batch, measured in one process.

    python benchmarks/bench_detect.py                       # resnet18, 224×224, batch 32, CPU
    python benchmarks/bench_detect.py --size 64 --repeats 5 # quicker
    python benchmarks/bench_detect.py --device cuda

Prints, against a plain batched forward pass (``torch.no_grad``) timed in the same process, interleaved
(minimum over repeats, so that drifts in machine load hit all three alike):
1. ``gradtrust.gradient_features`` (per-tensor ``‖∂J/∂θ_j‖²``, one batched backward; target ≤ 3.5 forwards);
2. the Purview pass of ``gradtrust.score(..., "purview_final")`` (same per-sample norms, plus its own forward);
3. their ratio (features ÷ Purview pass; ≤ 1 means the features cost no more than the Purview score).
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

import gradtrust


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(num_classes=1000).eval().to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)

    def forward():
        with torch.no_grad():
            model(x)

    work = {
        "forward": forward,
        "gradient_features": lambda: gradtrust.gradient_features(model, x),
        "purview_pass": lambda: gradtrust.score(model, x, "purview_final"),
    }
    for fn in work.values():  # warm-up (allocator, lazy imports)
        fn()
    best = {name: float("inf") for name in work}
    for _ in range(args.repeats):
        for name, fn in work.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    f = best["forward"]
    print(f"{args.model}, batch {args.batch}, {args.size}x{args.size}, {device}, {torch.get_num_threads()} threads, "
          f"min of {args.repeats} interleaved repeats")
    print(f"plain forward               {f * 1000:8.1f} ms   1.00 forward passes")
    for name in ("gradient_features", "purview_pass"):
        print(f"{name:27s} {best[name] * 1000:8.1f} ms   {best[name] / f:.2f} forward passes")
    print(f"features / Purview pass     {best['gradient_features'] / best['purview_pass']:.2f}")


if __name__ == "__main__":
    main()
