"""The batch context every pass reads (:class:`BatchPasses`), the shared forward pass, and the two passes built on
its recorded graph: ``Pass.FORWARD`` and ``Pass.PARAMETER_GRADIENTS`` (Purview).

:class:`BatchPasses` holds one batch (model, inputs, options, sample ids, the passes needed) and a per-batch memo:
every quantity of a registered pass (:class:`~gradtrust.scores.spec.PassSpec`) is an attribute, computed on first
read and kept for the batch, so each pass runs at most once per batch, whichever methods (or other passes) read it:

| quantity | pass (module) | cost |
| --- | --- | --- |
| ``logits``, ``features``, ``probabilities``… | ``FORWARD`` (here): features from a hook on the final ``nn.Linear`` | 1 forward |
| ``mse_gradient_rows``, ``uniform_ce_grad_l1`` | ``COUNTERFACTUAL_GRADIENTS`` (:mod:`.gradients`) | 0, or ~1 backward |
| ``odin_logits`` | ``ODIN`` (:mod:`.odin`): input gradient, then a forward on ``x̃`` | ~1 backward + 1 forward |
| ``parameter_sq_norms`` | ``PARAMETER_GRADIENTS`` (here): per-sample ``‖∂L/∂θ_j‖²`` under ``BCE(z, 1)`` | ~1 backward + grads |
| ``mc_mean_probabilities`` | ``MC_DROPOUT`` (:mod:`.dropout`): ``T`` forwards, seeded per-sample masks | T forwards |

Methods read it through a :class:`~gradtrust.scores.view.BatchView`. When any needed pass asks for a graph
(:attr:`PassSpec.needs_graph`) the single forward pass records one and every backward pass reuses it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradtrust.errors import ModelError
from gradtrust.nn.cache import structure_key
from gradtrust.nn.hooks import LayerCall, final_layer_candidates, final_linear, recording
from gradtrust.nn.outputs import model_logits
from gradtrust.per_sample import NormRecorder, UnsupportedForHooks, autograd_sq_norms
from gradtrust.per_sample.capture import LayerCapture, start_graph_hooks
from gradtrust.per_sample.eval_backward import cheap_batch_norm
from gradtrust.scores.options import ScoreOptions
from gradtrust.scores.spec import Param, Pass, PassSpec, pass_providing


@dataclass
class ForwardRecord:
    """What one forward pass of the model left behind for the later passes."""

    x: torch.Tensor  # the input as the model received it (requires grad when ODIN needs ∂/∂x)
    roots: list[torch.Tensor]  # where the recorded graph starts: x, or the outputs of the captured layers
    #                            whose inputs are not in the graph (the first layer, branches fed by x alone)
    graph: bool  # whether autograd recorded the pass
    logits: torch.Tensor  # the model's output, attached to the graph when one was recorded
    final: LayerCall | None  # the final nn.Linear's call (its input: the penultimate features), if one ran
    capture: LayerCapture  # hooks on the gradient scores' layer (layer=…)
    norms: NormRecorder | None = None  # Purview's per-sample norms: kernels, rules and units


class BatchPasses:
    """One batch of ``model`` on ``inputs`` and the per-batch memo of its passes' quantities (module docstring).

    ``model`` must already be in the scoring state (:func:`gradtrust.nn.state.scoring_state`); ``needs``: the
    passes the batch's methods declared (they decide whether the forward pass records a graph).
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, options: ScoreOptions,
                 sample_ids: torch.Tensor, needs: frozenset[PassSpec], freeze: Callable[[], None] | None = None):
        self.model = model
        # Called before any pass that records an autograd graph (ScoringState.freeze); None: already frozen.
        self._freeze = freeze or (lambda: None)
        self.inputs = inputs
        self.options = options
        self.sample_ids = sample_ids
        self.batch_size = int(inputs.shape[0])
        self.needs = needs
        self._record_graph = any(needed.records_graph(options) for needed in needs)
        self._purview_hooks_error: str | None = None
        self._second_forward: ForwardRecord | None = None
        self.purview_backend_used: str | None = None
        #: units of the model whose per-sample norms came from per-sample autograd: {name: "vmap" | "loop"}
        self.purview_fallback: dict[str, str] = {}

    def __getattr__(self, quantity: str) -> Any:
        """A quantity of a registered pass, computed on its first read; stored in the instance, so that every
        later read of this batch finds it without computing it again (the per-batch memo)."""
        raised = self.__dict__.pop("_model_attribute_error", None)
        if raised is not None:  # see _forward
            raise raised
        provider = pass_providing(quantity)
        if provider is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {quantity!r}")
        value = provider.provides[quantity](self)
        self.__dict__[quantity] = value
        return value

    @cached_property
    def _forward(self) -> ForwardRecord:
        """The one forward pass (recording an autograd graph when any method needs a gradient)."""
        try:
            return self._run_forward(self._record_graph)
        except AttributeError as exc:
            # An AttributeError raised by the model inside this property would make Python call __getattr__
            # instead, losing it: __getattr__ raises this one.
            self.__dict__["_model_attribute_error"] = exc
            raise

    def graph_forward(self) -> ForwardRecord:
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
        structure = structure_key(model)  # one walk over the model for the Purview plan and the final layer
        norms: NormRecorder | None = None
        if record_graph and Pass.PARAMETER_GRADIENTS in self.needs and options.purview_backend in ("auto", "hooks"):
            try:
                norms = NormRecorder(model, options.chunk_bytes, options.conv_strategy, structure=structure)
            except UnsupportedForHooks as exc:
                self._purview_hooks_error = str(exc)
        layer = {options.layer: self.layer_module} if record_graph and options.layer is not None else {}
        capture = LayerCapture(layer)
        graph_starts = list(dict.fromkeys([*layer.values(), *(norms.graph_starts if norms is not None else ())]))
        rule_entries = norms.rule_entries if norms is not None else []
        # without ODIN nothing needs ∂/∂x: the graph may start later (per_sample.capture.start_graph_hooks)
        cut = record_graph and Pass.ODIN not in self.needs and bool(graph_starts or rule_entries)
        x = self.inputs.detach().requires_grad_(record_graph and not cut)
        roots: list[torch.Tensor] = [] if cut else [x]
        # prepended, so that the captures' own hooks see (and hook) the new leaf
        # while the graph is recorded, eval-mode BatchNorm gets a one-multiply backward (eval_backward)
        with (start_graph_hooks(graph_starts, rule_entries, roots) if cut else contextlib.nullcontext(),
              recording(final_layer_candidates(model, structure)) as seen, capture, norms or contextlib.nullcontext(),
              torch.set_grad_enabled(record_graph),
              cheap_batch_norm(model) if record_graph and x.device.type == "cpu" else contextlib.nullcontext()):
            logits = model_logits(model, x)
        return ForwardRecord(x=x, roots=roots, graph=record_graph, logits=logits,
                             final=final_linear(model, seen, logits.shape[1], structure),
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
        call = None if final is None or features is None else LayerCall(final.name, final.module, features,
                                                                         logits, logits._version)
        shadow.__dict__["_forward"] = ForwardRecord(x=self.inputs, roots=[], graph=False, logits=logits, final=call,
                                                    capture=LayerCapture({}))
        return shadow

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

    def purview_sq_norms(self) -> torch.Tensor:
        """``s_ij = ‖∂L_i/∂θ_j‖²₂`` (B, J) float64 for every parameter tensor ``θ_j`` in ``named_parameters()``
        order, ``L_i = mean_c BCEWithLogits(z_ic, 1)`` (Lee et al., IEEE Access 2023, as in the GradTrust
        release), by the backends of :func:`gradtrust.per_sample.sq_norms`."""
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
        forward = self.graph_forward()
        if self._purview_hooks_error is not None:
            raise UnsupportedForHooks(self._purview_hooks_error)
        if not forward.logits.requires_grad:
            raise UnsupportedForHooks("the logits do not depend differentiably on the input")
        if forward.norms is None:
            raise UnsupportedForHooks("the forward pass ran without Purview's hooks")
        values, self.purview_fallback = forward.norms.collect(
            lambda: backward_through(_purview_loss(forward.logits).sum(), forward), self.inputs.shape[0],
            self.inputs.device)
        return values.double()


def backward_through(loss: torch.Tensor, forward: ForwardRecord) -> None:
    """Run one backward pass of ``loss`` through the recorded graph, down to its roots, keeping the graph (the
    layer hooks collect what they need on the way; the gradients at the roots are discarded)."""
    if not forward.roots:
        raise UnsupportedForHooks("no captured layer ran in the forward pass")
    if not loss.requires_grad:
        raise UnsupportedForHooks("the logits do not depend differentiably on the input")
    torch.autograd.grad(loss, forward.roots, retain_graph=True, allow_unused=True)


def _purview_loss(z: torch.Tensor) -> torch.Tensor:
    """Purview's per-sample loss ``mean_c BCEWithLogits(z_c, 1)`` (B,)."""
    zf = z.float()
    return F.binary_cross_entropy_with_logits(zf, torch.ones_like(zf), reduction="none").mean(1)


def closed_form_applies(ctx: BatchPasses) -> bool:
    """Whether the final layer's output *is* the logits, with one feature vector per sample."""
    final = ctx._forward.final
    return final is not None and final.output is ctx._forward.logits and final.input.dim() == 2


def features(ctx: BatchPasses) -> torch.Tensor:
    """Penultimate features ``h`` (B, D) float64: the input of the final ``nn.Linear``."""
    final = ctx._forward.final
    if final is None:
        raise ModelError(ctx.no_final_linear_message())
    return final.input.detach().reshape(final.input.shape[0], -1).double()


FORWARD = PassSpec(
    "FORWARD", provides={
        "logits": lambda ctx: ctx._forward.logits.detach().double(),  # ``z`` (B, C) float64, detached
        "prediction": lambda ctx: ctx.logits.argmax(dim=1),  # ``ŷ = argmax_c z_c`` (B,) int64
        "num_classes": lambda ctx: ctx.logits.shape[1],
        "finite": lambda ctx: torch.isfinite(ctx.logits).all(dim=1),  # all logits finite; else NaN for every score
        # the name of the final nn.Linear (the last one to run with one output per class), or None
        "final_layer_name": lambda ctx: None if ctx._forward.final is None else ctx._forward.final.name,
        "closed_form_applies": closed_form_applies, "features": features,
        "log_probabilities": lambda ctx: F.log_softmax(ctx.logits, dim=1),  # ``log softmax(z)`` (B, C) float64
        "probabilities": lambda ctx: ctx.log_probabilities.exp()},  # ``p = softmax(z)`` (B, C) float64
    module=__name__)

PARAMETER_GRADIENTS = PassSpec(
    "PARAMETER_GRADIENTS", provides={"parameter_sq_norms": BatchPasses.purview_sq_norms},
    params=(Param("purview_backend", str, "auto", "per-sample gradient norms by 'hooks', 'vmap' or 'loop'; 'auto' "
                  "takes the first that applies", choices=("auto", "hooks", "vmap", "loop")),),
    needs_graph=True, module=__name__)
