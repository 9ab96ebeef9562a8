"""Score a labelled image set with a fitted :class:`~gradtrust.gradcon.GradCON` into a run folder
(:mod:`gradtrust.gradcon.runs`): the per-image table, the manifest and the reconstruction examples."""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path
from typing import Any

import numpy as np

from gradtrust.gradcon.data import LabelledImages
from gradtrust.gradcon.estimator import GradCON
from gradtrust.gradcon.runs import summarise_scores, write_anomaly_run

__all__ = ["score_to_run"]


def score_to_run(detector: GradCON, data: LabelledImages, inlier: int, out_dir: str | Path, *,
                 model_source: str | None = None, examples: int = 8, resamples: int = 1000,
                 seed: int = 0) -> dict[str, Any]:
    """Score every image of ``data`` (class ``inlier`` = normal), write the run folder ``out_dir`` and return
    the evaluation summary (AUROC with inliers positive, FPR@95%TPR, bootstrap CIs)."""
    import pandas as pd

    from gradtrust._version import __version__
    from gradtrust.runs.identity import library_versions

    t0 = time.perf_counter()
    terms = detector.score_terms(data.images)
    elapsed = time.perf_counter() - t0
    inlier_mask = data.labels == int(inlier)
    frame = pd.DataFrame({
        "index": data.indices.astype(np.int64), "path": data.paths, "label": data.labels.astype(np.int64),
        "inlier": inlier_mask, "score": terms.score, "mse": terms.mse, "gradient_term": terms.gradient_term,
    })
    for i in range(terms.cos.shape[1]):
        frame[f"cos_{i}"] = terms.cos[:, i]
    summary = summarise_scores(terms.score, inlier_mask, resamples=resamples, seed=seed)

    order = np.argsort(terms.score, kind="stable")
    k = min(examples, len(order) // 2) if len(order) > 1 else len(order)
    chosen = np.concatenate([order[:k], order[::-1][:k]])  # most anomalous first, then most normal
    inputs, recon = detector.reconstruct(data.images[chosen])
    reconstructions = {"position": chosen.astype(np.int64), "index": data.indices[chosen],
                       "label": data.labels[chosen], "score": terms.score[chosen], "kind": np.array(
                           ["most anomalous"] * k + ["most normal"] * k), "input": inputs.numpy(),
                       "reconstruction": recon.numpy()}
    params = detector.get_params()
    manifest = {
        "gradtrust_version": __version__,
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "model": {"source": model_source, "n_train": detector.n_train_, "steps": detector.steps_,
                  "input_size": list(detector.input_size_), "in_channels": detector.in_channels_,
                  "metadata": detector.metadata_},
        "params": {"beta": params["beta"], "gamma": terms.gamma, "epochs": params["epochs"],
                   "batch_size": params["batch_size"], "lr": params["lr"], "seed": params["seed"]},
        "inlier": {"label": int(inlier), "name": data.classes[int(inlier)]},
        "classes": data.classes,
        "dataset": data.description,
        "counts": {"samples": int(len(data.labels) + len(data.failures)), "scored": int(len(data.labels)),
                   "failed": len(data.failures), "inliers": int(inlier_mask.sum()),
                   "anomalies": int((~inlier_mask).sum())},
        "failures": [{"index": i, "path": p, "reason": r} for i, p, r in data.failures],
        "summary": summary,
        "timing": {"score_s": round(elapsed, 3), "device": str(detector.device)},
        "versions": library_versions(),
    }
    write_anomaly_run(out_dir, frame=frame, manifest=manifest, reconstructions=reconstructions)
    return summary
