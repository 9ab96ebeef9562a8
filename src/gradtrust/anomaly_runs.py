"""The GradCON run folder, stated once: what ``gradtrust gradcon score`` writes (:mod:`gradtrust.gradcon.scoring`)
and ``gradtrust report`` reads (:mod:`gradtrust.reporting.anomaly`), without torch.

::

    RUN/anomaly_scores.parquet   one row per image: index, path, label, inlier (bool), score (higher = more
                                 normal), mse, gradient_term (mean cosine), cos_0 … cos_3 (per decoder layer)
    RUN/manifest.json            "kind": "gradcon", the model folder and its parameters, the inlier class,
                                 the dataset identity, counts, failures, library versions, evaluation summary
    RUN/reconstructions.npz      the most and least anomalous inputs with their reconstructions (28x28),
                                 so that the report draws them without re-running the network

The table is named ``anomaly_scores.parquet`` (not ``scores.parquet``) on purpose: an anomaly run is not a
classifier's run (``inlier`` is not "the prediction is correct"), and the misclassification tables of the
report never pick it up. Every file is written atomically (temporary file, then rename).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gradtrust.schema import MANIFEST_FILE

__all__ = ["ANOMALY_FILE", "KIND", "MANIFEST_FILE", "RECON_FILE", "AnomalyRun", "load_anomaly_run"]

ANOMALY_FILE = "anomaly_scores.parquet"
RECON_FILE = "reconstructions.npz"
KIND = "gradcon"


@dataclass
class AnomalyRun:
    """One loaded GradCON run: ``frame`` (the parquet table), ``manifest``, ``reconstructions`` (``None`` when
    the file is missing) and ``name`` (method · inlier class · data, for tables)."""

    source: Path
    frame: Any
    manifest: dict[str, Any]
    reconstructions: dict[str, np.ndarray] | None
    name: str

    @property
    def inlier_name(self) -> str:
        return str(self.manifest.get("inlier", {}).get("name", "?"))

    @property
    def class_names(self) -> list[str]:
        return [str(c) for c in self.manifest.get("classes", [])]


def load_anomaly_run(path: str | Path) -> AnomalyRun:
    """Read a run folder (or its ``anomaly_scores.parquet``); :class:`DataError` naming the file if unusable."""
    import json

    import pandas as pd

    from gradtrust.errors import DataError

    p = Path(path)
    folder = p if p.is_dir() else p.parent
    table = folder / ANOMALY_FILE
    try:
        frame = pd.read_parquet(table)
    except Exception as exc:  # noqa: BLE001 - any reader failure is one message
        raise DataError(f"cannot read {table}: {exc}") from None
    missing = [c for c in ("label", "inlier", "score") if c not in frame.columns]
    if missing:
        raise DataError(f"{table} lacks the column(s) {', '.join(missing)}: not a GradCON run")
    manifest: dict[str, Any] = {}
    if (folder / MANIFEST_FILE).is_file():
        try:
            manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {folder / MANIFEST_FILE}: {exc}") from None
    recon = None
    if (folder / RECON_FILE).is_file():
        with np.load(folder / RECON_FILE) as data:
            recon = {k: data[k] for k in data.files}
    params = manifest.get("params", {})
    method = (f"GradCON β={params.get('beta')} γ={params.get('gamma')}" if params.get("beta", 0) or params.get("gamma", 0)
              else "AE (β=γ=0)")
    inlier = manifest.get("inlier", {}).get("name", "?")
    data_spec = manifest.get("dataset", {}).get("spec", folder.name)
    return AnomalyRun(source=folder, frame=frame, manifest=manifest, reconstructions=recon,
                      name=f"{method} · inlier {inlier} · {data_spec}")
