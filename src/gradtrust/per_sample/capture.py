"""The hooks that record, in one forward pass, what a batched backward turns into per-sample norms.

Layer inputs and output gradients are caught by hooks on activations, so the parameters need no
``requires_grad`` and autograd never forms batch-summed parameter gradients: per-sample norms cost about one
backward pass instead of ``B``. Units (:mod:`.planner`) get theirs by per-sample autograd (:func:`unit_sq_norms`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from gradtrust.nn.hooks import graph_root
from gradtrust.per_sample.registry import UnsupportedForHooks


class LayerCapture:
    """Around a forward pass: records each layer's input and calls count; then each backward through the
    recorded graph calls ``on_grad(name, module, input, grad_output)`` while :attr:`active` is True (other
    backward passes through the same graph, ODIN's for example, are ignored). Raises
    :class:`UnsupportedForHooks` when an input was modified in place after it was recorded.
    """

    def __init__(self, layers: dict[str, nn.Module]):
        self.layers = layers
        self.inputs: dict[str, tuple[torch.Tensor, int]] = {}
        self.calls: dict[str, int] = {name: 0 for name in layers}
        self.active = False
        self.on_grad: Callable[[str, nn.Module, torch.Tensor, torch.Tensor], None] | None = None
        self._handles: list = []

    def __enter__(self) -> LayerCapture:
        self._handles += [module.register_forward_hook(self._forward_hook(name)) for name, module in self.layers.items()]
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


@contextlib.contextmanager
def start_graph_hooks(outputs_of: Iterable[nn.Module], inputs_of: Iterable[nn.Module],
                      roots: list[torch.Tensor]) -> Iterator[None]:
    """While inside, forward hooks (prepended: later hooks see the new tensors) start the recorded graph, by
    :func:`gradtrust.nn.hooks.graph_root` appended to ``roots``, at the output of each module of ``outputs_of``
    and at the input of each module of ``inputs_of`` whose input is not in the graph yet. They go on exit.

    When nothing needs ``∂/∂x``, this skips the backward into the layers before the first parameter that
    matters (resnet18's 7×7 convolution on the image: 0.19 forward passes at 224², batch 32, CPU). Every such
    place starts the graph, or a parallel branch fed by the input alone would get silently zero gradients."""

    def start_graph(module, args, output):
        in_graph = any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
        if not in_graph and isinstance(output, torch.Tensor) and output.is_floating_point():
            return graph_root(output, roots)
        return None

    def start_graph_at_input(module, args):
        first = args[0] if args else None
        if isinstance(first, torch.Tensor) and not first.requires_grad and first.is_floating_point():
            start = graph_root(first, roots)
            return tuple(start if a is first else a for a in args)  # keeps ``query is key is value``
        return None

    handles = ([m.register_forward_hook(start_graph, prepend=True) for m in outputs_of]
               + [m.register_forward_pre_hook(start_graph_at_input, prepend=True) for m in inputs_of])
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def first_tensor(output: Any) -> torch.Tensor:
    """The tensor output of a unit: the output itself, or the first element of a tuple whose other elements
    carry no gradient (``nn.MultiheadAttention`` returns ``(out, None)`` with ``need_weights=False``)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        if all(not (isinstance(o, torch.Tensor) and o.requires_grad) for o in output[1:]):
            return output[0]
    raise UnsupportedForHooks(f"a unit returned {type(output).__name__} with several differentiable outputs")


def unit_sq_norms(unit: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], g: torch.Tensor,
                  chunk_bytes: int) -> tuple[dict[str, torch.Tensor], str]:
    """``‖∂L_i/∂θ‖²`` per sample for every parameter ``θ`` of ``unit`` (B,) float32, and how ("vmap"/"loop"),
    from what the unit received in the forward pass and the gradient ``g`` of its output.

    ``∂L_i/∂θ = J_θ(f(x_i))ᵀ g_i``: the vector-Jacobian product of the unit's function at sample ``i``'s
    input with the gradient of its output, by ``torch.func.vmap`` over samples (chunks bounded by
    ``chunk_bytes``), else one ``torch.autograd.grad`` per sample.
    """
    from torch.func import functional_call, vjp, vmap

    batch = g.shape[0]
    params = {n: p.detach() for n, p in unit.named_parameters()}
    batched = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == batch]
    if any(isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == batch for v in kwargs.values()):
        raise UnsupportedForHooks("a unit received a per-sample tensor as a keyword argument")

    def run(theta, xs):
        call_args = list(args)
        for i, x in zip(batched, xs, strict=True):
            call_args[i] = x
        return first_tensor(functional_call(unit, theta, tuple(call_args), dict(kwargs)))

    def one(xs, gi):
        pullback = vjp(lambda theta: run(theta, [x.unsqueeze(0) for x in xs]), params)[1]
        (grads,) = pullback(gi.unsqueeze(0).to(run_dtype))
        return {n: gr.float().square().sum() for n, gr in grads.items()}

    run_dtype = g.dtype
    inputs = [args[i] for i in batched]
    per_sample_bytes = 4 * max(1, sum(p.numel() for p in params.values())) * 3
    step = max(1, min(batch, chunk_bytes // per_sample_bytes))
    try:
        parts = [vmap(one)([x[s:s + step] for x in inputs], g[s:s + step]) for s in range(0, batch, step)]
        return {n: torch.cat([p[n] for p in parts]) for n in params}, "vmap"
    except UnsupportedForHooks:
        raise
    except Exception:  # noqa: BLE001 - any vmap limitation: the exact per-sample loop on this unit alone
        pass
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in params}
    theta = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    for s in range(batch):
        with torch.enable_grad():
            out = run(theta, [x[s:s + 1] for x in inputs])
            grads = torch.autograd.grad(out, list(theta.values()), g[s:s + 1], allow_unused=True)
        for n, gr in zip(theta, grads, strict=True):
            rows[n].append(torch.zeros((), device=g.device) if gr is None else gr.float().square().sum())
    return {n: torch.stack(r) for n, r in rows.items()}, "loop"
