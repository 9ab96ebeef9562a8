"""What explanations cost, in plain forward passes of the same batch, measured in one process.

    python benchmarks/bench_explain.py                         # resnet18 + vgg11, 224×224, batch 32, CPU
    python benchmarks/bench_explain.py --batch-size 8 --device cuda

Prints, each against a plain batched forward pass (``torch.no_grad``) of the same model timed in the same process:
1. Grad-CAM + Counterfactual-CAM + Contrast-CAM for P and one Q (resnet18: GAP head, closed form; target ≤ 1.3);
2. VOICE over all 1000 classes (resnet18; target ≤ 2);
3. the same two on vgg11 (no GAP: one forward with a graph from the layer on + batched backwards);
4. the straightforward per-image loop (one forward + one backward per map, ``tests/reference_explanations.py``)
   ÷ the batched call: for the three maps, and for VOICE (the loop over the 999 contrast classes is timed on a
   few classes of a few images and extrapolated to 999 classes per image).
Timings are minima over repeats, interleaved with the plain forward so that drifts in machine load hit both.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torchvision

import gradtrust
from gradtrust.explanations import resolve_layer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' oracle
from timing import ratio_to_forward, timed

from reference_explanations import reference_map


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--vgg-batch-size", type=int, default=None, help="default: --batch-size")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop-images", type=int, default=2, help="images explained by the per-image loop")
    parser.add_argument("--loop-classes", type=int, default=8, help="contrast classes timed per image for the "
                                                                    "VOICE loop (extrapolated to C − 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-vgg", action="store_true")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"batch={args.batch_size} image={args.image_size} device={device} threads={torch.get_num_threads()} "
          f"torch={torch.__version__}")
    models = [("resnet18", args.batch_size)]
    if not args.skip_vgg:
        models.append(("vgg11", args.vgg_batch_size or args.batch_size))
    for name, batch in models:
        model = getattr(torchvision.models, name)(weights=None).to(device).eval()
        x = torch.randn(batch, 3, args.image_size, args.image_size, device=device)
        ex = gradtrust.explain(model, x[:1])
        path = "closed form" if ex.closed_form else "batched autograd"
        t_ex, t_fwd = ratio_to_forward(model, x, lambda m=model, x=x: gradtrust.explain(m, x), args.repeats, device)
        print(f"{name} (layer {ex.layer}, {path}), batch {batch}: plain forward {t_fwd * 1e3:.0f} ms")
        print(f"  1. gradcam + counterfactual + contrast: {t_ex / t_fwd:.2f} forward passes "
              f"[{t_ex * 1e3:.0f} ms]")
        t_v, t_fwd = ratio_to_forward(model, x, lambda m=model, x=x: gradtrust.voice(m, x), max(1, args.repeats - 1), device)
        print(f"  2. VOICE over all {ex.logits.shape[1]} classes: {t_v / t_fwd:.2f} forward passes [{t_v * 1e3:.0f} ms]")

        spec = resolve_layer(model, x, None)
        n = min(args.loop_images, batch)
        targets = ex.target.item(), int(ex.contrast[0]) if ex.contrast is not None else 1

        def loop_maps(model=model, x=x, spec=spec, n=n, targets=targets):
            for i in range(n):
                for method in ("gradcam", "counterfactual", "contrast"):
                    reference_map(model, x[i], spec, method, targets[0], targets[1])

        t_loop = timed(loop_maps, device) / n
        print(f"  3. per-image loop / batched, three maps: {t_loop / (t_ex / batch):.1f}x "
              f"[{t_loop * 1e3:.0f} ms vs {t_ex / batch * 1e3:.1f} ms per image]")
        classes = ex.logits.shape[1]

        def loop_voice(model=model, x=x, spec=spec, n=n):
            for i in range(n):
                for q in range(1, args.loop_classes + 1):
                    reference_map(model, x[i], spec, "contrast", 0, q)

        t_class = timed(loop_voice, device) / (n * args.loop_classes)
        t_loop_voice = t_class * (classes - 1)
        print(f"  4. per-image, per-class loop / batched, VOICE: {t_loop_voice / (t_v / batch):.0f}x "
              f"[{t_loop_voice:.1f} s extrapolated from {args.loop_classes} classes x {n} images, vs "
              f"{t_v / batch * 1e3:.1f} ms per image]")


if __name__ == "__main__":
    main()
