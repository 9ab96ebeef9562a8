"""``TrustedClassifier``: a classifier and its trust gate as one deployable ``nn.Module``.

>>> trusted = TrustedClassifier(model, score="gradtrust", gate="gate.json")     # doctest: +SKIP
>>> logits, trust, accept = trusted(images)                                     # doctest: +SKIP
>>> program = trusted.export(example)     # torch.export.ExportedProgram        # doctest: +SKIP

One forward pass gives the logits, the trust score and the decision ``accept = trust ≥ threshold`` (a NaN score
is refused). The forward-pass scores (:data:`FORWARD_SCORES`) are the closed forms of
:mod:`gradtrust.functional` — the same functions the scores engine calls, on the logits and, for the
gradient closed forms (``gradtrust``, ``gradtrust_topk``, ``gradnorm``), the input of the final ``nn.Linear``
(the penultimate features, captured by a forward hook as :mod:`gradtrust.nn.hooks` finds them) — so they export
with ``torch.export`` and trace to TorchScript. Every other registered score (ODIN, MC dropout, Purview, …) needs
extra passes or backward passes: it runs eagerly through :func:`gradtrust.score`, and asking to export it raises
a :class:`~gradtrust.errors.ModelError` saying so.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from gradtrust import functional as F
from gradtrust.errors import InputError, ModelError
from gradtrust.nn import as_module, logits_of
from gradtrust.nn.hooks import LayerCall, final_layer_candidates, final_linear
from gradtrust.selective import Gate

__all__ = ["FORWARD_SCORES", "TrustedClassifier", "TrustedOutput"]


class TrustedOutput(NamedTuple):
    """What :class:`TrustedClassifier` returns: ``logits`` (B, C), ``trust`` (B,) float64 (higher = more
    trustworthy), ``accept`` (B,) bool."""

    logits: torch.Tensor
    trust: torch.Tensor
    accept: torch.Tensor


# A saved ExportedProgram (torch.export.save) records its output's type by name: register it so that the named
# tuple survives a save and load (torch has no public call for named tuples yet).
torch.utils._pytree._register_namedtuple(TrustedOutput, serialized_type_name="gradtrust.trusted.TrustedOutput")


def _logit_score(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    return lambda logits, features, options: fn(logits)


#: name → ``(score(logits, features, options), needs features)``: the closed forms of :mod:`gradtrust.functional`.
FORWARD_SCORES: dict[str, tuple[Callable[..., torch.Tensor], bool]] = {
    "softmax": (_logit_score(F.softmax), False),
    "entropy": (_logit_score(F.entropy), False),
    "max_logit": (_logit_score(F.max_logit), False),
    "margin": (_logit_score(F.margin), False),
    "brier": (_logit_score(F.brier), False),
    "logit_margin": (_logit_score(F.logit_margin), False),
    "energy": (_logit_score(F.energy), False),
    "doctor": (_logit_score(F.doctor), False),
    "maxlogit_pnorm": (lambda z, h, o: F.maxlogit_pnorm(z, o["pnorm_p"]), False),
    "gradtrust": (lambda z, h, o: F.gradtrust(z, h), True),
    "gradtrust_topk": (lambda z, h, o: F.gradtrust_topk(z, h, o["topk"]), True),
    "gradnorm": (lambda z, h, o: F.gradnorm(z, h), True),
}


class TrustedClassifier(nn.Module):
    """``model`` with a trust score and a threshold: ``forward(x) → TrustedOutput(logits, trust, accept)``.

    Args:
        model: a classifier ``nn.Module`` (or a :class:`gradtrust.models.LoadedModel`) mapping a batch to logits.
        score: a score name (:data:`FORWARD_SCORES` export; any other registered method runs eagerly); default
            the gate's score, else ``"softmax"``.
        gate: a :class:`gradtrust.selective.Gate` or the path of its JSON file (``gradtrust gate fit``).
        threshold: a threshold instead of a gate (accept where ``trust ≥ threshold``).
        topk: ``gradtrust_topk``'s ``k`` (default ``min(10, C − 1)``); pnorm_p: ``maxlogit_pnorm``'s ``p``.
        output_index: which output holds the logits, for a model returning several.
        options: further options of an eager (non-forward-pass) score, as :func:`gradtrust.score` takes them.
    """

    threshold: torch.Tensor  # a buffer: float64, −inf without a gate or threshold

    def __init__(
        self,
        model: Any,
        score: str | None = None,
        *,
        gate: Gate | str | os.PathLike | None = None,
        threshold: float | None = None,
        topk: int | None = None,
        pnorm_p: float = 2.0,
        output_index: int | str | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        if gate is not None and threshold is not None:
            raise InputError("give a gate or a threshold, not both")
        if gate is not None and not isinstance(gate, Gate):
            gate = Gate.load(gate)
        if gate is not None:
            if score is not None and gate.score and score != gate.score:
                raise InputError(
                    f"the gate thresholds {gate.score!r}, not {score!r}: leave score out or fit a gate on {score!r}"
                )
            score = score or gate.score
            threshold = gate.threshold
        self.score_name = score or "softmax"
        if self.score_name not in FORWARD_SCORES:
            from gradtrust.scores import available_methods

            if self.score_name not in available_methods():
                raise InputError(f"unknown score {self.score_name!r}; choose from {', '.join(available_methods())}")
        self.model = as_module(model)
        self.gate = gate
        self.output_index = output_index
        self.score_options = {"topk": topk, "pnorm_p": float(pnorm_p)}
        self.eager_options = options
        self.register_buffer(
            "threshold", torch.tensor(float("-inf") if threshold is None else float(threshold), dtype=torch.float64)
        )
        self._final_layer: str | None = None

    @property
    def exportable(self) -> bool:
        """Whether the score is a forward-pass closed form (exports with ``torch.export`` and TorchScript)."""
        return self.score_name in FORWARD_SCORES

    def _features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits and the final ``nn.Linear``'s input, in one forward pass (hooks on that layer only, once
        it is known)."""
        modules = (
            {self._final_layer: self.model.get_submodule(self._final_layer)}
            if self._final_layer
            else final_layer_candidates(self.model)
        )
        calls: list[LayerCall] = []  # gradtrust.nn.hooks.recording without the version counter, which
        handles = [
            module.register_forward_hook(  # inference tensors (torch.inference_mode) do not have
                lambda mod, args, out, name=name: calls.append(LayerCall(name, mod, args[0] if args else None, out, 0))
            )
            for name, module in modules.items()
        ]
        try:
            logits = logits_of(self.model(x), self.output_index)
        finally:
            for handle in handles:
                handle.remove()
        call = final_linear(self.model, calls, logits.shape[-1])
        if call is None or call.input is None:
            raise ModelError(
                f"{self.score_name} needs the penultimate features: the input of a final nn.Linear with "
                f"{logits.shape[-1]} outputs, which this model does not run; use a score of the logits "
                "(softmax, energy, max_logit, …)."
            )
        self._final_layer = call.name
        return logits, call.input

    def forward(self, x: torch.Tensor) -> TrustedOutput:
        if not self.exportable:
            if torch.compiler.is_exporting() or torch.jit.is_tracing() or torch.jit.is_scripting():
                raise self._not_exportable()
            from gradtrust.scores import score as score_batch

            result = score_batch(
                self.model,
                x,
                [self.score_name],
                output_index=self.output_index,
                **{k: v for k, v in self.score_options.items() if v is not None},
                **self.eager_options,
            )
            trust = result[self.score_name].to(result.logits.device)
            return TrustedOutput(result.logits, trust, trust >= self.threshold.to(trust.device))
        fn, needs_features = FORWARD_SCORES[self.score_name]
        if needs_features:
            logits, features = self._features_and_logits(x)
        else:
            logits, features = logits_of(self.model(x), self.output_index), None
        trust = fn(logits, features, self.score_options)
        return TrustedOutput(logits, trust, trust >= self.threshold)

    def _not_exportable(self) -> ModelError:
        return ModelError(
            f"{self.score_name} needs more than one forward pass (gradients or repeated passes), so it "
            f"runs in eager mode only and cannot be exported; export a forward-pass score: "
            f"{', '.join(FORWARD_SCORES)}."
        )

    def export(self, example: torch.Tensor, **kwargs: Any) -> Any:
        """``torch.export.export`` of this module on ``example`` (a batch; non-strict tracing, so the forward
        hook that captures the penultimate features runs as in eager mode). Eval mode is set first."""
        if not self.exportable:
            raise self._not_exportable()
        self.eval()
        return torch.export.export(self, (example,), strict=kwargs.pop("strict", False), **kwargs)

    def to_torchscript(self, example: torch.Tensor) -> torch.jit.ScriptModule:
        """A TorchScript module traced on ``example`` (``torch.jit.trace``; the model needs to be traceable, not
        scriptable). Eval mode is set first."""
        if not self.exportable:
            raise self._not_exportable()
        self.eval()
        with torch.no_grad():
            return torch.jit.trace(self, (example,), strict=False, check_trace=False)
