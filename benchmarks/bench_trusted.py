"""The cost of a TrustedClassifier over the plain model's forward pass (target: ≤ 1.05×).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_trusted.py [--model resnet18] [--batch 64] [--size 224]
        [--repeats 15] [--device cpu|cuda] [--scores softmax,energy,gradtrust,gradtrust_topk,gradnorm]

For each score: the plain ``model(x)`` and ``TrustedClassifier(model, score)(x)`` (eager, and the
``torch.export`` program) are timed interleaved — one call of each per round, ``--repeats`` rounds after a
warm-up — under ``torch.inference_mode`` (GPU: wall time; CPU: the process's CPU time on ``--threads`` threads);
the ratio is of the minima (the least disturbed call of each), so that load on the machine moves both alike.
torchvision models get random weights (nothing is downloaded); ``digits`` is the bundled digits CNN.
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

from gradtrust.models import load_model
from gradtrust.trusted import TrustedClassifier


def _timed(fn, x: torch.Tensor, device: torch.device) -> float:
    """Wall time on a GPU (synchronised); on a CPU the process's CPU time, one thread (``--threads``), which other
    processes on a shared machine disturb far less than the wall clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn(x)
        torch.cuda.synchronize(device)
        return time.perf_counter() - t0
    t0 = time.process_time()
    fn(x)
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18", help="a torchvision classifier name, or 'digits'")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--scores", default="softmax,energy,gradtrust,gradtrust_topk,gradnorm")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (CPU time is measured on a CPU)")
    args = ap.parse_args()

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model == "digits":
        model = load_model("digits:digits_cnn", "DEFAULT").module
        x = torch.rand(args.batch, 1, 8, 8)
    else:
        model = getattr(torchvision.models, args.model)()
        x = torch.rand(args.batch, 3, args.size, args.size)
    model = model.eval().to(device)
    x = x.to(device)
    print(
        f"{args.model}, batch {args.batch}, device {device}, torch {torch.__version__}, "
        f"{args.repeats} interleaved rounds, ratio of minima"
    )
    for name in args.scores.split(","):
        trusted = TrustedClassifier(model, name, threshold=0.0).eval()
        exported = trusted.export(x).module()
        calls = {"plain": model, "trusted": trusted, "exported": exported}
        times: dict[str, list[float]] = {k: [] for k in calls}
        with torch.inference_mode():
            for fn in calls.values():  # warm-up
                fn(x)
                fn(x)
            for _ in range(args.repeats):
                for key, fn in calls.items():
                    times[key].append(_timed(fn, x, device))
        best = {k: min(v) for k, v in times.items()}
        print(
            f"  {name:15s} plain {best['plain'] * 1e3:8.2f} ms   trusted {best['trusted'] * 1e3:8.2f} ms "
            f"({best['trusted'] / best['plain']:.3f}x)   exported {best['exported'] * 1e3:8.2f} ms "
            f"({best['exported'] / best['plain']:.3f}x)"
        )


if __name__ == "__main__":
    main()
