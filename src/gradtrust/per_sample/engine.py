"""The one entry point for per-sample gradient norms, and the recorder it shares with Purview's pass.

:func:`sq_norms` gives ``s_ij = ‖∂L_i/∂θ_j‖²₂`` by the first backend that applies (``backend="auto"``):

* ``"hooks"``: one forward pass recorded by a :class:`NormRecorder` (the plan's kernels, rules and units,
  :mod:`gradtrust.per_sample.planner`) and one batched backward of ``Σ_i L_i``: about one backward pass;
* ``"vmap"``: ``torch.func.vmap(grad(·))`` of the whole model over chunks of samples;
* ``"loop"``: one ``torch.autograd.grad`` per sample (any model).

All three are exact (they agree to float rounding; ``tests/test_per_sample_engine.py``). Purview's pass
(``gradtrust.scores.passes``) enters a :class:`NormRecorder` around its own shared forward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradtrust.errors import ModelError, UnknownNameError
from gradtrust.nn import cache
from gradtrust.nn.outputs import model_logits
from gradtrust.nn.state import scoring_state
from gradtrust.per_sample import layers as whole_model
from gradtrust.per_sample.capture import LayerCapture, first_tensor, start_graph_hooks, unit_sq_norms
from gradtrust.per_sample.eval_backward import cheap_batch_norm
from gradtrust.per_sample.planner import PLANS, plan_parameters
from gradtrust.per_sample.registry import DEFAULT_CHUNK_BYTES, RuleContext, UnsupportedForHooks, parameter_sq_norms

BACKENDS = ("auto", "hooks", "vmap", "loop")

#: ``loss(logits)`` or, with targets, ``loss(logits, targets)``: the per-sample losses (b,) of b samples
Loss = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class SqNorms:
    """What :func:`sq_norms` computed."""

    values: torch.Tensor  # (B, J) float32: ‖∂L_i/∂θ_j‖²
    names: list[str]  # the J parameter tensors, in named_parameters() order
    backend: str  # "hooks", "vmap" or "loop"
    #: submodules whose norms came from per-sample autograd on the hooks backend: {name: "vmap" | "loop"}
    fallback: dict[str, str] = field(default_factory=dict)


class NormRecorder(LayerCapture):
    """Per-sample squared norms of ``model``'s parameters from the forward pass this is entered around and one
    batched backward pass through its graph (the hooks backend). Raises :class:`UnsupportedForHooks` on
    construction when the plan needs the whole model as a unit. While :attr:`active`, the backward pass fills
    :attr:`norms` {(owner name, key): (B,)} and :attr:`fallback`.
    """

    def __init__(self, model: nn.Module, chunk_bytes: int = DEFAULT_CHUNK_BYTES, conv_strategy: str | None = None,
                 params: Sequence[str] | None = None, structure: tuple[int, ...] | None = None):
        self.plan = plan = plan_parameters(model, params, structure)
        super().__init__(plan.layers)
        self.chunk_bytes, self.conv_strategy = chunk_bytes, conv_strategy
        # units and rule modules must run exactly once per forward pass (a second call would overwrite the first)
        self.owner_calls: dict[str, int] = {name: 0 for name in [*plan.units, *plan.rules]}
        self.norms: dict[tuple[str, str], torch.Tensor] = {}
        self.fallback: dict[str, str] = {}  # units: {name: "vmap" | "loop"}
        self.error: str | None = None
        #: where the norms' graph may start (:func:`start_graph_hooks`): no planned parameter is used before them
        self.graph_starts = [*self.plan.layers.values(), *self.plan.units.values()]
        self.rule_entries = [rule.entry(module) for module, rule in self.plan.rules.values()]

    def __enter__(self) -> NormRecorder:
        super().__enter__()
        ctx = RuleContext(self._sink, self._fail, self._as_unit, lambda: self.active, self.chunk_bytes,
                          self.conv_strategy)
        for name, (module, rule) in self.plan.rules.items():
            self._handles += rule.attach(name, module, ctx)
            self._handles.append(module.register_forward_hook(self._count(name)))
        for name, unit in self.plan.units.items():
            self._handles.append(unit.register_forward_hook(self._unit_hook(name), with_kwargs=True))
        return self

    def collect(self, backward: Callable[[], Any], batch: int,
                device: torch.device) -> tuple[torch.Tensor, dict[str, str]]:
        """Run ``backward()`` (one backward pass of ``Σ_i L_i`` through the recorded graph) with the hooks
        active: (B, J) float32 norms in :attr:`plan`'s ``names`` order and the units' {name: "vmap" | "loop"}.
        Raises :class:`UnsupportedForHooks` when the recorded forward broke an assumption of the plan."""
        calls = self.calls | self.owner_calls
        bad = {n: c for n, c in calls.items() if c != 1}
        if bad:
            raise UnsupportedForHooks(f"layers not run exactly once per forward pass: {bad}")
        if self.error is not None:
            raise UnsupportedForHooks(self.error)
        norms = self.norms
        norms.clear()

        def on_grad(layer_name: str, module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> None:
            if a.shape[0] != batch or g.shape[0] != batch:
                raise UnsupportedForHooks(f"layer {layer_name!r} does not see one row per sample")
            for attr, value in parameter_sq_norms(module, a, g, self.chunk_bytes, self.conv_strategy).items():
                norms[(layer_name, attr)] = value

        self.on_grad, self.active = on_grad, True
        try:
            backward()
        finally:
            self.active, self.on_grad = False, None
        zeros = torch.zeros(batch, device=device)  # a parameter that does not reach the loss has no gradient
        columns = [norms.get(self.plan.columns[name], zeros) for name in self.plan.names]
        return torch.stack(columns, dim=1), dict(self.fallback)

    def _count(self, name: str):
        def hook(module, args, output):
            self.owner_calls[name] += 1

        return hook

    def _fail(self, why: str) -> None:
        self.error = self.error or why

    def _sink(self, owner: str, key: str, value: torch.Tensor) -> None:
        if self.active:
            self.norms[(owner, key)] = value

    def _unit_hook(self, name: str):
        def hook(module, args, kwargs, output):
            self.owner_calls[name] += 1
            self._as_unit(name, module, args, kwargs, output)

        return hook

    def _as_unit(self, name: str, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        """On the backward pass, per-sample autograd of this call of ``module`` gives its parameters' norms."""
        detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        kwargs = dict(kwargs)
        versions = tuple(a._version for a in detached if isinstance(a, torch.Tensor))
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
            if tuple(a._version for a in detached if isinstance(a, torch.Tensor)) != versions:
                raise UnsupportedForHooks(f"the input of {name!r} was modified in place after use")
            norms, how = unit_sq_norms(module, detached, kwargs, g.detach(), self.chunk_bytes)
            for key, value in norms.items():  # "out_proj.weight" → ("<name>.out_proj", "weight")
                owner, _, attr = f"{name}.{key}".rpartition(".")
                self.norms[(owner, attr)] = value
            self.fallback[name] = how

        out.register_hook(on_grad)


