"""How long the tutorials' protocols take in full, estimated from a slice: the per-image cost of each, measured on
synthetic files in the releases' formats, times the releases' sizes.

    python benchmarks/bench_suites.py                       # 256 images a set, cifar:resnet20, 2 threads
    python benchmarks/bench_suites.py --images 512 --models cifar:resnet20,cifar:cifar10_resnet56

Measured (random weights: the cost does not depend on their values), each through the command's own code:

* ``benchmark --suite cifar10c`` (every trust score): the slice ``--corruptions fog --severities 1`` (2 runs of
  ``--images`` images each), scoring and report timed apart; full = 1 + 19 × 5 runs of 10,000 images per model.
* ``detect`` (gradient features of every parameter tensor, logistic detector, softmax/energy baselines): known
  ``cifar10:DIR:test`` + one ``ood=cifar10c:…`` set; full = known 10,000 + 19 × 5 CIFAR-10-C sets + SVHN (26,032).
* ``introspect fit`` on ``cifar10:DIR:train`` and ``introspect score`` on one ``cifar10c:`` set; full = fit on
  50,000 + score 19 × 5 sets of 10,000.
* ``gradcon benchmark`` one class, few epochs (per image-epoch of fitting and per scored image); full = 10 classes ×
  (GradCON + autoencoder) × (40 epochs on 5,000 CIFAR-10 / ~6,000 MNIST train images + 10,000 test images).

Prints a Markdown table: per-image seconds and the full run's estimate in hours. Model loading and the
one-off costs are in the slice's time, so the estimate errs high.
"""

from __future__ import annotations

import argparse
import gzip
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

CORRUPTIONS, SEVERITIES = 19, 5


def write_data(root: Path, n: int) -> None:
    """CIFAR-10 (``n`` test images, ``n`` train images per batch), CIFAR-10-C fog (``n`` per severity), MNIST IDX."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [i % 10 for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=4))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=4))
    c_folder = root / "CIFAR-10-C"
    c_folder.mkdir()
    np.save(c_folder / "fog.npy", rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8))
    np.save(c_folder / "labels.npy", np.tile(np.arange(n) % 10, 5).astype(np.uint8))
    mnist = root / "mnist"
    mnist.mkdir()
    for prefix in ("train", "t10k"):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        head = (0x0803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in images.shape)
        (mnist / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(head + images.tobytes()))
        labels = (np.arange(n) % 10).astype(np.uint8)
        head = (0x0801).to_bytes(4, "big") + n.to_bytes(4, "big")
        (mnist / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(head + labels.tobytes()))


def timed(call) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def cli(*args: str) -> None:
    from click.testing import CliRunner

    from gradtrust.cli import main

    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    if result.exit_code != 0:
        raise SystemExit(f"gradtrust {' '.join(args)} failed:\n{result.output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="images per set of the slice")
    parser.add_argument("--models", default="cifar:resnet20")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2, help="GradCON epochs of the slice")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.images
    rows: list[tuple[str, float, float]] = []  # (what, seconds per image, full hours)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_data(root, n)
        from gradtrust.benchmark import plan_jobs, run_jobs, suite_data
        from gradtrust.reporting.report import build_report

        for model in args.models.split(","):
            out = root / f"suite-{model.replace(':', '-')}"
            jobs = plan_jobs([model], suite_data("cifar10c", [str(root)], "fog", "1"), out, weights="random")
            score_s = timed(lambda jobs=jobs: run_jobs(jobs, device="cpu", echo=lambda *a, **k: None))
            report_s = timed(
                lambda out=out, jobs=jobs: build_report(
                    [j.out_dir for j in jobs], out / "report", figures=False, force=True
                )
            )
            full_images = (1 + CORRUPTIONS * SEVERITIES) * 10_000
            rows.append(
                (
                    f"benchmark --suite cifar10c, {model}: scoring (all methods)",
                    score_s / (2 * n),
                    score_s / (2 * n) * full_images / 3600,
                )
            )
            rows.append(
                (
                    f"benchmark --suite cifar10c, {model}: report (1000 bootstrap resamples)",
                    report_s / (2 * n),
                    report_s / (2 * n) * full_images / 3600,
                )
            )
        model = args.models.split(",")[0]
        detect_s = timed(
            lambda: cli(
                "detect",
                "--model",
                model,
                "--data",
                f"cifar10:{root}:test",
                "--challenge",
                f"ood=cifar10c:{root}:fog:1",
                "--detectors",
                "logistic",
                "--baselines",
                "softmax,energy",
                "--resamples",
                "200",
                "--out",
                str(root / "detect"),
            )
        )
        per = detect_s / (2 * n)
        rows.append(
            (
                f"detect, {model}: known + CIFAR-10-C sets + SVHN",
                per,
                per * (10_000 + CORRUPTIONS * SEVERITIES * 10_000 + 26_032) / 3600,
            )
        )
        fit_s = timed(
            lambda: cli(
                "introspect",
                "fit",
                "--model",
                model,
                "--data",
                f"cifar10:{root}:train",
                "--out",
                str(root / "intro"),
                "--no-progress",
            )
        )
        score_s = timed(
            lambda: cli(
                "introspect",
                "score",
                "--introspective",
                str(root / "intro"),
                "--data",
                f"cifar10c:{root}:fog:1",
                "--out",
                str(root / "intro-score"),
                "--no-progress",
            )
        )
        rows.append((f"introspect fit on CIFAR-10 train, {model}", fit_s / (5 * n), fit_s / (5 * n) * 50_000 / 3600))
        rows.append(
            (
                f"introspect score on CIFAR-10-C, {model}",
                score_s / n,
                score_s / n * CORRUPTIONS * SEVERITIES * 10_000 / 3600,
            )
        )
        for data, train_per_class in ((f"cifar10:{root}", 5_000), (f"mnist:{root / 'mnist'}", 6_000)):
            t = timed(
                lambda data=data: cli(
                    "gradcon",
                    "benchmark",
                    "--data",
                    data,
                    "--classes",
                    "0",
                    "--epochs",
                    str(args.epochs),
                    "--resamples",
                    "200",
                    "--no-progress",
                    "--no-report",
                    "--out",
                    str(root / f"gc-{data.split(':')[0]}"),
                )
            )
            train = (5 * n if data.startswith("cifar10") else n) // 10  # one class of the slice's train split
            units = 2 * (train * args.epochs + n)  # two models: image-epochs of fitting + scored images
            full = 10 * 2 * (train_per_class * 40 + 10_000)
            rows.append(
                (f"gradcon benchmark --data {data.split(':')[0]} (per image-epoch)", t / units, t / units * full / 3600)
            )
    print(f"| protocol (slice: {n} images a set, {args.threads} threads) | s / image | full run, hours |")
    print("| --- | ---: | ---: |")
    for what, per_image, hours in rows:
        print(f"| {what} | {per_image:.4f} | {hours:.1f} |")


if __name__ == "__main__":
    main()
