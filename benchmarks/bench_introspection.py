"""Cost of introspective inference, in plain forward passes of ``f`` on the same batch, in one process.

    python benchmarks/bench_introspection.py                   # resnet18, 224×224, batch 32, CPU, hidden 64
    python benchmarks/bench_introspection.py --device cuda

``Introspective.predict`` runs ``f`` once (the features are a closed form of its logits and penultimate
features) and then ``H``, whose bilinear first layer costs ``hidden·C·D`` multiply-adds per sample
(resnet18: 64·1000·512 ≈ 33 M, against ≈ 1.8 G for the network). Target: ≤ 1.1 forward passes.
``H`` is fitted for one epoch on one random batch (its weights do not change the cost). Timings are minima
over interleaved repeats, so drifts in machine load hit both alike.
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

from gradtrust.introspection import Introspective


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None).eval().to(device)
    x = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
    y = torch.arange(args.batch_size) % 10
    intro = Introspective(hidden=args.hidden, epochs=1, seed=0).fit(model, x, y)

    def forward():
        with torch.no_grad():
            model(x)

    def introspect():
        intro.predict(model, x, batch_size=args.batch_size)

    extractor = intro._extractor_for(model)
    with torch.no_grad():
        factors = extractor(x)

    def head_only():
        with torch.no_grad():
            intro.head_(factors.a, factors.h)

    forward(), introspect(), head_only()  # warm-up
    f_times, i_times, h_times = [], [], []
    for _ in range(args.repeats):
        f_times.append(_timed(forward, device))
        i_times.append(_timed(introspect, device))
        h_times.append(_timed(head_only, device))
    f, i, h = min(f_times), min(i_times), min(h_times)
    head = intro.head_
    assert head is not None
    print(f"{args.model}, batch {args.batch_size}, {args.size}², {device}, {torch.get_num_threads()} threads, H hidden "
          f"{args.hidden} ({sum(p.numel() for p in head.parameters()) / 1e6:.1f} M parameters)")
    print(f"plain forward {1000 * f:.1f} ms; introspective predict (f + H) {1000 * i:.1f} ms; "
          f"ratio {i / f:.3f} forward passes (target <= 1.1)")
    print(f"H alone on the factors {1000 * h:.1f} ms = {h / f:.3f} forward passes (what predict adds to f, without "
          "the noise of timing f twice)")


if __name__ == "__main__":
    main()
