"""What identifies a run (``run.json``), how two identities differ, and the library versions.

A run's identity is everything that changes its numbers: the model (spec, weights, their SHA-256, and a
SHA-256 of the loaded parameters and buffers — so two *random* initialisations differ), the dataset (kind,
root, samples, classes, the files' names, sizes and labels, and the SHA-256 of every file's *content*), the
task's settings (methods, every option that can change a value, kernel strategies included), the label
mapping and the chunk/batch layout. It is *not* the device, the number of workers or of processes, or the
library versions (those are recorded in the manifest only).

A file's content hash is computed once and cached by ``(path, size, mtime_ns)`` in
``$GRADTRUST_CACHE_DIR/file-sha256/`` (default ``~/.cache/gradtrust``), one small JSON file per folder of
data, so that checking a 50,000-image folder again reads no image (``benchmarks/bench_content_hash.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1

# describe() keys of a model that identify it (device, meta and the like do not).
_MODEL_KEYS = ("spec", "weights", "weights_sha256", "num_classes", "class_names", "input_kind", "clip_len",
               "transform", "module_class", "num_parameters")
# describe_dataset() keys that only label the dataset (the command-line spelling of --data).
_DATASET_VOLATILE = ("spec",)
# ScoreOptions fields that change no number at all (memory bounds, how kernels are launched); the convolution
# kernel strategy does change the last bits, so it belongs to the identity.
_OPTIONS_VOLATILE = ("chunk_bytes", "micro_batch", "cuda_graphs")


def canonical_json(value: Any) -> str:
    """``value`` as JSON with sorted keys, no spaces and ASCII only: equal values give equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def sha256_of(value: Any) -> str:
    """The SHA-256 (hex) of ``value``'s canonical JSON."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def tensors_sha256(named: dict) -> str:
    """SHA-256 of named tensors: each name, dtype, shape and bytes, in order (other values by ``repr``)."""
    digest = hashlib.sha256()
    for name, tensor in named.items():
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
    """The part of a run's identity that names the model: the identifying keys of its description, with a long
    class-name list replaced by its hash, and the SHA-256 of the loaded parameters and buffers (so two random
    initialisations differ)."""
    out = {k: description.get(k) for k in _MODEL_KEYS}
    names = out.get("class_names") or []
    if len(names) > 50:  # keep run.json readable: the names' hash identifies them as well
        out["class_names"] = {"count": len(names), "sha256": sha256_of(names)}
    out["parameters_sha256"] = tensors_sha256(model.module.state_dict())
    return out


def dataset_identity(dataset: Any) -> dict:
    """The dataset's description (:func:`gradtrust.data.open.describe_dataset`, less the command-line
    spelling) and ``content_sha256``: the SHA-256 of every file's SHA-256 (:func:`files_sha256`) — the files of
    ``dataset.source_files()`` for a dataset whose samples live inside a few files, else of ``dataset.path(i)``
    in dataset order."""
    from gradtrust.data.open import describe_dataset

    out = {k: v for k, v in describe_dataset(dataset).items() if k not in _DATASET_VOLATILE}
    source_files, path = getattr(dataset, "source_files", None), getattr(dataset, "path", None)
    if callable(source_files):  # samples stored inside a few files (pickles, .npy, .mat, Arrow, tar shards)
        out["content_sha256"] = files_sha256(source_files())
    elif callable(path):
        out["content_sha256"] = files_sha256(path(i) for i in range(len(dataset)))
    return out


def _cache_dir() -> Path:
    root = os.environ.get("GRADTRUST_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gradtrust")
    return Path(root) / "file-sha256"


def files_sha256(paths: Iterable[str]) -> str:
    """SHA-256 over ``path-less`` content hashes: ``sha256(file_1)\\n sha256(file_2)\\n …`` in the given order.

    Each file's hash is cached by ``(absolute path, size, mtime_ns)`` (a file rewritten in place gets a new
    mtime and is hashed again); an unreadable file counts as ``"missing"`` (the run records it as failed).
    The cache is one JSON file per folder, written atomically; a cache that cannot be written is skipped.
    """
    from gradtrust.models.state_dict import file_sha256
    from gradtrust.runs.chunks import atomic_write_json

    caches: dict[str, tuple[Path, dict, set]] = {}  # folder → (cache file, its table, changed names)
    total = hashlib.sha256()
    for raw in paths:
        folder, name = os.path.split(os.path.abspath(raw))
        if folder not in caches:
            file = _cache_dir() / f"{hashlib.sha256(folder.encode('utf-8', 'surrogateescape')).hexdigest()[:32]}.json"
            try:
                table = dict(json.loads(file.read_text("utf-8")))
            except (OSError, ValueError, TypeError):
                table = {}
            caches[folder] = (file, table, set())
        file, table, changed = caches[folder]
        try:
            stat = os.stat(os.path.join(folder, name))
            entry = table.get(name)
            if not (isinstance(entry, list) and entry[:2] == [stat.st_size, stat.st_mtime_ns]):
                entry = table[name] = [stat.st_size, stat.st_mtime_ns, file_sha256(os.path.join(folder, name))]
                changed.add(name)
            total.update(f"{entry[2]}\n".encode())
        except OSError:
            total.update(b"missing\n")
    for file, table, changed in caches.values():
        try:
            if changed:
                file.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(file, table)
        except OSError:  # a read-only home: hashing still works, only not cached
            pass
    return total.hexdigest()


def options_identity(options: dict) -> dict:
    """The options that change a value; with ``conv_strategy="auto"`` also the version of the rule that picks
    each convolution's strategy (``conv_strategy_rule``): strategies differ in the last bits."""
    out = {k: v for k, v in options.items() if k not in _OPTIONS_VOLATILE}
    if out.get("conv_strategy") == "auto":
        from gradtrust.per_sample.conv_strategy import RULE

        out["conv_strategy_rule"] = RULE
    return out


def identity_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``["options.odin_temperature: 100.0 → 50.0", …]``: every leaf where two identities differ, both
    values in full (canonical JSON)."""
    if isinstance(old, dict) and isinstance(new, dict):
        diffs: list[str] = []
        for key in list(old) + [k for k in new if k not in old]:
            diffs += identity_differences(old.get(key, "<absent>"), new.get(key, "<absent>"),
                                          f"{prefix}{key}.")
        return diffs
    if canonical_json(old) == canonical_json(new):
        return []
    shown = [v if v == "<absent>" else canonical_json(v) for v in (old, new)]
    return [f"{prefix.rstrip('.')}: {shown[0]} → {shown[1]}"]


def library_versions() -> dict[str, str]:
    """Versions of Python, gradtrust, torch, torchvision, numpy, pandas, pyarrow, the platform (and CUDA)."""
    from importlib.metadata import PackageNotFoundError, version

    from gradtrust._version import __version__

    versions = {"python": sys.version.split()[0], "gradtrust": __version__, "platform": platform.platform()}
    for name in ("torch", "torchvision", "numpy", "pandas", "pyarrow"):
        try:  # the installed metadata: importing pandas only for its version took 1.4 s
            versions[name] = version(name)
        except PackageNotFoundError:  # pragma: no cover
            versions[name] = "not installed"
    if torch.cuda.is_available():
        versions["cuda"] = str(torch.version.cuda)
        versions["cudnn"] = str(torch.backends.cudnn.version())
    return versions
