"""What a run's manifest says about its dataset: the description flattened, the condition (a corrupted
copy and its severity) and the identity that decides which runs share a table."""

from __future__ import annotations

import json
import math
from typing import Any

#: Keys of a manifest's dataset description that name a *condition* of a dataset (a corrupted copy, its
#: severity and seed) or a count, rather than which dataset it is. Runs whose dataset descriptions agree
#: once these are left out share one table; anything else is a different dataset.
CONDITION_KEYS = frozenset({
    "corruption", "severity", "seed", "samples", "num_samples", "n", "length", "size", "spec", "condition",
    # how a model reads the data, not which data: differs between networks on the same dataset
    "transform", "clip_len", "frame_stride", "frame_rate", "alpha", "repr",
})
#: Content fingerprints: part of the identity, except for a corrupted copy (its pixels differ by design).
FINGERPRINT_KEYS = frozenset({"fingerprint", "data_fingerprint", "sha256", "content_sha256"})


def dataset_description(manifest: dict) -> Any:
    """The manifest's description of its dataset (under ``dataset``, ``data`` or ``dataset_info``), or None."""
    for key in ("dataset", "data", "dataset_info"):
        if key in manifest and manifest[key] not in (None, "", {}):
            return manifest[key]
    return None


def _parse_builtin_spec(spec: str) -> dict | None:
    """``digits:test:gaussian_noise:1`` → a dict like :attr:`DigitsDataset.spec` (None if not such a spec)."""
    parts = spec.split(":")
    if not parts or parts[0] != "digits":
        return None
    out: dict[str, Any] = {"dataset": "digits", "split": parts[1] if len(parts) > 1 and parts[1] else "test"}
    if len(parts) > 2 and parts[2] not in ("", "clean"):
        out["corruption"] = parts[2]
        out["severity"] = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 1
    return out


def dataset_fields(dataset: Any) -> dict:
    """The dataset description as one flat dict (a nested ``spec``/``info`` dict merged in)."""
    if isinstance(dataset, str):
        return _parse_builtin_spec(dataset) or {"spec": dataset}
    if not isinstance(dataset, dict):
        return {}
    flat = dict(dataset)
    for key in ("spec", "info", "dataset_info"):
        inner = flat.get(key)
        if isinstance(inner, dict):
            flat.pop(key)
            flat.update({k: v for k, v in inner.items() if k not in flat})
        elif key == "spec" and isinstance(inner, str):
            parsed = _parse_builtin_spec(inner)
            if parsed:
                flat.update({k: v for k, v in parsed.items() if k not in flat})
    if isinstance(flat.get("dataset"), dict):
        inner = flat.pop("dataset")
        flat.update({k: v for k, v in inner.items() if k not in flat})
    return flat


def condition_of(dataset: Any) -> str:
    """The condition a dataset description names: ``"<corruption>/<severity>"``, ``"clean"`` or ``""``."""
    flat = dataset_fields(dataset)
    if not flat:
        return ""
    corruption = flat.get("corruption")
    if corruption in (None, "", "clean", "none"):
        return "clean" if "corruption" in flat or flat.get("dataset") == "digits" else ""
    severity = flat.get("severity")
    return f"{corruption}/{severity}" if severity not in (None, "") else str(corruption)


def dataset_identity(dataset: Any, manifest: dict) -> tuple[str, str]:
    """(key, label): what makes two runs comparable in one table. Conditions and counts are left out."""
    flat = dataset_fields(dataset)
    if not flat:
        return "unknown", "unknown dataset (no manifest)" if not manifest else "unknown dataset"
    # a corrupted copy's fingerprint and files (CIFAR-10-C's <corruption>.npy) differ by design
    dropped = CONDITION_KEYS | (FINGERPRINT_KEYS | {"files"} if "corruption" in flat else frozenset())
    # long per-sample lists are never identity
    ident = {k: v for k, v in flat.items() if k not in dropped and not (isinstance(v, list) and len(v) > 200)}
    if not ident:  # only a spec string we could not parse: the spec is the identity
        ident = {"spec": flat.get("spec")}
    key = json.dumps(_jsonable(ident), sort_keys=True, default=str)
    name = (ident.get("dataset") or ident.get("name") or ident.get("root") or ident.get("path")
            or ident.get("kind") or ident.get("spec") or "dataset")
    extras = [f"{k}={ident[k]}" for k in ("split",) if ident.get(k) not in (None, "")]
    return key, str(name) + (f" ({', '.join(extras)})" if extras else "")


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and math.isnan(v):
        return None
    return v
