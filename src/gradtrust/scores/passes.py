"""The passes of the network that trust scores are computed from, each run at most once per batch.

:class:`BatchPasses` exposes every per-batch quantity as a lazily computed, cached property. A method reads
the properties it needs; the first reader pays for the pass, every later reader gets it for free:

| property | :class:`~gradtrust.scores.spec.Pass` | cost |
| --- | --- | --- |
| ``logits``, ``features`` | ``FORWARD``: penultimate features from a hook on the final ``nn.Linear`` | 1 forward |
| ``mse_gradient_rows``, ``uniform_ce_grad_l1`` | ``COUNTERFACTUAL_GRADIENTS``: closed forms, or autograd | 0, or ~1 backward |
| ``odin_logits`` | ``ODIN``: input gradient of ``−log softmax(z/T)_ŷ``, then a forward on ``x̃`` | ~1 backward + 1 forward |
| ``parameter_sq_norms`` | ``PARAMETER_GRADIENTS``: per-sample ``‖∂L/∂θ_j‖²`` under ``BCE(z, 1)`` | ~1 backward + grads |
| ``mc_mean_probabilities`` | ``MC_DROPOUT``: ``T`` forwards with seeded per-sample dropout masks | T forwards |

Methods do not read this class directly: they get a :class:`~gradtrust.scores.view.BatchView`, which lets a
method read only the passes it declared.

When any gradient is needed the single forward pass is run with autograd recording (input
``requires_grad``, parameters frozen) and every backward pass reuses its graph.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from gradtrust import functional
from gradtrust.errors import InputError, ModelError, UnknownNameError
from gradtrust.per_sample import NormRecorder, UnsupportedForHooks, autograd_sq_norms
from gradtrust.per_sample.capture import LayerCapture, start_graph_hooks
from gradtrust.per_sample.conv_strategy import CONV_TYPES
from gradtrust.per_sample.eval_backward import cheap_batch_norm
from gradtrust.per_sample.layers import layer_weight, model_logits
from gradtrust.per_sample.registry import parameter_grads, supports_hooks
from gradtrust.scores.dropout import dropout_modules, seeded_dropout
from gradtrust.scores.options import ScoreOptions, parse_stds
from gradtrust.scores.spec import Pass

# The final layer found for a model, so later batches hook that one layer instead of every nn.Linear.
_FINAL_LAYER_CACHE: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


class FinalLayerCall(NamedTuple):
    """One call of the final ``nn.Linear`` seen by the forward hook."""

    name: str
    module: nn.Module
    input: torch.Tensor  # the penultimate features h, as the layer received them
    output: torch.Tensor
    output_version: int  # ``output._version`` right after the call: a later in-place change shows


@dataclass
class ForwardRecord:
    """What one forward pass of the model left behind for the later passes."""

    x: torch.Tensor  # the input as the model received it (requires grad when ODIN needs ∂/∂x)
    roots: list[torch.Tensor]  # where the recorded graph starts: x, or the outputs of the captured layers
    #                            whose inputs are not in the graph (the first layer, branches fed by x alone)
    graph: bool  # whether autograd recorded the pass
    logits: torch.Tensor  # the model's output, attached to the graph when one was recorded
    final: FinalLayerCall | None  # the final nn.Linear's call, if one ran with C outputs
    capture: LayerCapture  # hooks on the gradient scores' layer (layer=…)
    norms: NormRecorder | None = None  # Purview's per-sample norms: kernels, rules and units


@dataclass
class GradientRows:
    """Per-sample statistics of a weight gradient ``G`` (rows = output units), float64 on the model's device."""

    row_energy: torch.Tensor  # (B, R): e_r = Var_d(G_{r,d}²)
    l1: torch.Tensor | None = None  # (B,): ‖G‖₁


