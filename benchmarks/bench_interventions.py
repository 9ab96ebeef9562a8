"""What the interventions cost, in plain forward passes of the same batch, measured in one process.

    python benchmarks/bench_interventions.py                               # resnet18, 224×224, batch 4, CPU
    python benchmarks/bench_interventions.py --batch-size 32 --masks 4000 --device cuda

Each line: the call's time, the number of batch-sized forward passes its definition implies (``K``), and the ratio
time / (K × a plain ``torch.no_grad`` forward of the same batch), timed in the same process, interleaved, minimum
of repeats. A ratio near 1 means the call costs what its masked passes imply and no more; below 1, the packing
into larger forward batches (up to ``batch_bytes`` of input, 256 MiB by default) runs faster per image than the
plain batch does.

Every call also makes one plain forward pass for ``P_t(x)``, counted in ``K``:

1. occlusion (patch ``min(H, W)//8``, stride half of it): ``K`` = 1 + the number of patch positions;
2. RISE + SHAPE (one set of masked passes for both): ``K`` = 1 + ``--masks``;
3. evaluation of one map by deletion with ``steps`` steps: ``K = 1 + (steps + 1)`` readings; insertion the same
   plus a blur; Average Drop ``K = 2``; ROAD ``K = 1 + 18`` plus the sparse solves (CPU, SciPy).
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from timing import ratio_to_forward

import gradtrust
from gradtrust.explanations import PerturbationOptions
from gradtrust.explanations.perturbation import occlusion_masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--masks", type=int, default=200, help="RISE/SHAPE masks (the method's default is 4000)")
    parser.add_argument("--steps", type=int, default=100, help="deletion steps (default min(H·W, 100) = 100)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=1000).eval().to(device)
    x = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
    size = (args.size, args.size)
    options = PerturbationOptions(num_masks=args.masks)
    patch, stride = options.patch(size)
    positions = occlusion_masks(size, patch, stride).shape[0]
    maps = torch.rand(args.batch_size, *size, device=device)
    print(f"resnet18, {args.size}×{args.size}, batch {args.batch_size}, {device}")

    cases = [
        (
            f"occlusion (patch {patch}, stride {stride})",
            1 + positions,
            lambda: gradtrust.explain(model, x, methods="occlusion", perturbation=options),
        ),
        (
            f"RISE + SHAPE ({args.masks} masks)",
            1 + args.masks,
            lambda: gradtrust.explain(model, x, methods="rise,shape", perturbation=options),
        ),
        (
            f"deletion, {args.steps} steps",
            args.steps + 2,
            lambda: gradtrust.evaluate_explanations(
                model, x, maps, metrics="deletion", steps=args.steps, baselines=False
            ),
        ),
        (
            f"insertion, {args.steps} steps",
            args.steps + 2,
            lambda: gradtrust.evaluate_explanations(
                model, x, maps, metrics="insertion", steps=args.steps, baselines=False
            ),
        ),
        (
            "Average Drop + Increase",
            2,
            lambda: gradtrust.evaluate_explanations(model, x, maps, metrics="average_drop", baselines=False),
        ),
        (
            "ROAD (9 fractions × MoRF/LeRF)",
            19,
            lambda: gradtrust.evaluate_explanations(model, x, maps, metrics="road", baselines=False),
        ),
    ]
    for name, passes, work in cases:
        spent, forward = ratio_to_forward(model, x, work, args.repeats, device)
        print(
            f"  {name:38s} {spent:8.2f} s  K = {passes:5d}  time / (K × forward) = {spent / (passes * forward):.2f}"
            f"  (forward {1000 * forward:.1f} ms)"
        )


if __name__ == "__main__":
    main()
