"""A gate applied to a score run: ``decisions.parquet`` (one ``accept`` per row) and ``decisions.json`` (the gate,
and on labelled rows the realised coverage and selective risk) in the run's folder.

``gradtrust gate apply gate.json RUN…`` and ``gradtrust score … --gate gate.json`` write them; the report's
decisions section reads them (:mod:`gradtrust.reporting.decisions`). ``scores.parquet`` and the run's identity
are left as they were: applying another gate replaces only these two files.

``decisions.parquet`` columns: ``index``, ``path``, ``label``, ``prediction``, ``correct`` (null where the label is
unknown), ``score`` (the gate's score column), ``accept`` (bool: ``score ≥ threshold``; NaN scores refused).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gradtrust import schema
from gradtrust.errors import DataError
from gradtrust.runs import chunks as ch
from gradtrust.selective import SHIFT_NOTE, Gate

__all__ = ["DECISIONS_FILE", "DECISIONS_JSON", "apply_gate", "gate_scores"]

DECISIONS_FILE = "decisions.parquet"
DECISIONS_JSON = "decisions.json"


def gate_scores(frame: Any, gate: Gate, source: Any = "") -> np.ndarray:
    """The gate's score column of a results table, as float64; a :class:`DataError` when the run lacks it."""
    if not gate.score:
        raise DataError("the gate names no score column; fit it with `gradtrust gate fit RUN --score NAME`.")
    if gate.score not in frame.columns:
        methods = ", ".join(schema.method_columns(frame))
        raise DataError(
            f"{source}: the gate's score {gate.score!r} is not a column of this run (it has {methods}); "
            "score the run with that method, or fit a gate on a score the run has."
        )
    return frame[gate.score].to_numpy(dtype=np.float64, na_value=np.nan)


def apply_gate(gate: Gate, run_dir: str | Path) -> dict[str, Any]:
    """Write the decisions of ``gate`` for the run in ``run_dir`` (module docstring) and return ``decisions.json``'s
    content: the gate, the counts, and on the labelled rows the realised coverage and risk with 95% CIs."""
    run_dir = Path(run_dir)
    frame = schema.read_results(run_dir)
    scores = gate_scores(frame, gate, run_dir)
    accept = gate.accept(scores)
    labels = frame["label"].to_numpy(dtype=np.int64)
    known = labels >= 0
    predictions = frame["prediction"].to_numpy(dtype=np.int64)
    correct = known & (labels == predictions)
    table = pa.table(
        {
            "index": pa.array(frame["index"].to_numpy(dtype=np.int64)),
            "path": pa.array(frame["path"].astype(str)),
            "label": pa.array(labels),
            "prediction": pa.array(predictions),
            "correct": pa.array(correct, pa.bool_(), mask=~known),
            "score": pa.array(scores),
            "accept": pa.array(accept),
        }
    )
    ch.atomic_write(run_dir / DECISIONS_FILE, lambda handle: pq.write_table(table, handle, compression="zstd"))
    summary: dict[str, Any] = {
        "gate": gate.to_dict(),
        "rows": int(len(frame)),
        "accepted": int(accept.sum()),
        "coverage": float(accept.mean()) if len(frame) else None,
        "labelled": int(known.sum()),
        "realised": gate.evaluate(scores[known], correct[known]) if known.any() else None,
        "note": SHIFT_NOTE,
    }
    ch.atomic_write_json(run_dir / DECISIONS_JSON, summary)
    return summary
