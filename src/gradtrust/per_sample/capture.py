"""The hooks that record, in one forward pass, what a batched backward turns into per-sample norms.

:class:`LayerCapture` records each kernel layer's input ``a`` with a forward hook and its output gradient
``g`` with a hook on the layer's output tensor, so the parameters themselves need no ``requires_grad`` and
autograd never computes the batch-summed parameter gradients: per-sample norms cost about one backward pass
instead of ``B`` of them. :class:`OwnerCapture` installs a plan's rules and units.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gradtrust.per_sample.planner import Plan
from gradtrust.per_sample.registry import RuleContext, UnsupportedForHooks
from gradtrust.per_sample.units import UnitCall, first_tensor, unit_sq_norms


class LayerCapture:
    """Records each chosen layer's input in the forward pass and its output gradient in the backward pass.

    Use as a context manager around the forward pass. Each backward run through the recorded graph calls
    ``on_grad(name, module, input, grad_output)`` for every layer whose output reaches the loss, but only
    while :attr:`active` is True (other backward passes through the same graph, ODIN's for example, are
    ignored). Raises :class:`UnsupportedForHooks` when an exact per-sample result cannot be guaranteed: a
    layer called twice in one forward, or an input modified in place after it was recorded.
    """

    def __init__(self, layers: dict[str, nn.Module]):
        self.layers = layers
        self.inputs: dict[str, tuple[torch.Tensor, int]] = {}
        self.calls: dict[str, int] = {name: 0 for name in layers}
        self.active = False
        self.on_grad: Callable[[str, nn.Module, torch.Tensor, torch.Tensor], None] | None = None
        self._handles: list = []

    def __enter__(self) -> LayerCapture:
        for name, module in self.layers.items():
            self._handles.append(module.register_forward_hook(self._forward_hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _forward_hook(self, name: str):
        def hook(module, args, output):
            self.calls[name] += 1
            if not args or not isinstance(args[0], torch.Tensor) or not isinstance(output, torch.Tensor):
                return
            a = args[0].detach()
            self.inputs[name] = (a, a._version)
            if output.requires_grad:
                output.register_hook(self._grad_hook(name, module))

        return hook

    def _grad_hook(self, name: str, module: nn.Module):
        def hook(grad: torch.Tensor):
            if not self.active or self.on_grad is None:
                return None
            a, version = self.inputs[name]
            if a._version != version:
                raise UnsupportedForHooks(f"the input of layer {name!r} was modified in place after use")
            self.on_grad(name, module, a, grad.detach())
            return None

        return hook

    def check_single_use(self) -> None:
        """Raise :class:`UnsupportedForHooks` unless every layer ran exactly once in the forward pass."""
        bad = {name: n for name, n in self.calls.items() if n != 1}
        if bad:
            raise UnsupportedForHooks(f"layers not run exactly once per forward pass: {bad}")


def parameter_owners(model: nn.Module) -> tuple[list[str], dict[str, tuple[str, nn.Module, str]]]:
    """Parameter names in ``named_parameters()`` order and, for each, the module and attribute owning it."""
    names = [name for name, _ in model.named_parameters()]
    by_id = {id(p): name for name, p in model.named_parameters()}
    owners: dict[str, tuple[str, nn.Module, str]] = {}
    for module_name, module in model.named_modules():
        for attr, p in module.named_parameters(recurse=False):
            name = by_id.get(id(p))
            if name is not None and name not in owners:
                owners[name] = (module_name, module, attr)
    return names, owners


class OwnerCapture:
    """Hooks for the rules and units of a :class:`~gradtrust.per_sample.planner.Plan` (the layers use :class:`LayerCapture`).

    While :attr:`active`, the backward pass fills :attr:`norms` with {(owner name, key): (B,) norms} and
    :attr:`fallback` with {unit name: "vmap" | "loop"}.
    """

    def __init__(self, plan: Plan, chunk_bytes: int, conv_strategy: str | None = None):
        self.plan = plan
        self.chunk_bytes = chunk_bytes
        self.conv_strategy = conv_strategy
        self.active = False
        # units and rule modules must run exactly once per forward pass (a second call would overwrite the first)
        self.calls: dict[str, int] = {name: 0 for name in [*plan.units, *plan.rules]}
        self.norms: dict[tuple[str, str], torch.Tensor] = {}
        self.fallback: dict[str, str] = {}
        self.error: str | None = None
        self._handles: list[Any] = []

    def __enter__(self) -> OwnerCapture:
        ctx = RuleContext(self._sink, self._fail, self._as_unit, lambda: self.active, self.chunk_bytes,
                          self.conv_strategy)
        for name, (module, rule) in self.plan.rules.items():
            self._handles += rule.attach(name, module, ctx)
            self._handles.append(module.register_forward_hook(self._count(name)))
        for name, unit in self.plan.units.items():
            self._handles.append(unit.register_forward_hook(self._unit_hook(name), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _count(self, name: str):
        def hook(module, args, output):
            self.calls[name] += 1

        return hook

    def _fail(self, why: str) -> None:
        self.error = self.error or why

    def _sink(self, owner: str, key: str, value: torch.Tensor) -> None:
        if self.active:
            self.norms[(owner, key)] = value

    def _unit_hook(self, name: str):
        def hook(module, args, kwargs, output):
            self.calls[name] += 1
            self._as_unit(name, module, args, kwargs, output)

        return hook

    def _as_unit(self, name: str, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        """On the backward pass, per-sample autograd of this call of ``module`` gives its parameters' norms."""
        detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        call = UnitCall(detached, dict(kwargs), tuple(a._version for a in detached if isinstance(a, torch.Tensor)))
        try:
            out = first_tensor(output)
        except UnsupportedForHooks as exc:
            self._fail(str(exc))
            return
        if not out.requires_grad:
            self._fail(f"the output of {name!r} is not in the recorded graph")
            return

        def on_grad(g):
            if not self.active:
                return
            if tuple(a._version for a in call.args if isinstance(a, torch.Tensor)) != call.versions:
                raise UnsupportedForHooks(f"the input of {name!r} was modified in place after use")
            norms, how = unit_sq_norms(module, call, g.detach(), self.chunk_bytes)
            for key, value in norms.items():  # "out_proj.weight" → ("<name>.out_proj", "weight")
                owner, _, attr = f"{name}.{key}".rpartition(".")
                self.norms[(owner, attr)] = value
            self.fallback[name] = how

        out.register_hook(on_grad)
