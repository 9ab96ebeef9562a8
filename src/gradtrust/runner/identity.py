"""What identifies a scoring run (``run.json``), how two identities differ, and the library versions.

A run's identity is everything that changes the numbers in ``scores.parquet``: the model (spec, weights,
their SHA-256, and a SHA-256 of the loaded parameters and buffers — so two *random* initialisations differ),
the dataset (kind, root, samples, classes, fingerprint of the files), the methods asked for, every scoring
option, the label mapping and the chunk/batch layout. It is *not* the device, the number of workers or of
processes, or the library versions (those are recorded in the manifest only).
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from typing import Any

import torch

FORMAT_VERSION = 1

# describe() keys of a model that identify it (device, meta and the like do not).
_MODEL_KEYS = ("spec", "weights", "weights_sha256", "num_classes", "class_names", "input_kind", "clip_len",
               "transform", "module_class", "num_parameters")
# describe_dataset() keys that only label the dataset (the command-line spelling of --data).
_DATASET_VOLATILE = ("spec",)
# ScoreOptions fields that do not change any number beyond float rounding (memory bounds, exact kernels, how
# kernels are launched).
_OPTIONS_VOLATILE = ("chunk_bytes", "micro_batch", "cuda_graphs", "conv_strategy")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def sha256_of(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def state_dict_sha256(module: torch.nn.Module) -> str:
    """SHA-256 of every tensor of ``module.state_dict()`` (names, dtypes, shapes and bytes, in order)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        if not isinstance(tensor, torch.Tensor):
            digest.update(f"{name}:{tensor!r}\n".encode())
            continue
        t = tensor.detach()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        if t.is_meta or t.numel() == 0:
            continue
        flat = t.to("cpu").contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_identity(model: Any, description: dict) -> dict:
    out = {k: description.get(k) for k in _MODEL_KEYS}
    names = out.get("class_names") or []
    if len(names) > 50:  # keep run.json readable: the names' hash identifies them as well
        out["class_names"] = {"count": len(names), "sha256": sha256_of(names)}
    out["parameters_sha256"] = state_dict_sha256(model.module)
    return out


def dataset_identity(description: dict) -> dict:
    return {k: v for k, v in description.items() if k not in _DATASET_VOLATILE}


def options_identity(options: dict) -> dict:
    return {k: v for k, v in options.items() if k not in _OPTIONS_VOLATILE}


def identity_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``["options.odin_temperature: 100.0 → 50.0", …]``: every leaf where two identities differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        diffs: list[str] = []
        for key in list(old) + [k for k in new if k not in old]:
            diffs += identity_differences(old.get(key, "<absent>"), new.get(key, "<absent>"),
                                          f"{prefix}{key}.")
        return diffs
    if canonical_json(old) == canonical_json(new):
        return []
    return [f"{prefix.rstrip('.')}: {_short(old)} → {_short(new)}"]


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) and value == "<absent>" else canonical_json(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def library_versions() -> dict[str, str]:
    """Versions of Python, torch, torchvision, numpy, pandas, pyarrow, gradtrust and the platform."""
    from importlib.metadata import PackageNotFoundError, version

    import numpy
    import pyarrow

    from gradtrust._version import __version__

    try:  # read from the installed metadata: importing pandas only for its version took 1.4 s
        pandas_version = version("pandas")
    except PackageNotFoundError:  # pragma: no cover
        pandas_version = "not installed"

    versions = {
        "python": sys.version.split()[0],
        "gradtrust": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas_version,
        "pyarrow": pyarrow.__version__,
        "platform": platform.platform(),
    }
    try:
        import torchvision

        versions["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover
        versions["torchvision"] = "not installed"
    if torch.cuda.is_available():
        versions["cuda"] = str(torch.version.cuda)
        versions["cudnn"] = str(torch.backends.cudnn.version())
    return versions
