"""The one per-model cache: everything the toolkit learns about a model once and reuses on later batches.

The final layer, the per-sample norm plan, an explanation layer, a CUDA graph: each is worth finding once
per model, not once per batch. An entry lives as long as its model (held weakly) and never outlives the
model's structure (:func:`structure_key`). Entries are keyed by ``(namespace, key)``: the namespace names the
capability (``"final_layer"``…), the key whatever else the value depends on. A computation that raises is not
cached. :func:`cached_entries` shows what is cached, :func:`clear` drops it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from torch import nn

__all__ = ["cached", "cached_entries", "clear", "structure_key", "submodules"]

T = TypeVar("T")

_LOCK = threading.RLock()
# model → (its structure when the entries were made, {(namespace, key): value})
_STORE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], dict[tuple[str, Hashable], Any]]] = (
    weakref.WeakKeyDictionary())


def submodules(model: nn.Module) -> list[nn.Module]:
    """``model`` and every module inside it, like ``model.modules()`` but without building their names
    (a third of the time on resnet50; a shared submodule may appear twice)."""
    found, stack = [], [model]
    while stack:
        module = stack.pop()
        found.append(module)
        stack.extend(child for child in module._modules.values() if child is not None)
    return found


def structure_key(model: nn.Module) -> tuple[int, ...]:
    """The identity and mode of every submodule of ``model`` and the identity of every parameter: a replaced
    submodule or parameter, or a module switched between training and eval mode (a BatchNorm in training mode
    normalises by batch statistics), changes the key. A walk by identity, cheap next to a forward pass."""
    ids: list[int] = []
    for module in submodules(model):
        ids += (id(module), module.training)
        ids += [id(p) for p in module._parameters.values()]
    return tuple(ids)


def cached(model: nn.Module, namespace: str, key: Hashable, compute: Callable[[], T],
           structure: tuple[int, ...] | None = None) -> T:
    """The value stored for ``model`` under ``(namespace, key)``; ``compute()`` makes and stores it when
    there is none or the model's structure changed since. ``structure`` may pass a :func:`structure_key`
    the caller has already computed for this model."""
    structure = structure_key(model) if structure is None else structure
    with _LOCK:
        entry = _STORE.get(model)
        if entry is None or entry[0] != structure:
            entry = (structure, {})
            _STORE[model] = entry
        values = entry[1]
        if (namespace, key) in values:
            return values[(namespace, key)]
    value = compute()  # outside the lock: it may run a model; a raise stores nothing
    with _LOCK:
        current = _STORE.get(model)
        if current is not None and current[0] == structure:
            current[1][(namespace, key)] = value
    return value


def cached_entries(model: nn.Module) -> dict[tuple[str, Hashable], Any]:
    """A copy of what is cached for ``model`` (empty when nothing is, or its structure changed since)."""
    with _LOCK:
        entry = _STORE.get(model)
        if entry is None or entry[0] != structure_key(model):
            return {}
        return dict(entry[1])


def clear(model: nn.Module | None = None, namespace: str | None = None) -> None:
    """Drop the cached entries of ``model`` (every model when None), only those of ``namespace`` if given."""
    with _LOCK:
        targets = [model] if model is not None else list(_STORE.keys())
        for target in targets:
            entry = _STORE.get(target)
            if entry is None:
                continue
            if namespace is None:
                del _STORE[target]
            else:
                for k in [k for k in entry[1] if k[0] == namespace]:
                    del entry[1][k]
