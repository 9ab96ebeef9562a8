"""Time bootstrap confidence intervals on an ImageNet-sized evaluation (50,000 samples).

    .venv/bin/python benchmarks/bench_bootstrap.py [--n 50000] [--resamples 1000] [--loop 10]

Prints, per metric, the time of ``bootstrap_ci`` (vectorised path) for ``--resamples`` resamples, the time
of ``evaluate(..., ci=True)`` (every metric on the same resamples), and the loop path's time per resample
measured on ``--loop`` resamples, extrapolated to ``--resamples``. Scores are continuous (every value
distinct: the worst case for the rank encoding), 1,000 classes, accuracy ≈ 0.76.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gradtrust.evaluation import VECTORISED_METRICS, bootstrap_ci, bootstrap_distribution, evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--loop", type=int, default=10, help="resamples timed on the loop path")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    n, k = args.n, 1000
    scores = rng.normal(size=n)
    correct = rng.random(n) < 1 / (1 + np.exp(-(1.5 * scores + 1.4)))
    labels = rng.integers(0, k, n)
    predictions = np.where(correct, labels, (labels + rng.integers(1, k, n)) % k)
    print(f"n = {n:,} samples, {k} classes, accuracy {correct.mean():.3f}, "
          f"{args.resamples} resamples, numpy {np.__version__}")

    for name in VECTORISED_METRICS:
        arrays = (scores, labels, predictions) if name == "aufc" else (scores, correct)
        t0 = time.perf_counter()
        low, high = bootstrap_ci(name, *arrays, n_resamples=args.resamples, seed=0)
        vec = time.perf_counter() - t0
        t0 = time.perf_counter()
        bootstrap_distribution(name, *arrays, n_resamples=args.loop, seed=0, vectorised=False)
        loop = (time.perf_counter() - t0) / args.loop * args.resamples
        print(f"  {name:13s} vectorised {vec:6.2f} s   loop ≈ {loop:7.1f} s   CI [{low:.5g}, {high:.5g}]")

    t0 = time.perf_counter()
    evaluate(scores, labels, predictions, ci=True, n_resamples=args.resamples, seed=0)
    print(f"  evaluate(ci=True), all {len(VECTORISED_METRICS)} metrics: {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