class BatchPasses:
    """Lazily computed per-batch quantities of ``model`` on ``inputs`` (see the module docstring).

    ``model`` must already be in the scoring state (:func:`gradtrust.nn.state.scoring_state`).
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, options: ScoreOptions,
                 sample_ids: torch.Tensor, needs: frozenset[Pass], freeze: Callable[[], None] | None = None):
        self.model = model
        # Called before any pass that records an autograd graph (ScoringState.freeze); None: already frozen.
        self._freeze = freeze or (lambda: None)
        self.inputs = inputs
        self.options = options
        self.sample_ids = sample_ids
        self.needs = needs
        self._record_graph = bool(needs & {Pass.ODIN, Pass.PARAMETER_GRADIENTS}) or (
            Pass.COUNTERFACTUAL_GRADIENTS in needs
            and (options.layer is not None or options.gradient_path == "autograd"))
        self._purview_hooks_error: str | None = None
        self._second_forward: ForwardRecord | None = None
        self.purview_backend_used: str | None = None
        #: units of the model whose per-sample norms came from per-sample autograd: {name: "vmap" | "loop"}
        self.purview_fallback: dict[str, str] = {}

    # ------------------------------------------------------------------ the forward pass
    @cached_property
    def _forward(self) -> ForwardRecord:
        """The one forward pass (recording an autograd graph when any method needs a gradient)."""
        return self._run_forward(self._record_graph)

    def _graph_forward(self) -> ForwardRecord:
        """A forward pass with a recorded graph: the shared one, or (rarely) a second forward when the
        shared one was run without a graph and the gradient scores turn out to need autograd."""
        if self._forward.graph:
            return self._forward
        if self._second_forward is None:
            self._second_forward = self._run_forward(True)
        return self._second_forward

    def _run_forward(self, record_graph: bool) -> ForwardRecord:
        """Run the model once, capturing the final layer's input/output and, if needed, layer activations."""
        model, options = self.model, self.options
        if record_graph:
            self._freeze()
        cached_final = _FINAL_LAYER_CACHE.get(model)
        linears = ({cached_final: model.get_submodule(cached_final)} if cached_final is not None else
                   {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)})
        seen: list[FinalLayerCall] = []
        handles = [m.register_forward_hook(
            lambda mod, args, out, name=name: seen.append(FinalLayerCall(name, mod, args[0], out, out._version)))
            for name, m in linears.items()]

        norms: NormRecorder | None = None
        if record_graph and Pass.PARAMETER_GRADIENTS in self.needs and options.purview_backend in ("auto", "hooks"):
            try:
                norms = NormRecorder(model, options.chunk_bytes, options.conv_strategy)
            except UnsupportedForHooks as exc:
                self._purview_hooks_error = str(exc)
        layer = {options.layer: self.layer_module} if record_graph and options.layer is not None else {}
        capture = LayerCapture(layer)
        graph_starts = list(dict.fromkeys([*layer.values(), *(norms.graph_starts if norms is not None else ())]))
        rule_entries = norms.rule_entries if norms is not None else []
        # Without ODIN nothing needs ∂/∂x: the graph can start at the outputs of the captured layers (and
        # units) whose inputs are not in it, and at rule entries whose input is not in it (no parameter is
        # used before them, since every parameter has an owner): per_sample.capture.start_graph_hooks.
        cut = record_graph and Pass.ODIN not in self.needs and bool(graph_starts or rule_entries)
        x = self.inputs.detach().requires_grad_(record_graph and not cut)
        roots: list[torch.Tensor] = [] if cut else [x]
        if cut:  # prepended, so that the captures' own hooks see (and hook) the new leaf
            handles += start_graph_hooks(graph_starts, rule_entries, roots)
        try:
            # While the graph is recorded, eval-mode BatchNorm gets a one-multiply backward (its CPU kernel is
            # slow; same forward bits): every parameter is frozen, so only activation gradients are taken.
            with (capture, norms or contextlib.nullcontext(), torch.set_grad_enabled(record_graph),
                  cheap_batch_norm(model) if record_graph and x.device.type == "cpu" else contextlib.nullcontext()):
                logits = model_logits(model, x)
        except TypeError as exc:
            raise ModelError(str(exc)) from exc
        finally:
            for handle in handles:
                handle.remove()
        if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            raise ModelError(f"the model returned logits of shape {tuple(logits.shape)}; expected "
                             f"(batch={x.shape[0]}, classes). GradTrust scores classifiers whose output is one "
                             "logit per class.")
        num_classes = logits.shape[1]
        final = [call for call in seen if call.output.shape[-1] == num_classes]
        final_info = final[-1] if final else None
        if final_info is not None and cached_final is None:
            _FINAL_LAYER_CACHE[model] = final_info.name
        return ForwardRecord(x=x, roots=roots, graph=record_graph, logits=logits, final=final_info,
                             capture=capture, norms=norms)

    @property
    def forward_logits(self) -> torch.Tensor:
        """The model's output as it returned it (its dtype), detached."""
        return self._forward.logits.detach()

    @property
    def final_layer_input(self) -> torch.Tensor | None:
        """The final ``nn.Linear``'s input as it received it, detached; None without a final layer."""
        final = self._forward.final
        return None if final is None else final.input.detach()

    def over_outputs(self, logits: torch.Tensor, features: torch.Tensor | None) -> BatchPasses:
        """The passes of this batch as if its forward pass had returned ``logits`` and fed ``features`` to the
        final layer: the forward-pass quantities are computed from those two tensors alone (no pass runs).
        :mod:`gradtrust.scores.graphs` captures the forward-pass scores on such static tensors."""
        shadow = BatchPasses(self.model, self.inputs, self.options, self.sample_ids,
                             frozenset({Pass.FORWARD, Pass.COUNTERFACTUAL_GRADIENTS}))
        final = self._forward.final
        call = None if final is None or features is None else FinalLayerCall(final.name, final.module, features,
                                                                              logits, logits._version)
        shadow.__dict__["_forward"] = ForwardRecord(x=self.inputs, roots=[], graph=False, logits=logits, final=call,
                                                    capture=LayerCapture({}))
        return shadow

    @cached_property
    def logits(self) -> torch.Tensor:
        """The model's logits ``z`` (B, C) as float64, detached."""
        return self._forward.logits.detach().double()

    @cached_property
    def prediction(self) -> torch.Tensor:
        """``ŷ = argmax_c z_c`` (B,) int64."""
        return self.logits.argmax(dim=1)

    @cached_property
    def num_classes(self) -> int:
        return self.logits.shape[1]

    @cached_property
    def finite(self) -> torch.Tensor:
        """Samples whose logits are all finite; the others get NaN for every score."""
        return torch.isfinite(self.logits).all(dim=1)

    @property
    def final_layer_name(self) -> str | None:
        """Name of the final ``nn.Linear`` (the last one to run with one output per class), or None."""
        final = self._forward.final
        return final.name if final is not None else None

    @cached_property
    def closed_form_applies(self) -> bool:
        """Whether the final layer's output *is* the logits, with one feature vector per sample."""
        final = self._forward.final
        if final is None:
            return False
        return final.output is self._forward.logits and final.input.dim() == 2

    @cached_property
    def features(self) -> torch.Tensor:
        """Penultimate features ``h`` (B, D) float64: the input of the final ``nn.Linear``."""
        final = self._forward.final
        if final is None:
            raise ModelError(self.no_final_linear_message())
        return final.input.detach().reshape(final.input.shape[0], -1).double()

    def no_final_linear_message(self) -> str:
        if isinstance(self.model, torch.jit.ScriptModule):
            return ("this is a TorchScript model: its compiled forward runs its layers in the TorchScript interpreter, "
                    "which never calls the Python forward hook that reads the penultimate features of the final "
                    "nn.Linear (and layer=… needs hooks too), so gradtrust, gradtrust_topk and gradnorm cannot be "
                    "computed. Score the Python model (its state dict + architecture, e.g. --model "
                    "package.module:factory --weights file) to get them; a scripted nn.Sequential is handled.")
        return (f"no nn.Linear with {self.num_classes} outputs runs last in this model "
                f"({type(self.model).__name__}), so the closed-form gradient scores do not apply. Pass "
                "layer='<module name>' (any nn.Linear or nn.ConvNd, e.g. the classifier convolution) to compute "
                "them by per-sample autograd on that layer, or leave out gradtrust, gradtrust_topk and gradnorm.")

    # ------------------------------------------------------------------ gradient scores: where from
    @cached_property
    def layer_module(self) -> nn.Module:
        """The module named by ``layer=`` (validated: an ``nn.Linear`` or ``nn.ConvNd``)."""
        name = self.options.layer
        if isinstance(self.model, torch.jit.ScriptModule) or isinstance(
                getattr(self.model, "_modules", {}).get(str(name).split(".")[0]), torch.jit.ScriptModule):
            raise ModelError(f"layer={name!r}: the layer is inside a TorchScript module, whose compiled forward runs "
                             "it in the TorchScript interpreter, which never calls the Python hooks that per-sample "
                             "gradients need. Score the Python model (its state dict + architecture) instead.")
        try:
            module = self.model.get_submodule(name)
        except AttributeError:
            candidates = [n for n, m in self.model.named_modules() if isinstance(m, (nn.Linear, *CONV_TYPES))]
            raise UnknownNameError(f"layer={name!r} is not a module of this model. Layers that can be used: "
                                   f"{', '.join(candidates[-8:])}{' …' if len(candidates) > 8 else ''}.") from None
        if not (isinstance(module, nn.Linear) or type(module) in CONV_TYPES):
            raise ModelError(f"layer={name!r} is a {type(module).__name__}; gradient scores need an nn.Linear or "
                             "nn.Conv1d/2d/3d layer.")
        if type(module) in CONV_TYPES and not supports_hooks(module):
            raise ModelError(f"layer={name!r} uses padding={module.padding!r}, padding_mode={module.padding_mode!r}; "
                             "only numeric padding with padding_mode='zeros' is supported for per-sample gradients.")
        return module

    @cached_property
    def uses_autograd_path(self) -> bool:
        """Whether the gradient scores come from per-sample autograd rather than the closed forms."""
        opts = self.options
        if opts.gradient_path == "autograd":
            return True
        on_final = opts.layer is None or opts.layer == self.final_layer_name
        if opts.gradient_path == "closed_form":
            if not (on_final and self.closed_form_applies):
                raise ModelError("gradient_path='closed_form' needs the final nn.Linear whose output is the logits; "
                                 + ("" if self.final_layer_name else self.no_final_linear_message()))
            return False
        return not (on_final and self.closed_form_applies)

    def unavailable(self, needed: Pass) -> str | None:
        """Why ``needed`` cannot run on this model (then no method needing it applies), or None."""
        if needed is Pass.COUNTERFACTUAL_GRADIENTS and self.options.layer is None and self.final_layer_name is None:
            return self.no_final_linear_message()
        if needed is Pass.MC_DROPOUT and not self.dropout_layers:
            return ("the model has no dropout layer with p > 0 (nn.Dropout / Dropout1d/2d/3d), so MC dropout is "
                    "undefined; leave mc_dropout out of the methods.")
        return None

    # ------------------------------------------------------------------ gradient scores: closed forms
    @cached_property
    def feature_sq_variance(self) -> torch.Tensor:
        """``Var_d(h_d²)`` (unbiased) per sample: zero means the gradient rows carry no variance."""
        return self.features.square().var(dim=1, unbiased=True)

    @cached_property
    def mse_gradient_rows(self) -> GradientRows:
        """Row energies ``e_r = Var_d(G_{r,d}²)`` of ``G = ∂L/∂W`` for ``L = (1/C) Σ_c (z_c − 1/C)²``.

        Closed form (docs/methods.md, "GradTrust's closed form"): ``G = a hᵀ`` with ``a_c = (2/C)(z_c − 1/C)``, so
        ``e_c = a_c⁴ · Var_d(h_d²)``. Otherwise per-sample autograd on the chosen layer.
        """
        if not self.uses_autograd_path:
            return GradientRows(row_energy=functional.mse_gradient_row_energy(self.logits, self.features))
        return self._autograd_rows(self._mse_uniform_loss, want_l1=False)

    @cached_property
    def uniform_ce_grad_l1(self) -> torch.Tensor:
        """``‖∂L/∂W‖₁`` for ``L = −Σ_c u_c log p_c`` (GradNorm's loss), per sample (B,) float64.

        Closed form: ``G = (p − u) hᵀ`` so ``‖G‖₁ = ‖p − u‖₁ · ‖h‖₁`` (Huang et al., NeurIPS 2021).
        """
        if not self.uses_autograd_path:
            return functional.uniform_ce_gradient_l1(self.logits, self.features)
        rows = self._autograd_rows(self._uniform_ce_loss, want_l1=True)
        assert rows.l1 is not None  # want_l1=True fills it
        return rows.l1

    @staticmethod
    def _mse_uniform_loss(z: torch.Tensor) -> torch.Tensor:
        """Per-sample ``(1/C) Σ_c (z_c − 1/C)²`` (B,)."""
        c = z.shape[1]
        return (z.float() - 1.0 / c).square().mean(1)

    @staticmethod
    def _uniform_ce_loss(z: torch.Tensor) -> torch.Tensor:
        """Per-sample cross-entropy against the uniform label, ``−(1/C) Σ_c log p_c`` (B,)."""
        return -F.log_softmax(z.float(), dim=1).mean(1)

    def _autograd_rows(self, loss_fn, want_l1: bool) -> GradientRows:
        """Per-sample weight gradient of the gradient layer under ``loss_fn``, reduced to row statistics.

        The layer's input ``a`` and output gradient ``g`` come from one batched backward pass through the
        shared graph; :func:`gradtrust.per_sample.registry.parameter_grads` forms each sample's ``∂L_i/∂W``.
        """
        forward = self._graph_forward()
        loss = loss_fn(forward.logits).sum()
        batch = self.inputs.shape[0]
        if self.options.layer is None:  # the final nn.Linear, recorded by the forward hook
            if forward.final is None:
                raise ModelError(self.no_final_linear_message())
            _, module, a, out, version = forward.final
            if out._version != version:
                raise ModelError("the final layer's output is modified in place by the model; pass layer= "
                                 "explicitly to compute the gradient scores through layer hooks.")
            if not loss.requires_grad:
                raise ModelError("the logits do not depend differentiably on the model's input, so per-sample "
                                 "layer gradients cannot be taken; use the closed form (gradient_path='auto').")
            (g,) = torch.autograd.grad(loss, out, retain_graph=True)
            energy, l1 = _rows_from_grads(module, a.detach(), g, self.options.chunk_bytes, want_l1)
            return GradientRows(row_energy=energy, l1=l1)
        name, module = self.options.layer, self.layer_module
        capture = forward.capture
        if capture.calls.get(name) != 1:
            raise ModelError(f"layer={name!r} ran {capture.calls.get(name, 0)} times in one forward pass; "
                             "per-sample gradients need a layer that runs exactly once.")
        collected: dict[str, tuple] = {}

        def on_grad(layer_name, mod, a, g):
            if layer_name == name:
                collected["rows"] = _rows_from_grads(mod, a, g, self.options.chunk_bytes, want_l1)

        capture.on_grad, capture.active = on_grad, True
        try:
            _backward_through(loss, forward)
        finally:
            capture.active, capture.on_grad = False, None
        if "rows" not in collected:  # the layer does not reach the logits: its gradient is zero
            zeros = torch.zeros(batch, layer_weight(module).shape[0], dtype=torch.float64,
                                device=self.inputs.device)
            return GradientRows(row_energy=zeros, l1=zeros[:, 0].clone())
        energy, l1 = collected["rows"]
        return GradientRows(row_energy=energy, l1=l1)

    # ------------------------------------------------------------------ cheap derived quantities
    @cached_property
    def log_probabilities(self) -> torch.Tensor:
        """``log softmax(z)`` (B, C) float64."""
        return F.log_softmax(self.logits, dim=1)

    @cached_property
    def probabilities(self) -> torch.Tensor:
        """``p = softmax(z)`` (B, C) float64."""
        return self.log_probabilities.exp()

    # ------------------------------------------------------------------ ODIN
    @cached_property
    def odin_logits(self) -> torch.Tensor:
        """Logits of ODIN's perturbed input ``x̃ = x − ε·sign(∇_x[−log softmax(f(x)/T)_ŷ])`` (B, C) float64.

        One backward pass to the input through the shared forward graph, one forward pass on ``x̃``.
        Source: Liang et al., ICLR 2018; defaults of the GradTrust release (docs/methods.md).
        """
        forward = self._graph_forward()
        z = forward.logits.float()
        log_p = F.log_softmax(z / self.options.odin_temperature, dim=1)
        loss = -log_p.gather(1, self.prediction.to(z.device).unsqueeze(1)).sum()
        if loss.requires_grad:
            (grad,) = torch.autograd.grad(loss, forward.x, retain_graph=True, allow_unused=True)
        else:  # the logits do not depend differentiably on the input: ODIN does not move it
            grad = None
        grad = torch.zeros_like(forward.x) if grad is None else grad
        perturbed = (forward.x.detach() - self.odin_step(forward.x) * grad.sign()).to(self.inputs.dtype)
        with torch.no_grad():
            return model_logits(self.model, perturbed).double()

    def odin_step(self, x: torch.Tensor) -> torch.Tensor | float:
        """ODIN's step on the model's input: ``ε`` (``odin_epsilon_space="input"``), or ``ε / σ_c`` per channel
        (``"pixel"``: ``ε`` in [0, 1] pixel units through the normalisation ``(x − μ) / σ``; Liang et al.,
        ICLR 2018, code release; docs/own_models.md)."""
        eps = self.options.odin_epsilon
        if self.options.odin_epsilon_space == "input":
            return eps
        std = parse_stds(self.options.odin_input_std)
        if std is None:
            raise InputError("odin_epsilon_space='pixel' needs odin_input_std (the normalisation std per channel, "
                             "e.g. '0.229,0.224,0.225'; gradtrust score fills it from --std or the model's own "
                             "preprocessing)")
        channels = x.shape[1] if x.dim() >= 2 else 1
        if len(std) not in (1, channels):
            raise InputError(f"odin_input_std has {len(std)} values but the inputs have {channels} channels "
                             f"(shape {tuple(x.shape)}).")
        step = eps / torch.tensor(std, dtype=x.dtype, device=x.device)
        return step.reshape(1, -1, *([1] * (x.dim() - 2))) if x.dim() >= 2 else step

    # ------------------------------------------------------------------ Purview
    @cached_property
    def parameter_sq_norms(self) -> torch.Tensor:
        """``s_ij = ‖∂L_i/∂θ_j‖²₂`` for every parameter tensor ``θ_j`` in ``named_parameters()`` order.

        ``L_i = mean_c BCEWithLogits(z_ic, 1)`` (Lee et al., IEEE Access 2023, as in the GradTrust release).
        (B, J) float64. Backends, fastest first: layer hooks (one batched backward), ``torch.func.vmap``
        (chunked), a per-sample loop; ``auto`` takes the first that applies to the model.
        """
        backend = self.options.purview_backend
        self._freeze()  # the vmap and loop backends too: the loop toggles requires_grad itself
        if backend in ("auto", "hooks"):
            try:
                result = self._sq_norms_by_hooks()
                self.purview_backend_used = "hooks"
                return result
            except UnsupportedForHooks as exc:
                if backend == "hooks":
                    raise ModelError(f"purview_backend='hooks' cannot handle this model: {exc}") from exc
        result, self.purview_backend_used = autograd_sq_norms(self.model, self.inputs, _purview_loss, None, backend,
                                                              "purview_backend")
        return result.double()

    def _sq_norms_by_hooks(self) -> torch.Tensor:
        forward = self._graph_forward()
        if self._purview_hooks_error is not None:
            raise UnsupportedForHooks(self._purview_hooks_error)
        if not forward.logits.requires_grad:
            raise UnsupportedForHooks("the logits do not depend differentiably on the input")
        if forward.norms is None:
            raise UnsupportedForHooks("the forward pass ran without Purview's hooks")
        values, self.purview_fallback = forward.norms.collect(
            lambda: _backward_through(_purview_loss(forward.logits).sum(), forward), self.inputs.shape[0],
            self.inputs.device)
        return values.double()

    # ------------------------------------------------------------------ MC dropout
    @cached_property
    def dropout_layers(self) -> list[nn.Module]:
        return dropout_modules(self.model)

    @cached_property
    def mc_mean_probabilities(self) -> torch.Tensor:
        """``p̄ = mean_t softmax(f_t(x))`` over ``T`` passes with seeded per-sample dropout masks (B, C) float64."""
        total = None
        for t in range(self.options.mc_samples):
            with seeded_dropout(self.dropout_layers, self.options.seed, self.sample_ids, t), torch.no_grad():
                p = F.softmax(model_logits(self.model, self.inputs).double(), dim=1)
            total = p if total is None else total + p
        return total / self.options.mc_samples


