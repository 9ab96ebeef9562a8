"""The results schema: what a score run's ``scores.parquet`` holds, stated once.

One row per scored sample:

==========================  =========  ===================================================================
column                      type       meaning
==========================  =========  ===================================================================
``index``                   int64      the sample's position in the dataset (stable id)
``path``                    string     where the sample came from (file path, or a built-in id)
``label``                   int64      the true class in the model's class order; −1 when unknown
``prediction``              int64      ``ŷ = argmax_c z_c``; −1 where the logits are not finite (no prediction)
``correct``                 bool       ``label == prediction`` (False where the label is unknown or ŷ = −1)
``<method>``                float64    one column per trust score, higher = more trustworthy, NaN if undefined
``nan_reason_<method>``     string     why the value is NaN ("" where defined); only for methods with NaNs
``nan_reason_prediction``   string     why ``prediction`` is −1 ("non-finite logits"); only when one is
==========================  =========  ===================================================================

The runner writes it (:mod:`gradtrust.runs`), the evaluation reads it (:func:`gradtrust.evaluation.
evaluate_frame`), the report reads it (:mod:`gradtrust.reporting.runs`). Importing this module needs
nothing beyond the standard library; :func:`read_results` imports pandas, :func:`arrow_schema` pyarrow.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from gradtrust.errors import DataError

SCORES_FILE = "scores.parquet"
MANIFEST_FILE = "manifest.json"

#: The columns every results table starts with, in this order.
BASE_COLUMNS: tuple[str, ...] = ("index", "path", "label", "prediction", "correct")
#: Their Arrow types (names of ``pyarrow`` type factories).
BASE_TYPES: dict[str, str] = {"index": "int64", "path": "string", "label": "int64", "prediction": "int64",
                              "correct": "bool_"}
#: The columns without which a table cannot be evaluated.
REQUIRED_COLUMNS: tuple[str, ...] = ("label", "prediction")
#: Prefix of the column holding why a method's value is NaN.
REASON_PREFIX = "nan_reason_"
#: ``reason_column(PREDICTION)`` says why a sample has no prediction (−1): its logits are not finite.
PREDICTION = "prediction"


def reason_column(method: str) -> str:
    """The name of the column that says why ``method``'s value is NaN: ``nan_reason_<method>``."""
    return f"{REASON_PREFIX}{method}"


def is_reason_column(name: Any) -> bool:
    return str(name).startswith(REASON_PREFIX)


def method_columns(frame: Any) -> list[str]:
    """The trust-score columns of a results DataFrame, in table order: every float column that is neither
    a base column nor a ``nan_reason_`` column."""
    import pandas as pd

    return [str(c) for c in frame.columns
            if c not in BASE_COLUMNS and not is_reason_column(c) and pd.api.types.is_float_dtype(frame[c])]


def arrow_schema(methods: Sequence[str], reasons: Iterable[str] = ()) -> Any:
    """The ``pyarrow.Schema`` of a results table with these score columns and ``nan_reason_`` columns."""
    import pyarrow as pa

    fields = [pa.field(name, getattr(pa, BASE_TYPES[name])()) for name in BASE_COLUMNS]
    fields += [pa.field(name, pa.float64()) for name in methods]
    fields += [pa.field(reason_column(name), pa.string()) for name in reasons]
    return pa.schema(fields)


def read_results(path: str | Path) -> Any:
    """Read a results table (a run folder or a ``.parquet`` file) as a pandas DataFrame, checked against the
    schema (:func:`check_frame`); a :class:`~gradtrust.errors.DataError` says what is wrong.
    """
    import pandas as pd

    scores_path = Path(path) / SCORES_FILE if Path(path).is_dir() else Path(path)
    if not scores_path.is_file():
        raise DataError(f"{path}: no {SCORES_FILE} here; point at a run folder written by `gradtrust score`.")
    try:
        frame = pd.read_parquet(scores_path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several unrelated types for a non-parquet file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{scores_path}: cannot be read as a parquet file ({type(exc).__name__}: {reason}).") from None
    try:
        check_frame(frame)
    except DataError as exc:
        raise DataError(f"{scores_path} {exc}") from None
    return frame


def check_frame(frame: Any) -> list[str]:
    """Check a results DataFrame against the schema (in place: integer-like required columns become int64)
    and return its score columns. A :class:`~gradtrust.errors.DataError` says what is wrong, as a phrase
    that follows the table's name ("is not a GradTrust results table: …")."""
    import pandas as pd

    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        shown = ", ".join(map(str, frame.columns[:12])) + ("…" if len(frame.columns) > 12 else "")
        raise DataError(f"is not a GradTrust results table: it lacks the column(s) {', '.join(missing)} "
                        f"(columns: {shown}).")
    methods = method_columns(frame)
    if not methods:
        raise DataError(f"has no score column (a float64 column besides {', '.join(BASE_COLUMNS)}): "
                        "not a GradTrust results table.")
    for col in REQUIRED_COLUMNS:
        if not pd.api.types.is_integer_dtype(frame[col]):
            try:
                frame[col] = frame[col].astype("int64")
            except (TypeError, ValueError):
                raise DataError(f"its column {col!r} does not hold integer class indices "
                                f"(dtype {frame[col].dtype}).") from None
    return methods
