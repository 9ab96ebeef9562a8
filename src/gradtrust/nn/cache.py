"""The one per-model cache: everything the toolkit learns about a model once and reuses on later batches.

Finding a model's final layer, planning which kernel or rule yields each parameter's per-sample norm,
resolving an explanation layer, capturing a CUDA graph: each is worth doing once per model, not once per
batch. Each of those used to keep a private dictionary of its own; they now share this one store so that

* an entry lives exactly as long as its model (the store holds models weakly);
* an entry never outlives the model's *structure*: replacing a submodule or a parameter, or switching a
  module between training and eval mode, drops every entry of that model (:func:`structure_key`);
* a user can see what is cached (:func:`cached_entries`) and drop it (:func:`clear`).

Entries are keyed by ``(namespace, key)``: the namespace names the capability (``"final_layer"``,
``"purview_plan"``, …), the key whatever else the value depends on (an input shape, an option).
A computation that raises is not cached: the next call tries again and raises again.
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
    """The identity and mode of every submodule of ``model`` and the identity of every parameter.

    A replaced submodule or parameter, or a module switched between training and eval mode (a BatchNorm in
    training mode normalises by batch statistics, which changes what a per-sample computation may assume),
    changes the key. It is a walk by identity, cheap next to a forward pass.
    """
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
