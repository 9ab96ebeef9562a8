"""Writing the GradCON run folder (``gradtrust gradcon score``); its format, and its reader for the report,
are :mod:`gradtrust.anomaly_runs`, its summary :func:`gradtrust.evaluation.anomaly_summary`."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from gradtrust.anomaly_runs import ANOMALY_FILE, KIND, MANIFEST_FILE, RECON_FILE, AnomalyRun, load_anomaly_run
from gradtrust.evaluation import anomaly_summary as summarise_scores

__all__ = ["ANOMALY_FILE", "KIND", "MANIFEST_FILE", "RECON_FILE", "AnomalyRun", "load_anomaly_run",
           "summarise_scores", "write_anomaly_run"]


def write_anomaly_run(out_dir: str | Path, *, frame: Any, manifest: dict[str, Any],
                      reconstructions: dict[str, np.ndarray] | None = None) -> Path:
    """Write the run folder (see the module docstring); returns it."""
    from gradtrust.runs.chunks import atomic_write, atomic_write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / ANOMALY_FILE, lambda handle: frame.to_parquet(handle, index=False))
    if reconstructions is not None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **reconstructions)  # type: ignore[arg-type]  # numpy stubs: **kwds typed as bool
        atomic_write(out / RECON_FILE, lambda handle: handle.write(buffer.getvalue()))
    atomic_write_json(out / MANIFEST_FILE, {"kind": KIND, **manifest})
    return out