def _backward_through(loss: torch.Tensor, forward: ForwardRecord) -> None:
    """Run one backward pass of ``loss`` through the recorded graph, down to its roots, keeping the graph.

    The layer hooks collect what they need on the way; the gradients at the roots themselves are discarded.
    """
    if not forward.roots:
        raise UnsupportedForHooks("no captured layer ran in the forward pass")
    if not loss.requires_grad:
        raise UnsupportedForHooks("the logits do not depend differentiably on the input")
    torch.autograd.grad(loss, forward.roots, retain_graph=True, allow_unused=True)


def _purview_loss(z: torch.Tensor) -> torch.Tensor:
    """Purview's per-sample loss ``mean_c BCEWithLogits(z_c, 1)`` (B,)."""
    zf = z.float()
    return F.binary_cross_entropy_with_logits(zf, torch.ones_like(zf), reduction="none").mean(1)


def _rows_from_grads(module: nn.Module, a: torch.Tensor, g: torch.Tensor, chunk_bytes: int,
                     want_l1: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Row energies ``Var_d(G_{r,d}²)`` (B, R) and optionally ``‖G‖₁`` (B,) of per-sample weight gradients.

    Materialises the per-sample gradients in blocks of samples bounded by ``chunk_bytes``.
    """
    per_sample_bytes = 4 * layer_weight(module).numel()
    step = max(1, chunk_bytes // per_sample_bytes)
    energies, l1s = [], []
    for start in range(0, a.shape[0], step):
        grads = parameter_grads(module, a[start:start + step], g[start:start + step])["weight"]
        rows = grads.reshape(grads.shape[0], grads.shape[1], -1).double()
        energies.append(rows.square().var(dim=2, unbiased=True))
        if want_l1:
            l1s.append(rows.abs().sum((1, 2)))
    return torch.cat(energies), (torch.cat(l1s) if want_l1 else None)
