"""Score a labelled image set with a fitted :class:`~gradtrust.gradcon.GradCON` into a run folder (its format:
:mod:`gradtrust.anomaly_runs`): a :class:`GradconScore` task of the one run engine (resumable chunks, another
run's folder refused unless ``force``, shared between ``torchrun`` processes), then the per-image table, the
manifest and the reconstruction examples."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from gradtrust.anomaly_runs import ANOMALY_FILE, KIND, RECON_FILE
from gradtrust.evaluation import anomaly_summary
from gradtrust.gradcon.data import LabelledImages
from gradtrust.gradcon.estimator import GradCON
from gradtrust.runs import chunks as ch
from gradtrust.runs.folder import RunFolder
from gradtrust.runs.identity import files_sha256, library_versions, tensors_sha256
from gradtrust.runs.task import TensorSamples, run_task

__all__ = ["GradconScore", "score_to_run"]

FORMAT = "gradtrust.gradcon/1"


class GradconScore:
    """GradCON's score terms of every image (a :class:`gradtrust.runs.Task`); ``finish`` writes the run."""

    kind, format, verb, desc = KIND, FORMAT, "scored", "GradCON score"
    outputs: tuple[str, ...] = (ANOMALY_FILE, RECON_FILE)

    def __init__(self, detector: GradCON, data: LabelledImages, inlier: int, model_source: str | None,
                 examples: int, resamples: int, seed: int) -> None:
        self.detector, self.data, self.inlier, self.model_source = detector, data, int(inlier), model_source
        self.examples, self.resamples, self.seed = examples, resamples, seed

    def identity(self) -> dict:
        det, data = self.detector, self.data
        params = {k: v for k, v in det.get_params().items() if k not in ("device", "progress")}
        weights = {**(det.model_.state_dict() if det.model_ is not None else {}),
                   **{f"reference.{i}": r for i, r in enumerate(det.reference_ or [])}}
        return {"detector": {"parameters_sha256": tensors_sha256(weights), "params": params, "gamma": det.gamma},
                "data": {**data.description,
                         "content_sha256": files_sha256([*data.paths, *(p for _, p, _ in data.failures)])},
                "inlier": self.inlier}

    def probe(self, inputs: torch.Tensor, index: int) -> None:
        self.detector.score_terms(inputs)

    def batch(self, batch: Any, inputs: torch.Tensor | None) -> Any:
        shown, self.detector.progress = self.detector.progress, False  # the engine's bar is the one shown
        try:
            return batch.indices.numpy(), self.detector.score_terms(inputs)
        finally:
            self.detector.progress = shown

    def chunk(self, parts: list) -> tuple[pa.Table, dict]:
        position = np.concatenate([p[0] for p in parts])
        cos = np.concatenate([p[1].cos for p in parts])
        return pa.table({"position": position, "score": np.concatenate([p[1].score for p in parts]),
                         "mse": np.concatenate([p[1].mse for p in parts]),
                         "cos": pa.FixedSizeListArray.from_arrays(pa.array(cos.reshape(-1)), cos.shape[1])}), {}

    def finish(self, folder: RunFolder, layout: ch.ChunkLayout, metas: list[dict], execution: dict) -> dict:
        import pandas as pd

        data, det = self.data, self.detector
        table = pa.concat_tables([ch.read_chunk_table(layout.path(folder.out, k)) for k in range(layout.num_chunks)])
        score, mse = table["score"].to_numpy(), table["mse"].to_numpy()
        cos = np.asarray(table["cos"].combine_chunks().flatten()).reshape(table.num_rows, -1)
        inlier_mask = data.labels == self.inlier
        frame = pd.DataFrame({"index": data.indices.astype(np.int64), "path": data.paths,
                              "label": data.labels.astype(np.int64), "inlier": inlier_mask, "score": score, "mse": mse,
                              "gradient_term": cos.mean(axis=1)})
        for i in range(cos.shape[1]):
            frame[f"cos_{i}"] = cos[:, i]
        summary = anomaly_summary(score, inlier_mask, resamples=self.resamples, seed=self.seed)
        order = np.argsort(score, kind="stable")
        k = min(self.examples, len(order) // 2) if len(order) > 1 else len(order)
        chosen = np.concatenate([order[:k], order[::-1][:k]])  # most anomalous first, then most normal
        inputs, recon = det.reconstruct(data.images[chosen])
        buffer = io.BytesIO()
        np.savez_compressed(buffer, position=chosen.astype(np.int64), index=data.indices[chosen],
                            label=data.labels[chosen], score=score[chosen],
                            kind=np.array(["most anomalous"] * k + ["most normal"] * k), input=inputs.numpy(),
                            reconstruction=recon.numpy())
        ch.atomic_write(folder.out / ANOMALY_FILE, lambda handle: frame.to_parquet(handle, index=False))
        ch.atomic_write(folder.out / RECON_FILE, lambda handle: handle.write(buffer.getvalue()))
        params = det.get_params()
        from gradtrust._version import __version__

        folder.write_manifest({
            "gradtrust_version": __version__, "created": folder.created_at(),
            "model": {"source": self.model_source, "n_train": det.n_train_, "steps": det.steps_,
                      "input_size": list(det.input_size_), "in_channels": det.in_channels_,
                      "metadata": det.metadata_},
            "params": {"beta": params["beta"], "gamma": det.gamma, "epochs": params["epochs"],
                       "batch_size": params["batch_size"], "lr": params["lr"], "seed": params["seed"]},
            "inlier": {"label": self.inlier, "name": data.classes[self.inlier]},
            "classes": data.classes,
            "dataset": data.description,
            "counts": {"samples": int(len(data.labels) + len(data.failures)), "scored": int(len(data.labels)),
                       "failed": len(data.failures), "inliers": int(inlier_mask.sum()),
                       "anomalies": int((~inlier_mask).sum())},
            "failures": [{"index": i, "path": p, "reason": r} for i, p, r in data.failures],
            "summary": summary,
            "timing": {"score_s": execution["elapsed_s"], "device": str(det.device)},
            "execution": execution,
            "versions": library_versions(),
        })
        return summary


def score_to_run(detector: GradCON, data: LabelledImages, inlier: int, out_dir: str | Path, *,
                 model_source: str | None = None, examples: int = 8, resamples: int = 1000,
                 seed: int = 0, force: bool = False, progress: bool = False, chunk_size: int | None = None
                 ) -> dict[str, Any]:
    """Score every image of ``data`` (class ``inlier`` = normal), write the run folder ``out_dir`` and return
    the evaluation summary (AUROC with inliers positive, FPR@95%TPR, bootstrap CIs). The batches are those
    :meth:`GradCON.score_terms` cuts (``8 · chunk_size`` images), so the numbers equal one call's."""
    task = GradconScore(detector, data, inlier, model_source, examples, resamples, seed)
    return run_task(task, TensorSamples(data.images, data.labels), out_dir, batch_size=detector.chunk_size * 8,
                    chunk_size=chunk_size, device=torch.device(detector.device), force=force, progress=progress)
