"""Forward hooks shared by the capabilities: recording layer calls, finding the final layer, starting the graph.

The **final layer** is the last ``nn.Linear`` to run with one output per class; its input is the penultimate
features ``h``. Its name is kept in the per-model cache (namespace ``"final_layer"``), so later batches hook
that one layer only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from gradtrust.nn.cache import cached

__all__ = ["LayerCall", "final_layer_candidates", "final_linear", "graph_root", "recording"]


class LayerCall(NamedTuple):
    """One call of a hooked module: its name, the module, its first positional input (None without one), its
    tensor output and ``output._version`` right after the call (a later in-place change of the output shows)."""

    name: str
    module: nn.Module
    input: Any
    output: torch.Tensor
    output_version: int


@contextlib.contextmanager
def recording(modules: Mapping[str, nn.Module]) -> Iterator[list[LayerCall]]:
    """While inside, every call of ``modules`` (name → module) that returns a tensor is appended to the yielded
    list, in the order the calls finish (a module run twice appears twice). The hooks go on exit."""
    calls: list[LayerCall] = []
    handles = [module.register_forward_hook(
        lambda mod, args, out, name=name: calls.append(LayerCall(name, mod, args[0] if args else None, out,
                                                                 out._version)) if isinstance(out, torch.Tensor) else None)
        for name, module in modules.items()]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def final_layer_candidates(model: nn.Module, structure: tuple[int, ...] | None = None) -> dict[str, nn.Module]:
    """The modules to hook to find ``model``'s final layer: the one found on an earlier batch (cached), else
    every ``nn.Linear``. ``structure``: the model's :func:`~gradtrust.nn.cache.structure_key`, if known."""
    name = cached(model, "final_layer", None, dict[str, str], structure).get("name")
    if name is not None:
        return {name: model.get_submodule(name)}
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def final_linear(model: nn.Module, calls: list[LayerCall], num_classes: int,
                 structure: tuple[int, ...] | None = None) -> LayerCall | None:
    """Of the recorded ``calls`` (of :func:`final_layer_candidates`), the final layer's: the last one with
    ``num_classes`` output features, or None. Its name is cached for ``model``."""
    matches = [call for call in calls if call.output.shape[-1] == num_classes]
    if not matches:
        return None
    cached(model, "final_layer", None, dict[str, str], structure).setdefault("name", matches[-1].name)
    return matches[-1]


def graph_root(tensor: torch.Tensor, roots: list[torch.Tensor]) -> torch.Tensor:
    """Start the autograd graph at ``tensor``: a fresh leaf with its values (requiring grad) is appended to
    ``roots``, and a clone of it is returned to go on through the network — so that an in-place operation
    downstream (``ReLU(inplace=True)``) acts on a graph tensor, never on the leaf."""
    leaf = tensor.detach().requires_grad_(True)
    roots.append(leaf)
    return leaf.clone()
