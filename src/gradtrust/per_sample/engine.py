"""The one entry point for per-sample gradient norms, and the recorder it shares with Purview's pass.

:func:`sq_norms` gives ``s_ij = ‖∂L_i/∂θ_j‖²₂`` for every sample ``i`` and parameter tensor ``θ_j``, by the
first backend that applies (``backend="auto"``):

* ``"hooks"``: one forward pass recorded by a :class:`NormRecorder` (the plan's kernels, rules and units,
  :mod:`gradtrust.per_sample.planner`) and one batched backward of ``Σ_i L_i``: about one backward pass;
* ``"vmap"``: ``torch.func.vmap(grad(·))`` of the whole model over chunks of samples;
* ``"loop"``: one ``torch.autograd.grad`` per sample (any model).

All three are exact (they agree to float rounding; ``tests/test_per_sample_engine.py`` checks them against
per-sample autograd). Purview's pass (``gradtrust.scores.passes``), which shares its forward pass with
other scores, enters a :class:`NormRecorder` around that forward itself and calls :func:`autograd_sq_norms`
when the hooks cannot cover the model; ``gradtrust.gradient_features`` calls :func:`sq_norms`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradtrust.errors import ModelError, UnknownNameError
from gradtrust.nn import cache
from gradtrust.nn.state import scoring_state
from gradtrust.per_sample import conv_strategy as conv_choices
from gradtrust.per_sample import layers as whole_model
from gradtrust.per_sample.capture import LayerCapture, OwnerCapture
from gradtrust.per_sample.eval_backward import cheap_batch_norm
from gradtrust.per_sample.planner import PLANS, plan_parameters
from gradtrust.per_sample.registry import DEFAULT_CHUNK_BYTES, UnsupportedForHooks, parameter_sq_norms

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


class NormRecorder:
    """Per-sample squared norms of ``model``'s parameters from the forward pass this is entered around and one
    batched backward pass through that pass's graph (the hooks backend; see the module docstring).

    Raises :class:`UnsupportedForHooks` on construction when the plan needs the whole model as a unit. The
    recorded graph may start at the outputs of :attr:`graph_starts` and at the inputs of :attr:`rule_entries`
    (:func:`start_graph_hooks`): no planned parameter is used before them.
    """

    def __init__(self, model: nn.Module, chunk_bytes: int = DEFAULT_CHUNK_BYTES, conv_strategy: str | None = None,
                 params: Sequence[str] | None = None):
        self.plan = plan_parameters(model, params)
        self.chunk_bytes, self.conv_strategy = chunk_bytes, conv_strategy
        self.layers = LayerCapture(self.plan.layers)
        self.owners = OwnerCapture(self.plan, chunk_bytes, conv_strategy)
        #: where the norms' graph may start: kernel layers and units (their norms come from their input and
        #: output gradient), and the modules at whose input a rule first needs gradients
        self.graph_starts = [*self.plan.layers.values(), *self.plan.units.values()]
        self.rule_entries = [rule.entry(module) for module, rule in self.plan.rules.values()]

    def __enter__(self) -> NormRecorder:
        self.layers.__enter__()
        self.owners.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.owners.__exit__(*exc)
        self.layers.__exit__(*exc)

    def collect(self, backward: Callable[[], Any], batch: int,
                device: torch.device) -> tuple[torch.Tensor, dict[str, str]]:
        """Run ``backward()`` (one backward pass of ``Σ_i L_i`` through the recorded graph) with the hooks
        active: (B, J) float32 norms in :attr:`plan`'s ``names`` order and the units' {name: "vmap" | "loop"}.
        Raises :class:`UnsupportedForHooks` when the recorded forward broke an assumption of the plan."""
        calls = self.layers.calls | self.owners.calls
        bad = {n: c for n, c in calls.items() if c != 1}
        if bad:
            raise UnsupportedForHooks(f"layers not run exactly once per forward pass: {bad}")
        if self.owners.error is not None:
            raise UnsupportedForHooks(self.owners.error)
        norms: dict[tuple[str, str], torch.Tensor] = {}

        def on_grad(layer_name: str, module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> None:
            if a.shape[0] != batch or g.shape[0] != batch:
                raise UnsupportedForHooks(f"layer {layer_name!r} does not see one row per sample")
            for attr, value in parameter_sq_norms(module, a, g, self.chunk_bytes, self.conv_strategy).items():
                norms[(layer_name, attr)] = value

        self.layers.on_grad, self.layers.active, self.owners.active = on_grad, True, True
        self.owners.norms.clear()
        try:
            backward()
        finally:
            self.layers.active, self.layers.on_grad, self.owners.active = False, None, False
        norms.update(self.owners.norms)
        zeros = torch.zeros(batch, device=device)  # a parameter that does not reach the loss has no gradient
        columns = [norms.get(self.plan.columns[name], zeros) for name in self.plan.names]
        return torch.stack(columns, dim=1), dict(self.owners.fallback)


def start_graph_hooks(outputs_of: Iterable[nn.Module], inputs_of: Iterable[nn.Module],
                      roots: list[torch.Tensor]) -> list[Any]:
    """Forward hooks (prepended: later hooks see the new tensors) that start the recorded graph at the output
    of each module of ``outputs_of`` and at the input of each module of ``inputs_of`` whose input is not in
    the graph yet, appending each start's leaf to ``roots``. Returns the handles.

    When nothing needs ``∂/∂x``, this skips the backward into the layers before the first parameter that
    matters (resnet18's 7×7 convolution on the image: 0.19 forward passes at 224², batch 32, CPU). Every such
    place starts the graph — the first one, and any parallel branch fed by the input alone, whose gradients
    would otherwise be silently zero. The start is cloned so that an in-place operation after it
    (``ReLU(inplace=True)``) acts on a graph tensor, not on the leaf (0.03 passes)."""

    def start_graph(module, args, output):
        in_graph = any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
        if not in_graph and isinstance(output, torch.Tensor) and output.is_floating_point():
            leaf = output.detach().requires_grad_(True)
            roots.append(leaf)
            return leaf.clone()
        return None

    def start_graph_at_input(module, args):
        first = args[0] if args else None
        if isinstance(first, torch.Tensor) and not first.requires_grad and first.is_floating_point():
            leaf = first.detach().requires_grad_(True)
            roots.append(leaf)
            start = leaf.clone()
            return tuple(start if a is first else a for a in args)  # keeps ``query is key is value``
        return None

    return ([m.register_forward_hook(start_graph, prepend=True) for m in outputs_of]
            + [m.register_forward_pre_hook(start_graph_at_input, prepend=True) for m in inputs_of])


def sq_norms(model: nn.Module, inputs: torch.Tensor, loss: Loss, *, targets: torch.Tensor | None = None,
             backend: str = "auto", params: Sequence[str] | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
             conv_strategy: str | None = None) -> SqNorms:
    """``s_ij = ‖∂L_i/∂θ_j‖²₂`` for every sample ``i`` of ``inputs`` and parameter tensor ``θ_j`` of ``model``.

    ``L_i`` is ``loss(logits)[i]`` (``loss(logits, targets)[i]`` when ``targets``, one row per sample, are
    given; a loss must treat samples independently). ``params`` restricts the columns to those parameter
    names, in that order (the hooks then cover only them, and the backward may stop before the rest). ``backend``: "auto"
    (hooks, else vmap, else loop; see the module docstring) or one of them; a forced backend that cannot run
    raises :class:`~gradtrust.errors.ModelError`. ``chunk_bytes`` bounds a block of per-sample gradients;
    ``conv_strategy`` forces how convolution weight norms are formed (:mod:`.conv_strategy`). The model runs
    in eval mode with its parameters frozen, and is left as it was found. Per-sample gradients of a batch
    are exact when the model treats samples independently (eval mode).
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
    handles = start_graph_hooks(recorder.graph_starts, recorder.rule_entries, roots)
    try:  # on a CPU eval-mode BatchNorm gets a one-multiply backward, as in Purview's pass (eval_backward)
        with recorder, torch.enable_grad(), (cheap_batch_norm(model) if x.device.type == "cpu"
                                             else contextlib.nullcontext()):
            logits = whole_model.model_logits(model, x)
    finally:
        for handle in handles:
            handle.remove()
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
    :mod:`gradtrust.nn.cache`, and, with no model, every measured convolution strategy
    (:func:`gradtrust.per_sample.conv_strategy.clear_choices`: they are keyed by layer shape, not by model)."""
    cache.clear(model, PLANS)
    if model is None:
        conv_choices.clear_choices()
