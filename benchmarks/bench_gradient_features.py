"""``gradtrust.gradient_features`` against Purview's pass of ``gradtrust.score``: one engine, one cost.

    python benchmarks/bench_gradient_features.py                          # vit_b_16, swin_t, convnext_tiny
    python benchmarks/bench_gradient_features.py --models swin_t --batch 4 --repeats 5

Both compute per-sample ``‖∂L_i/∂θ_j‖²`` of every parameter tensor under ``mean_c BCEWithLogits(z_c, 1)``
through :func:`gradtrust.per_sample.sq_norms`' engine (the same kernels, rules and units). For each model
(torchvision constructor, random weights, 1000 classes, eval mode) and one batch of random 224×224 images,
the three jobs below run interleaved in one process, the minimum over ``--repeats`` rounds counting (so that
drifts in machine load hit all alike):

1. a plain batched forward pass (``torch.no_grad``), the unit of cost;
2. ``gradtrust.gradient_features(model, x)``;
3. ``gradtrust.score(model, x, ["purview_final"])`` (Purview's pass plus the scoring engine around it).

Prints each in forward passes, the ratio features ÷ Purview (target ≤ 1.1) and the backend each used with
any submodule that fell back to per-sample autograd (target: "hooks", none).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
import torchvision

import gradtrust
from gradtrust.detection import features as features_module


def _backend_of_features(model: torch.nn.Module, x: torch.Tensor) -> tuple[str, dict[str, str]]:
    """The backend and fallback units ``gradient_features`` used (its call of the engine, observed)."""
    seen: list[Any] = []
    engine = getattr(features_module, "sq_norms", None)
    if engine is None:  # a gradtrust from before the one engine: its features say nothing of their backend
        return "?", {}

    def observed(*args, **kwargs):
        result = engine(*args, **kwargs)
        seen.append(result)
        return result

    features_module.sq_norms = observed
    try:
        gradtrust.gradient_features(model, x)
    finally:
        features_module.sq_norms = engine
    return seen[0].backend, seen[0].fallback


def bench(name: str, batch: int, size: int, repeats: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=1000).eval()
    x = torch.randn(batch, 3, size, size)

    def forward():
        with torch.no_grad():
            model(x)

    work = {"forward": forward,
            "gradient_features": lambda: gradtrust.gradient_features(model, x),
            "purview": lambda: gradtrust.score(model, x, ["purview_final"])}
    for fn in work.values():  # warm-up: allocator, lazy imports, the convolution strategies' measurements
        fn()
    best = {job: float("inf") for job in work}
    for _ in range(repeats):
        for job, fn in work.items():
            start = time.perf_counter()
            fn()
            best[job] = min(best[job], time.perf_counter() - start)
    info = gradtrust.score(model, x, ["purview_final"]).info
    features_backend, features_fallback = _backend_of_features(model, x)
    return {"model": name, **best, "features_backend": features_backend, "features_fallback": features_fallback,
            "purview_backend": info.get("purview_backend"), "purview_fallback": info.get("purview_fallback", {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vit_b_16", "swin_t", "convnext_tiny"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"batch {args.batch}, {args.size}x{args.size}, CPU, {torch.get_num_threads()} threads, "
          f"min of {args.repeats} interleaved repeats; times in plain forward passes")
    print(f"{'model':15s} {'forward':>10s} {'features':>9s} {'Purview':>8s} {'ratio':>6s}  backends (features | Purview)")
    for name in args.models:
        r = bench(name, args.batch, args.size, args.repeats)
        f = r["forward"]
        print(f"{name:15s} {f * 1000:8.0f}ms {r['gradient_features'] / f:9.2f} {r['purview'] / f:8.2f} "
              f"{r['gradient_features'] / r['purview']:6.2f}  {r['features_backend']} {r['features_fallback'] or ''}"
              f" | {r['purview_backend']} {r['purview_fallback'] or ''}")


if __name__ == "__main__":
    main()
