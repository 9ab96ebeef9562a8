"""How much trust scoring costs, in plain forward passes of the same batch, measured in one process.

    python benchmarks/bench_scores.py                      # resnet18, 224×224, batch 32, CPU
    python benchmarks/bench_scores.py --device cuda --half # on a GPU, also in float16

Prints, each figure against a plain batched forward pass (``torch.no_grad``) timed in the same process:
1. throughput of the one-forward-pass group ÷ throughput of a plain forward (target ≥ 0.9; limit 1);
2. cost of every method except mc_dropout, in plain forward passes (target ≤ 7);
3. cost of Purview alone, in plain forward passes (target ≤ 3.5);
4. the straightforward way (one image at a time, one autograd pass per method:
   ``tests/reference_scores.py``) ÷ ``gradtrust.score`` on the same images;
5. the two VOICE explanation-uncertainty scores, in plain forward passes.
Timings are minima over repeats (the least-disturbed run), interleaved with the plain forward so drifts in
machine load hit both alike. ``--keep-freed-memory`` first calls ``gradtrust.keep_freed_memory()`` (glibc
keeps freed memory for reuse, as the ``gradtrust`` command does on a CPU); without it the library's default
allocator behaviour is measured. The header line says which.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torchvision

import gradtrust
import gradtrust.scores

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' oracle
from timing import ratio_to_forward, timed

from reference_scores import reference_score

FORWARD_GROUP = ["softmax", "entropy", "max_logit", "margin", "brier", "logit_margin", "energy", "doctor",
                 "maxlogit_pnorm", "gradtrust", "gradtrust_topk", "gradnorm"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18", help="torchvision model name (random weights)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference-images", type=int, default=8,
                        help="images scored the straightforward way (it is slow; the ratio is per image)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--half", action="store_true", help="also report the ratios with the model in float16/bfloat16")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="call gradtrust.keep_freed_memory() first (glibc: no mmap, no heap trimming)")
    args = parser.parse_args()
    kept = gradtrust.keep_freed_memory() if args.keep_freed_memory else False

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None).to(device).eval()
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    # The trust scores of the paper and the baselines (every method of gradtrust.scores.methods); the VOICE
    # explanation scores are timed on their own (item 5), so figures stay comparable across versions.
    builtin = [s.name for s in gradtrust.scores.method_specs() if s.module == "gradtrust.scores.methods"]
    all_but_mc = [m for m in builtin if m != "mc_dropout"]
    voice = [s.name for s in gradtrust.scores.method_specs() if s.name.startswith("voice_")]
    print(f"model={args.model} batch={args.batch_size} image={args.image_size} device={device} "
          f"threads={torch.get_num_threads()} torch={torch.__version__} keep_freed_memory={'on' if kept else 'off'}"
          + (" (requested, but not applicable here)" if args.keep_freed_memory and not kept else ""))

    t_group, t_fwd = ratio_to_forward(model, x, lambda: gradtrust.score(model, x, FORWARD_GROUP), args.repeats, device)
    print(f"1. forward-pass group ({len(FORWARD_GROUP)} scores): throughput ratio {t_fwd / t_group:.3f} "
          f"(target >= 0.9)   [plain forward {t_fwd * 1e3:.1f} ms, group {t_group * 1e3:.1f} ms]")
    t_all, t_fwd = ratio_to_forward(model, x, lambda: gradtrust.score(model, x, all_but_mc), args.repeats, device)
    print(f"2. all {len(all_but_mc)} methods except mc_dropout: {t_all / t_fwd:.2f} forward passes (target <= 7)")
    t_pv, t_fwd = ratio_to_forward(model, x, lambda: gradtrust.score(model, x, ["purview_initial", "purview_final"]),
                                   args.repeats, device)
    print(f"3. purview alone: {t_pv / t_fwd:.2f} forward passes (target <= 3.5)")

    n = min(args.reference_images, args.batch_size)
    if n > 0:  # --reference-images 0 leaves the slow straightforward way out
        final = model.get_submodule(gradtrust.score(model, x[:1], ["gradtrust"]).info["final_layer"])
        methods = all_but_mc

        def straightforward():
            for i in range(n):
                for method in methods:
                    reference_score(model, x[i:i + 1], method, layer=final)

        t_ref = timed(straightforward, device) / n
        t_fast = min(timed(lambda: gradtrust.score(model, x, methods), device)
                                   for _ in range(max(1, args.repeats // 2))) / args.batch_size
        print(f"4. straightforward (per image, per method autograd) / gradtrust.score: {t_ref / t_fast:.1f}x "
              f"[{t_ref * 1e3:.0f} ms vs {t_fast * 1e3:.1f} ms per image]")

    if voice:
        t_voice, t_fwd = ratio_to_forward(model, x, lambda: gradtrust.score(model, x, voice), args.repeats, device)
        print(f"5. VOICE scores ({', '.join(voice)}): {t_voice / t_fwd:.2f} forward passes")

    if args.half:
        dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        model_h, x_h = model.to(dtype), x.to(dtype)
        t_group, t_fwd = ratio_to_forward(model_h, x_h, lambda: gradtrust.score(model_h, x_h, FORWARD_GROUP),
                                          args.repeats, device)
        t_all, _ = ratio_to_forward(model_h, x_h, lambda: gradtrust.score(model_h, x_h, all_but_mc), args.repeats, device)
        print(f"{dtype}: group throughput ratio {t_fwd / t_group:.3f}; all but mc_dropout {t_all / t_fwd:.2f} forwards")


if __name__ == "__main__":
    main()
