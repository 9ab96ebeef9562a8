"""Loading and validating score runs (``scores.parquet`` + ``manifest.json``, or a bare parquet file) for the
report. A file that cannot be used becomes a :class:`LoadProblem` naming it and the reason, never an exception.
The manifest is read defensively (each field with fallbacks), so runs of older or foreign tools still load.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gradtrust import catalogue, schema
from gradtrust.errors import DataError
from gradtrust.reporting.datasets import condition_of, dataset_description, dataset_identity
from gradtrust.reporting.kinds import LoadProblem, discover_runs

__all__ = [
    "LoadProblem",
    "Run",
    "load_run",
    "load_runs",
]

SCORES_FILE, MANIFEST_FILE = schema.SCORES_FILE, schema.MANIFEST_FILE


class ReportInputError(Exception):
    """A results file that cannot be used; the message names the file and says why."""


@dataclass
class Run:
    """One loaded, validated run (from ``source``, a folder or a parquet file). ``frame`` holds only the rows
    with a known label (``label >= 0``; the others are counted in ``n_unlabeled``), ``correct`` recomputed as
    ``label == prediction``; ``methods`` are its score columns in file order; ``manifest`` is ``{}`` without
    one; runs with equal ``dataset_key`` (:data:`.datasets.CONDITION_KEYS`) share a table; ``n_no_prediction``
    labelled rows have no prediction (−1: non-finite logits; wrong in every metric); ``notes`` are worth
    saying (missing manifest…); ``name`` (``model · condition``) is made unique by :func:`load_runs`."""

    source: Path
    scores_path: Path
    frame: Any
    manifest: dict
    methods: list[str]
    model: str
    condition: str
    dataset_key: str
    dataset_label: str
    class_names: list[str] | None
    n_unlabeled: int = 0
    n_no_prediction: int = 0
    notes: list[str] = field(default_factory=list)
    name: str = ""

    @property
    def n(self) -> int:
        return int(len(self.frame))

    @property
    def labels(self) -> np.ndarray:
        return self.frame["label"].to_numpy()

    @property
    def predictions(self) -> np.ndarray:
        return self.frame["prediction"].to_numpy()

    @property
    def correct(self) -> np.ndarray:
        return self.frame["correct"].to_numpy(dtype=bool)

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if self.n else float("nan")

    @property
    def n_wrong(self) -> int:
        return int((~self.correct).sum())

    def scores(self, method: str) -> np.ndarray:
        return self.frame[method].to_numpy(dtype=np.float64)

    def nan_reason(self, method: str) -> str:
        """The most frequent NaN reason of a method ('' when it has no NaN or no reason column)."""
        col = schema.reason_column(method)
        if col not in self.frame.columns:
            return ""
        values = self.frame[col].astype(str)
        values = values[(values != "") & (values != "nan") & (values != "None")]
        if values.empty:
            return ""
        return str(values.value_counts().index[0])

    def class_name(self, index: int) -> str:
        if self.class_names is not None and 0 <= int(index) < len(self.class_names):
            return str(self.class_names[int(index)])
        return str(index)


def slugify(text: str) -> str:
    """A file-name-safe version of a run name."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return out or "run"


def load_runs(paths: Iterable[str | Path]) -> tuple[list[Run], list[LoadProblem]]:
    """Load every score run the inputs name (:func:`gradtrust.reporting.kinds.discover_runs`); the unusable ones
    become problems. Run names are made unique."""
    found, problems = discover_runs(paths)
    runs: list[Run] = []
    for f in found["score"]:
        try:
            runs.append(load_run(f))
        except ReportInputError as exc:
            problems.append(LoadProblem(str(f), str(exc)))
    counts = Counter(run.name for run in runs)
    for run in runs:
        if counts[run.name] > 1:
            run.name = f"{run.name} [{'/'.join(run.source.resolve().parts[-2:])}]"
    number_clashes(runs)  # still clashing: the same folder name twice
    return runs, problems


def number_clashes(items: Iterable[Any]) -> None:
    """Rename each item whose ``name`` an earlier one has to ``name #2``, ``name #3``…"""
    seen: dict[str, int] = {}
    for item in items:
        k = seen.get(item.name, 0)
        seen[item.name] = k + 1
        if k:
            item.name = f"{item.name} #{k + 1}"