def sq_norms(model: nn.Module, inputs: torch.Tensor, loss: Loss, *, targets: torch.Tensor | None = None,
             backend: str = "auto", params: Sequence[str] | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
             conv_strategy: str | None = None) -> SqNorms:
    """``s_ij = ‖∂L_i/∂θ_j‖²₂`` for every sample ``i`` of ``inputs`` and parameter tensor ``θ_j`` of ``model``.

    ``L_i`` is ``loss(logits)[i]`` (``loss(logits, targets)[i]`` when ``targets``, one row per sample, are
    given; a loss must treat samples independently). ``params`` restricts the columns to those parameter
    names, in that order. ``backend``: "auto" (the module docstring) or one of the backends; a forced one that
    cannot run raises :class:`~gradtrust.errors.ModelError`. ``chunk_bytes`` bounds a block of per-sample gradients;
    ``conv_strategy`` forces how convolution weight norms are formed (:mod:`.conv_strategy`). The model runs
    in eval mode with its parameters frozen, and is left as it was found.
    """
    if backend not in BACKENDS:
        raise UnknownNameError(f"backend={backend!r} is unknown; use one of {', '.join(BACKENDS)}.")
    names = [name for name, _ in model.named_parameters()]
    wanted = names if params is None else list(dict.fromkeys(params))
    unknown = [name for name in wanted if name not in names]
    if unknown:
        raise UnknownNameError(f"params {unknown[:3]} are not parameters of {type(model).__name__}; name them as "
                               "model.named_parameters() does.")
    with scoring_state(model):
        if backend in ("auto", "hooks"):
            try:
                values, fallback = _sq_norms_by_hooks(model, inputs, loss, targets, chunk_bytes, conv_strategy,
                                                      params)
                return SqNorms(values, wanted, "hooks", fallback)
            except UnsupportedForHooks as exc:
                if backend == "hooks":
                    raise ModelError(f"backend='hooks' cannot handle this model: {exc}") from exc
        values, used = autograd_sq_norms(model, inputs, loss, targets, backend)
        columns = [names.index(n) for n in wanted]
        return SqNorms(values if columns == list(range(len(names))) else values[:, columns], wanted, used)


