"""What a method function sees of a batch: the quantities of the passes it declared, and nothing else.

:class:`BatchView` wraps the shared :class:`~gradtrust.scores.passes.BatchPasses` of a batch. Each
quantity belongs to one :class:`~gradtrust.scores.spec.Pass`; reading a quantity whose pass the method did
not declare raises :class:`UndeclaredPassError` instead of returning a number. (Without this guard a method
that read per-sample gradients while declaring only the forward pass got ``-0.0``, or a different value
when another method in the same call had asked for the pass.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from gradtrust.errors import GradTrustError
from gradtrust.scores.spec import Pass

if TYPE_CHECKING:
    from gradtrust.scores.options import ScoreOptions
    from gradtrust.scores.passes import BatchPasses, GradientRows


class UndeclaredPassError(GradTrustError):
    """A method read a quantity of a pass it did not declare in ``needs``."""


class BatchView:
    """The per-batch quantities a method may read, each checked against the method's declared passes."""

    __slots__ = ("_method", "_needs", "_passes")

    def __init__(self, passes: BatchPasses, method: str, needs: frozenset[Pass]):
        self._passes = passes
        self._method = method
        self._needs = needs | {Pass.FORWARD}

    def _require(self, needed: Pass, quantity: str) -> BatchPasses:
        if needed not in self._needs:
            declared = ", ".join(sorted(f"Pass.{p.name}" for p in self._needs))
            raise UndeclaredPassError(
                f"method {self._method!r} read {quantity}, which comes from Pass.{needed.name}, but declared "
                f"needs={{{declared}}}. Add Pass.{needed.name} to its needs in register_method(...).")
        return self._passes

    # ------------------------------------------------------------------ always available
    @property
    def options(self) -> ScoreOptions:
        """The options of this call (every declared option, defaults filled in)."""
        return self._passes.options

    @property
    def model(self) -> nn.Module:
        """The model being scored (in its scoring state: eval mode, parameters frozen)."""
        return self._passes.model

    @property
    def inputs(self) -> torch.Tensor:
        """The batch as the model receives it (on the model's device and dtype)."""
        return self._passes.inputs

    @property
    def sample_ids(self) -> torch.Tensor:
        return self._passes.sample_ids

    # ------------------------------------------------------------------ Pass.FORWARD
    @property
    def logits(self) -> torch.Tensor:
        """``z`` (B, C) float64, detached."""
        return self._require(Pass.FORWARD, "logits").logits

    @property
    def log_probabilities(self) -> torch.Tensor:
        """``log softmax(z)`` (B, C) float64."""
        return self._require(Pass.FORWARD, "log_probabilities").log_probabilities

    @property
    def probabilities(self) -> torch.Tensor:
        """``p = softmax(z)`` (B, C) float64."""
        return self._require(Pass.FORWARD, "probabilities").probabilities

    @property
    def prediction(self) -> torch.Tensor:
        """``ŷ = argmax_c z_c`` (B,) int64."""
        return self._require(Pass.FORWARD, "prediction").prediction

    @property
    def num_classes(self) -> int:
        return self._require(Pass.FORWARD, "num_classes").num_classes

    @property
    def batch_size(self) -> int:
        return int(self._passes.inputs.shape[0])

    @property
    def features(self) -> torch.Tensor:
        """Penultimate features ``h`` (B, D) float64 (the input of the final ``nn.Linear``)."""
        return self._require(Pass.FORWARD, "features").features

    @property
    def final_layer_name(self) -> str | None:
        return self._require(Pass.FORWARD, "final_layer_name").final_layer_name

    # ------------------------------------------------------------------ Pass.COUNTERFACTUAL_GRADIENTS
    @property
    def mse_gradient_rows(self) -> GradientRows:
        """Row energies of ``∂L/∂W`` for GradTrust's MSE against the uniform label (closed form or autograd)."""
        return self._require(Pass.COUNTERFACTUAL_GRADIENTS, "mse_gradient_rows").mse_gradient_rows

    @property
    def uniform_ce_grad_l1(self) -> torch.Tensor:
        """``‖∂L/∂W‖₁`` for cross-entropy against the uniform label (B,) float64."""
        return self._require(Pass.COUNTERFACTUAL_GRADIENTS, "uniform_ce_grad_l1").uniform_ce_grad_l1

    @property
    def feature_sq_variance(self) -> torch.Tensor:
        """``Var_d(h_d²)`` (B,): where it is 0 the closed-form gradient rows carry no variance."""
        return self._require(Pass.COUNTERFACTUAL_GRADIENTS, "feature_sq_variance").feature_sq_variance

    @property
    def uses_autograd_path(self) -> bool:
        """Whether the gradient quantities come from per-sample autograd rather than the closed forms."""
        return self._require(Pass.COUNTERFACTUAL_GRADIENTS, "uses_autograd_path").uses_autograd_path

    # ------------------------------------------------------------------ Pass.ODIN
    @property
    def odin_logits(self) -> torch.Tensor:
        """Logits of ODIN's perturbed input (B, C) float64."""
        return self._require(Pass.ODIN, "odin_logits").odin_logits

    # ------------------------------------------------------------------ Pass.PARAMETER_GRADIENTS
    @property
    def parameter_sq_norms(self) -> torch.Tensor:
        """``‖∂L_i/∂θ_j‖²`` (B, J) float64 for every parameter tensor, Purview's loss."""
        return self._require(Pass.PARAMETER_GRADIENTS, "parameter_sq_norms").parameter_sq_norms

    # ------------------------------------------------------------------ Pass.MC_DROPOUT
    @property
    def mc_mean_probabilities(self) -> torch.Tensor:
        """``p̄ = mean_t softmax(f_t(x))`` over the seeded dropout passes (B, C) float64."""
        return self._require(Pass.MC_DROPOUT, "mc_mean_probabilities").mc_mean_probabilities