def load_run(path: str | Path) -> Run:
    """Read and validate one run (a folder with ``scores.parquet``, or a parquet file).

    Raises:
        ReportInputError: the file cannot be read as parquet, lacks ``label``/``prediction``, has no score
            column, or has no row with a known label. The message names the file.
    """
    import pandas as pd

    p = Path(path)
    scores_path = p / SCORES_FILE if p.is_dir() else p
    source = scores_path.parent if scores_path.name == SCORES_FILE else scores_path
    if not scores_path.is_file():
        raise ReportInputError(f"no {SCORES_FILE} here.")
    try:
        frame = pd.read_parquet(scores_path)
    except Exception as exc:  # pyarrow raises several unrelated types for a non-parquet file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReportInputError(f"cannot be read as a parquet file ({type(exc).__name__}: {reason}).") from None

    try:
        methods = schema.check_frame(frame)
    except DataError as exc:
        raise ReportInputError(str(exc)) from None

    notes: list[str] = []
    manifest, manifest_note = _read_manifest(scores_path)
    catalogue.learn(manifest.get("method_info"))
    if manifest_note:
        notes.append(manifest_note)

    labels = frame["label"].to_numpy()
    keep = labels >= 0
    n_unlabeled = int((~keep).sum())
    if n_unlabeled:
        notes.append(f"{n_unlabeled} row(s) with an unknown label (< 0) left out of every metric.")
    frame = frame.loc[keep].reset_index(drop=True)
    if frame.empty:
        raise ReportInputError("has no row with a known label: nothing to evaluate.")
    # prediction −1: non-finite logits (nan_reason_prediction); never equal to a label, so counted as wrong
    n_no_prediction = int((frame["prediction"].to_numpy() < 0).sum())
    correct = (frame["label"].to_numpy() == frame["prediction"].to_numpy())
    if "correct" in frame.columns:
        stored = frame["correct"].to_numpy()
        try:
            disagree = int((stored.astype(bool) != correct).sum())
        except (TypeError, ValueError):
            disagree = len(frame)
        if disagree:
            notes.append(f"the stored `correct` column disagrees with label == prediction in {disagree} "
                         "row(s); label == prediction is used.")
    frame["correct"] = correct
    if "path" not in frame.columns:
        frame["path"] = ""
    if "index" not in frame.columns:
        frame["index"] = np.arange(len(frame), dtype=np.int64)

    model = _model_name(manifest, source)
    dataset = dataset_description(manifest)
    condition = condition_of(dataset)
    key, label = dataset_identity(dataset, manifest)
    run = Run(
        source=source,
        scores_path=scores_path,
        frame=frame,
        manifest=manifest,
        methods=methods,
        model=model,
        condition=condition,
        dataset_key=key,
        dataset_label=label,
        class_names=_class_names(manifest),
        n_unlabeled=n_unlabeled,
        n_no_prediction=n_no_prediction,
        notes=notes,
    )
    run.name = f"{model} · {condition}" if condition else model
    return run


def _read_manifest(scores_path: Path) -> tuple[dict, str]:
    candidates = [scores_path.parent / MANIFEST_FILE]
    if scores_path.name != SCORES_FILE:
        candidates.insert(0, scores_path.with_name(scores_path.stem + ".manifest.json"))
    for cand in candidates:
        if cand.is_file():
            try:
                data = json.loads(cand.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                return {}, f"its manifest {cand} cannot be read ({exc}); model and dataset identity unknown."
            if not isinstance(data, dict):
                return {}, f"its manifest {cand} is not a JSON object; model and dataset identity unknown."
            return data, ""
    return {}, "no manifest.json beside it: model and dataset identity unknown."


def _model_name(manifest: dict, source: Path) -> str:
    model = manifest.get("model")
    if isinstance(model, dict):
        for key in ("spec", "name", "architecture"):
            if model.get(key):
                return str(model[key])
    elif isinstance(model, str) and model:
        return model
    for key in ("model_spec", "model_name"):
        if manifest.get(key):
            return str(manifest[key])
    return source.stem if source.suffix == ".parquet" else source.name


def _class_names(manifest: dict) -> list[str] | None:
    for place in (manifest.get("model"), manifest, manifest.get("dataset")):
        if isinstance(place, dict):
            for key in ("class_names", "classes"):
                names = place.get(key)
                if isinstance(names, list) and names:
                    return [str(n) for n in names]
    return None