def _sq_norms_by_hooks(model: nn.Module, x: torch.Tensor, loss: Loss, targets: torch.Tensor | None,
                       chunk_bytes: int, conv_strategy: str | None,
                       params: Sequence[str] | None) -> tuple[torch.Tensor, dict[str, str]]:
    recorder = NormRecorder(model, chunk_bytes, conv_strategy, params)
    roots: list[torch.Tensor] = []
    # on a CPU eval-mode BatchNorm gets a one-multiply backward, as in Purview's pass (eval_backward)
    with (start_graph_hooks(recorder.graph_starts, recorder.rule_entries, roots), recorder, torch.enable_grad(),
          cheap_batch_norm(model) if x.device.type == "cpu" else contextlib.nullcontext()):
        logits = model_logits(model, x)
    if not roots or not logits.requires_grad:
        raise UnsupportedForHooks("the logits do not depend differentiably on the captured layers")
    total = (loss(logits) if targets is None else loss(logits, targets)).sum()
    return recorder.collect(lambda: torch.autograd.grad(total, roots, allow_unused=True), x.shape[0], x.device)


def autograd_sq_norms(model: nn.Module, inputs: torch.Tensor, loss: Loss, targets: torch.Tensor | None = None,
                      backend: str = "auto", option: str = "backend") -> tuple[torch.Tensor, str]:
    """``‖∂L_i/∂θ_j‖²`` of every parameter by per-sample autograd of the whole model, (B, J) float32, and the
    backend used: ``torch.func.vmap`` ("auto" or "vmap"), failing that (unless forced) one
    ``torch.autograd.grad`` per sample ("loop"). With ``targets`` each distinct target row is one vmap call.
    ``option`` names the caller's backend option in the error a forced "vmap" raises."""
    if backend in ("auto", "vmap"):
        try:
            with torch.enable_grad():
                return _by_vmap(model, inputs, loss, targets), "vmap"
        except Exception as exc:  # noqa: BLE001 - any vmap limitation falls through to the exact loop
            if backend == "vmap":
                raise ModelError(f"{option}='vmap' failed on this model: {exc}") from exc
    if targets is None:
        return whole_model.sq_norms_by_loop(model, inputs, loss), "loop"
    return torch.cat([whole_model.sq_norms_by_loop(model, inputs[i:i + 1], _with_target(loss, targets[i:i + 1]))
                      for i in range(inputs.shape[0])]), "loop"


def _with_target(loss: Loss, target: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``z ↦ loss(z, target)``: the loss with a fixed target row, for the whole-model paths."""
    return lambda z: loss(z, target)


def _by_vmap(model: nn.Module, x: torch.Tensor, loss: Loss, targets: torch.Tensor | None) -> torch.Tensor:
    chunk = whole_model.vmap_chunk_size(model)
    if targets is None:
        return whole_model.sq_norms_by_vmap(model, x, loss, chunk)
    unique, inverse = torch.unique(targets, dim=0, return_inverse=True)
    out = torch.empty(x.shape[0], sum(1 for _ in model.parameters()), device=x.device)
    for k in range(unique.shape[0]):
        rows = (inverse == k).nonzero().flatten()
        out[rows] = whole_model.sq_norms_by_vmap(model, x[rows], _with_target(loss, unique[k:k + 1]), chunk)
    return out


def clear(model: nn.Module | None = None) -> None:
    """Forget what per-sample norms learnt: the plans of ``model`` (of every model when None) in
    :mod:`gradtrust.nn.cache`. (Convolution strategies are a fixed rule on shapes: nothing to forget.)"""
    cache.clear(model, PLANS)
