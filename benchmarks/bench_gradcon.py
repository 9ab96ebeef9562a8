"""GradCON's scoring cost in forward passes of its autoencoder: batched per-sample gradients vs the per-image loop.

    python benchmarks/bench_gradcon.py [--images 256] [--chunk-size 128] [--repeats 5] [--threads 1] [--device cpu]

Scoring needs, per image, the reconstruction error and the gradient of that error with respect to the four
decoder weights (then four cosines with the training mean). ``gradtrust.gradcon.per_sample_terms`` does it
for a chunk of images at once (``torch.func.vmap`` over ``grad`` of a ``functional_call``);
``per_sample_terms_loop`` is the release's way, one image at a time with ``torch.autograd.grad``. Both do the
same arithmetic (one forward and one backward per image); what differs is how much of it is batched.

Prints each as a multiple of one batched no-grad forward pass over the same images (the unit), the
timings interleaved and the minimum of ``--repeats`` taken, and checks that both give the same numbers.
"""

from __future__ import annotations

import argparse
import time

import torch

from gradtrust.data import DigitsDataset
from gradtrust.gradcon import GradConAE, per_sample_terms, per_sample_terms_loop, to_working_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--chunk-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = GradConAE(1).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    names = model.decoder_weight_names
    params = dict(model.named_parameters())
    reference = [torch.randn_like(params[n]) for n in names]
    x_all, _ = DigitsDataset("test").tensors()
    x = to_working_size(x_all[: args.images]).to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def forward() -> None:
        with torch.no_grad():
            for s in range(0, len(x), args.chunk_size):
                model(x[s:s + args.chunk_size])

    def batched() -> None:
        per_sample_terms(model, x, reference, names, chunk_size=args.chunk_size)

    def loop() -> None:
        per_sample_terms_loop(model, x, reference, names)

    fns = {"forward (no grad, batched)": forward, "GradCON terms, batched (vmap)": batched,
           "GradCON terms, per-image loop": loop}
    for fn in fns.values():  # warm-up (imports, allocator)
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.repeats):  # interleaved, so that a busy machine slows all alike
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    unit = best["forward (no grad, batched)"]
    mse_b, cos_b = per_sample_terms(model, x, reference, names, chunk_size=args.chunk_size)
    mse_l, cos_l = per_sample_terms_loop(model, x, reference, names)
    print(f"{len(x)} images 1x28x28, chunk {args.chunk_size}, {args.threads} thread(s), device {device}, "
          f"min of {args.repeats} interleaved repeats")
    print("| computation | time (ms) | ms / image | cost in batched forward passes |")
    print("| --- | ---: | ---: | ---: |")
    for name, t in best.items():
        print(f"| {name} | {1e3 * t:.1f} | {1e3 * t / len(x):.3f} | {t / unit:.1f} |")
    ratio = best["GradCON terms, per-image loop"] / best["GradCON terms, batched (vmap)"]
    print(f"loop / batched = {ratio:.2f}x; max |Δ mse| = {float((mse_b - mse_l).abs().max()):.2e}, "
          f"max |Δ cos| = {float((cos_b - cos_l).abs().max()):.2e}")


if __name__ == "__main__":
    main()
