"""The GradCON benchmark: one model per class, as the release does — on the bundled digits by default (nothing
downloaded), or on a data set in its distributed format: ``cifar10:DIR``, ``cifar100:DIR``, ``mnist:DIR``
(train split to fit, test split to score; :func:`split_specs`).

For each inlier class ``c``: train GradCON (β, γ) and the plain reconstruction-error autoencoder (β = γ = 0)
identically (same seed, epochs, batches) on the train split's images of class ``c``; score the whole test split
(class ``c`` = normal = positive); AUROC with 95% bootstrap CIs. Also shown:
the GradCON-trained model scored with γ = 0 (its reconstruction error alone), which separates the effect of
the training constraint from that of the scoring term.

The mean row and the difference column use *paired* bootstrap resamples: every class and method is
evaluated on the same resampled test sets (``gradtrust.evaluation.bootstrap_distribution`` with one seed
draws the same indices for arrays of the same length), and the statistic (mean over classes, or the
difference GradCON − AE) is taken per resample before the percentiles.

Layout of ``--out``::

    <out>/models/{gradcon,autoencoder}/class_<c>/   saved detectors (GradCON.load)
    <out>/runs/{gradcon,autoencoder}/class_<c>/     run folders (anomaly_scores.parquet, manifest.json, …)
    <out>/table.md, table.csv                       the table below
    <out>/report/                                   `gradtrust report` of the runs, written by the CLI command
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gradtrust.evaluation.bootstrap import ci_text

__all__ = ["DEFAULT_EPOCHS", "GradconBenchmark", "run_gradcon_benchmark", "split_specs"]

#: Epochs per model on the ~90 training images of one digit class (2 batches of 64 per epoch).
DEFAULT_EPOCHS = 40
METHODS = ("autoencoder", "gradcon", "gradcon_gamma0")


@dataclass
class GradconBenchmark:
    """What :func:`run_gradcon_benchmark` produced: ``frame`` (one row per class + the mean), ``markdown``,
    ``out_dir``, ``runs`` (run folders), ``elapsed_s``, ``settings``."""

    frame: Any
    markdown: str
    out_dir: Path
    runs: list[Path] = field(default_factory=list)
    elapsed_s: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)


def _cell(value: float, ci: tuple[float, float] | None) -> str:
    return ci_text(value, *(ci or (None, None)))


def split_specs(data: str) -> tuple[str, str]:
    """The (train, test) specs of a data set whose spec ends in its split: ``digits`` → ``digits:train``,
    ``digits:test``; ``cifar10:DIR`` (or ``cifar10:DIR:test``) → ``cifar10:DIR:train``, ``cifar10:DIR:test``."""
    from gradtrust.errors import InputError

    base = str(data).strip()
    for split in (":train", ":test"):
        if base.endswith(split):
            base = base[: -len(split)]
    family = base.split(":")[0]
    if family not in ("digits", "cifar10", "cifar100", "mnist") or (family != "digits" and ":" not in base):
        raise InputError(f"the GradCON benchmark takes --data digits, cifar10:DIR, cifar100:DIR or mnist:DIR (a data "
                         f"set with train and test splits), got {data!r}")
    return f"{base}:train", f"{base}:test"


def run_gradcon_benchmark(out_dir: str | Path = "gradcon-benchmark", *, data: str = "digits",
                          classes: list[int] | None = None,
                          epochs: int = DEFAULT_EPOCHS, beta: float = 0.03, gamma: float = 0.12, seed: int = 0,
                          resamples: int = 1000, confidence: float = 0.95, device: str = "cpu",
                          progress: bool = True, echo: Any = None,
                          threads: int | None = 1) -> GradconBenchmark:
    """Run the benchmark (see the module docstring) and write everything into ``out_dir``.

    ``threads``: torch's intra-op threads while it runs (restored afterwards; ``None`` = leave as is). One by
    default: the 28x28 convolutions are too small to gain from more, and extra threads only wait on busy cores.
    """
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _run(out_dir, data=data, classes=classes, epochs=epochs, beta=beta, gamma=gamma, seed=seed, resamples=resamples,
                    confidence=confidence, device=device, progress=progress, echo=echo)
    finally:
        torch.set_num_threads(previous)


def _run(out_dir: str | Path, *, data: str, classes: list[int] | None, epochs: int, beta: float, gamma: float, seed: int,
         resamples: int, confidence: float, device: str, progress: bool, echo: Any) -> GradconBenchmark:
    import pandas as pd

    from gradtrust.errors import InputError
    from gradtrust.evaluation import auroc, bootstrap_distribution, fpr_at_95tpr
    from gradtrust.evaluation.bootstrap import percentile_interval
    from gradtrust.gradcon.data import load_labelled
    from gradtrust.gradcon.estimator import GradCON
    from gradtrust.gradcon.scoring import score_to_run
    from gradtrust.runs.chunks import atomic_write, atomic_write_json

    say = echo or (lambda _msg: None)
    t0 = time.perf_counter()
    out = Path(out_dir)
    train_spec, test_spec = split_specs(data)
    train = load_labelled(train_spec)
    test = load_labelled(test_spec)
    classes = list(range(len(train.classes))) if classes is None else [int(c) for c in classes]
    bad = [c for c in classes if not 0 <= c < len(train.classes)]
    if bad or not classes:
        raise InputError(f"classes must be in 0..{len(train.classes) - 1}, got {classes}")
    if resamples < 1:
        raise InputError(f"resamples must be >= 1 for the confidence intervals, got {resamples}")
    n = len(test.labels)
    dists: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    rows: list[dict[str, Any]] = []
    runs: list[Path] = []
    for c in classes:
        inliers = train.of_class(c)
        is_inlier = test.labels == c
        row: dict[str, Any] = {"class": test.classes[c], "n_train": int(len(inliers)), "n_test_inliers":
                               int(is_inlier.sum()), "n_test": n}
        scores: dict[str, np.ndarray] = {}
        for method, (b, g) in (("autoencoder", (0.0, 0.0)), ("gradcon", (beta, gamma))):
            t1 = time.perf_counter()
            det = GradCON(beta=b, gamma=g, epochs=epochs, seed=seed, device=device, progress=progress)
            det.fit(inliers)
            det.save(out / "models" / method / f"class_{c}", metadata={
                "inlier": {"label": c, "name": test.classes[c]}, "data": train_spec, "grayscale": False})
            run_dir = out / "runs" / method / f"class_{c}"
            score_to_run(det, test, c, run_dir, model_source=str(out / "models" / method / f"class_{c}"), force=True,
                         resamples=resamples, seed=seed)
            runs.append(run_dir)
            frame = pd.read_parquet(run_dir / "anomaly_scores.parquet")
            scores[method] = frame["score"].to_numpy()
            if method == "gradcon":
                scores["gradcon_gamma0"] = -frame["mse"].to_numpy()
            say(f"class {c} {method}: AUROC {100 * auroc(scores[method], is_inlier):.2f} "
                f"({time.perf_counter() - t1:.1f} s)")
        for m in METHODS:
            dist = bootstrap_distribution("auroc", scores[m], is_inlier, n_resamples=resamples, seed=seed)
            dists[m].append(dist)
            row[f"auroc_{m}"] = auroc(scores[m], is_inlier)
            row[f"auroc_{m}_ci"] = percentile_interval(dist, confidence)
            row[f"fpr95_{m}"] = fpr_at_95tpr(scores[m], is_inlier)
        diff = dists["gradcon"][-1] - dists["autoencoder"][-1]
        row["delta"] = row["auroc_gradcon"] - row["auroc_autoencoder"]
        row["delta_ci"] = percentile_interval(diff, confidence)
        rows.append(row)

    mean: dict[str, Any] = {"class": "mean", "n_train": None, "n_test_inliers": None, "n_test": n}
    for m in METHODS:
        mean[f"auroc_{m}"] = float(np.mean([r[f"auroc_{m}"] for r in rows]))
        mean[f"auroc_{m}_ci"] = percentile_interval(np.mean(dists[m], axis=0), confidence)
        mean[f"fpr95_{m}"] = float(np.mean([r[f"fpr95_{m}"] for r in rows]))
    mean["delta"] = mean["auroc_gradcon"] - mean["auroc_autoencoder"]
    mean["delta_ci"] = percentile_interval(np.mean(dists["gradcon"], axis=0) - np.mean(dists["autoencoder"], axis=0),
                                 confidence)
    rows.append(mean)

    settings = {"epochs": epochs, "beta": beta, "gamma": gamma, "seed": seed, "resamples": resamples,
                "confidence": confidence, "device": device, "classes": classes, "data": data,
                "image_size": list(test.images.shape[1:])}
    markdown = _markdown(rows, settings)
    flat = pd.DataFrame([{k: (list(v) if isinstance(v, tuple) else v) for k, v in r.items()} for r in rows])
    for col in [c for c in flat.columns if c.endswith("_ci")]:
        flat[col.replace("_ci", "_ci_low")] = [v[0] for v in flat[col]]
        flat[col.replace("_ci", "_ci_high")] = [v[1] for v in flat[col]]
        flat = flat.drop(columns=col)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "table.md", lambda h: h.write(markdown.encode("utf-8")))
    atomic_write(out / "table.csv", lambda h: h.write(flat.to_csv(index=False).encode("utf-8")))
    elapsed = time.perf_counter() - t0
    atomic_write_json(out / "benchmark.json", {"settings": settings, "elapsed_s": round(elapsed, 1),
                                               "runs": [str(r) for r in runs]})
    return GradconBenchmark(frame=flat, markdown=markdown, out_dir=out, runs=runs,
                            elapsed_s=time.perf_counter() - t0, settings=settings)


def _markdown(rows: list[dict[str, Any]], s: dict[str, Any]) -> str:
    conf = int(round(100 * s["confidence"]))
    data = s.get("data", "digits")
    name = "the bundled digits" if data == "digits" else data
    side = s.get("image_size", [1, 8, 8])[1:]
    size = "x".join(map(str, side)) + ("" if list(side) == [28, 28] else
                                       ", upsampled to 28x28" if side[0] < 28 else ", resized to 28x28")
    lines = [
        f"AUROC ×100 (inliers = the class = positive; all {rows[-1]['n_test']} test images of {name} scored), "
        f"[{conf}% paired bootstrap CI, {s['resamples']} resamples, seed {s['seed']}]. One model per class, "
        f"trained {s['epochs']} epochs on that class's train images ({size}), seed "
        f"{s['seed']}. AE: β = γ = 0 (reconstruction error); GradCON: β = {s['beta']} in training, γ = "
        f"{s['gamma']} in scoring; Δ = GradCON − AE; last column: the GradCON-trained model scored by its "
        "reconstruction error alone (γ = 0).",
        "",
        "| inlier class | inliers / test | AE (β=γ=0) | GradCON | Δ GradCON − AE | GradCON model, γ=0 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        name = f"**{r['class']}**" if r["class"] == "mean" else r["class"]
        count = "—" if r["n_test_inliers"] is None else f"{r['n_test_inliers']} / {r['n_test']}"
        lines.append(
            f"| {name} | {count} | "
            f"{_cell(r['auroc_autoencoder'], r['auroc_autoencoder_ci'])} | "
            f"{_cell(r['auroc_gradcon'], r['auroc_gradcon_ci'])} | "
            f"{100 * r['delta']:+.2f} [{100 * r['delta_ci'][0]:+.2f}, {100 * r['delta_ci'][1]:+.2f}] | "
            f"{_cell(r['auroc_gradcon_gamma0'], r['auroc_gradcon_gamma0_ci'])} |")
    return "\n".join(lines) + "\n"
