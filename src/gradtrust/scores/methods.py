"""Every built-in trust score, one small function each, with its formula and its source.

Conventions: :mod:`gradtrust.functional`, which holds the forward-pass formulas; a method here adds the
reasons a value can be undefined. Registration order is the column order of every table: the paper's methods,
the slides' top-k GradTrust, then the stronger baselines of the failure-detection literature.
"""

from __future__ import annotations

from typing import Any

import torch

from gradtrust import functional as F
from gradtrust.scores.dropout import MC_DROPOUT
from gradtrust.scores.gradients import COUNTERFACTUAL_GRADIENTS
from gradtrust.scores.odin import ODIN
from gradtrust.scores.passes import FORWARD, PARAMETER_GRADIENTS
from gradtrust.scores.registry import register_method
from gradtrust.scores.spec import MethodOutput, Param, register_pass
from gradtrust.scores.view import BatchView

# The built-in passes, in the order of ``for p in Pass``: the order of their options, of a method's passes in
# ``gradtrust methods`` and of the reasons a method is skipped for. Capabilities and plug-ins add theirs after.
for builtin in (FORWARD, COUNTERFACTUAL_GRADIENTS, ODIN, PARAMETER_GRADIENTS, MC_DROPOUT):
    register_pass(builtin)

GRADIENTS = (COUNTERFACTUAL_GRADIENTS,)
DETECTION_BASELINE = ("detection_baseline",)  # gradtrust detect's default baselines (MethodSpec.tags)


def _undefined_for_all(batch: BatchView, reason: str) -> MethodOutput:
    n = batch.batch_size
    return MethodOutput(torch.full((n,), float("nan"), dtype=torch.float64), {reason: torch.ones(n, dtype=torch.bool)})


def _top2_gap(batch: BatchView, values: torch.Tensor) -> MethodOutput:
    if batch.num_classes < 2:
        return _undefined_for_all(batch, "a margin needs at least two classes")
    return MethodOutput(values, {})


@register_method("softmax", cuda_graph_safe=True, tags=DETECTION_BASELINE,
                 source="Hendrycks & Gimpel, ICLR 2017 (maximum softmax probability)")
def softmax_score(batch: BatchView) -> MethodOutput:
    """Maximum softmax probability ``p_ŷ``."""
    return MethodOutput(F.softmax(batch.logits), {})


@register_method("entropy", source="Shannon entropy (negated)",
                 cuda_graph_safe=True)
def entropy_score(batch: BatchView) -> MethodOutput:
    """Negative entropy ``Σ_c p_c log p_c``, from ``log_softmax`` so it stays finite (``0 log 0 = 0``)."""
    return MethodOutput(F.entropy(batch.logits), {})


@register_method("max_logit", cuda_graph_safe=True,
                 source="Hendrycks et al., ICML 2022; the paper's 'NLL' column (nll_loss on raw logits = z_ŷ)")
def max_logit_score(batch: BatchView) -> MethodOutput:
    """Largest logit ``z_ŷ`` (the GradTrust paper's "NLL" column)."""
    return MethodOutput(F.max_logit(batch.logits), {})


@register_method("margin", source="Top-1 minus top-2 softmax probability",
                 cuda_graph_safe=True)
def margin_score(batch: BatchView) -> MethodOutput:
    """Softmax margin ``p_(1) − p_(2)``."""
    return _top2_gap(batch, F.margin(batch.logits))


@register_method("odin", needs=(ODIN,), tags=DETECTION_BASELINE,
                 source="Liang et al., ICLR 2018 (ODIN); T = 100, ε = 0.0014 as in the GradTrust release")
def odin_score(batch: BatchView) -> MethodOutput:
    """ODIN ``max_c softmax(f(x̃)/T)_c`` with ``x̃ = x − ε·sign(∇_x[−log softmax(f(x)/T)_ŷ])``."""
    scaled = batch.odin_logits / batch.options.odin_temperature
    values = torch.softmax(scaled, dim=1).max(dim=1).values
    return MethodOutput(values, {"non-finite logits on the ODIN-perturbed input": ~torch.isfinite(scaled).all(1)})


@register_method("mc_dropout", needs=(MC_DROPOUT,),
                 source="Gal & Ghahramani, ICML 2016 (MC dropout); negative predictive entropy")
def mc_dropout_score(batch: BatchView) -> MethodOutput:
    """``Σ_c p̄_c log p̄_c`` with ``p̄ = mean_t softmax(f_t(x))`` over ``T`` dropout passes (default 10).

    Every dropout layer samples a mask (seeded per sample), everything else stays in eval mode. The
    GradTrust release averaged only the last pass (a bug); this averages all ``T``.
    """
    p = batch.mc_mean_probabilities
    values = torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(dim=1)
    return MethodOutput(values, {"non-finite logits in a dropout pass": ~torch.isfinite(p).all(1)})


def _gradient_undefined(batch: BatchView) -> dict[str, torch.Tensor]:
    """Where ``G = a hᵀ`` carries no row variance: ``Var_d(h_d²) = 0`` (closed form only)."""
    if batch.uses_autograd_path:
        return {}
    return {"penultimate features carry no variance (Var_d(h_d²) = 0)": ~(batch.feature_sq_variance > 0)}


@register_method("gradnorm", needs=GRADIENTS, cuda_graph_safe=True,
                 tags=DETECTION_BASELINE, source="Huang et al., NeurIPS 2021 (GradNorm)")
def gradnorm_score(batch: BatchView) -> MethodOutput:
    """GradNorm ``‖∂L/∂W‖₁`` for ``L = −Σ_c u_c log p_c``; on the final layer ``‖p − u‖₁ · ‖h‖₁``.

    Deviation from the GradTrust release and definedness: :func:`gradtrust.functional.gradnorm`.
    """
    return MethodOutput(batch.uniform_ce_grad_l1, {})


def _purview(batch: BatchView, part: str) -> MethodOutput:
    """Shared body of the two Purview scores; see :func:`purview_initial_score`."""
    s = batch.parameter_sq_norms
    j = s.shape[1]
    m = j - 1
    columns = slice(0, m // 2) if part == "initial" else slice((m + 1) // 2, j)
    chosen = s[:, columns]
    if chosen.shape[1] == 0:
        return _undefined_for_all(batch, f"the model has too few parameter tensors ({j}) for an {part} Purview group")
    return MethodOutput(-chosen.mean(dim=1), {"non-finite parameter gradients": ~torch.isfinite(chosen).all(1)})


@register_method("purview_initial", needs=(PARAMETER_GRADIENTS,),
                 tags=DETECTION_BASELINE,
                 source="Lee et al., IEEE Access 2023 (Probing the Purview of Neural Networks), "
                        "as in the GradTrust release")
def purview_initial_score(batch: BatchView) -> MethodOutput:
    """``−mean_{j < ⌊m/2⌋} ‖∂L/∂θ_j‖²₂`` over the first half of the parameter tensors.

    ``L = mean_c BCEWithLogits(z_c, 1)``; ``θ_j`` in ``named_parameters()`` order, ``J`` tensors,
    ``m = J − 1``; initial = ``s[0 : ⌊m/2⌋]``, final = ``s[⌈m/2⌉ : J]`` (``docs/methods.md``).
    """
    return _purview(batch, "initial")


@register_method("purview_final", needs=(PARAMETER_GRADIENTS,),
                 tags=DETECTION_BASELINE, source="Lee et al., IEEE Access 2023, as in the GradTrust release")
def purview_final_score(batch: BatchView) -> MethodOutput:
    """``−mean_{j ≥ ⌈m/2⌉} ‖∂L/∂θ_j‖²₂`` over the last half of the parameter tensors (see purview_initial)."""
    return _purview(batch, "final")


@register_method("gradtrust", needs=GRADIENTS, cuda_graph_safe=True,
                 source="Prabhushankar & AlRegib, MIPR 2024 (GradTrust), as the code release computes it")
def gradtrust_score(batch: BatchView) -> MethodOutput:
    """GradTrust ``max_c e_c / mean_c e_c`` with ``e_c = Var_d(G_{c,d}²)`` and ``G = ∂L/∂W``.

    ``L = (1/C) Σ_c (z_c − 1/C)²`` (the MSE between the logits and the uniform "confounding" label).
    On the final layer ``e_c = a_c⁴ Var_d(h_d²)``, ``a_c = (2/C)(z_c − 1/C)``, so the score is
    ``max_c (z_c − 1/C)⁴ / mean_c (z_c − 1/C)⁴`` (:func:`gradtrust.functional.gradtrust`): one forward pass.
    The maximum runs over all rows, and the largest ``|z_c − 1/C|`` can be a strongly negative logit. The ratio
    is taken of the logit factors ``a_c⁴`` (``mse_gradient_row_profile``), so ``Var_d(h_d²)`` cancels exactly and
    equal logits give bit-identical scores; the features decide only where it is undefined (``Var_d(h_d²) = 0``).
    """
    e = batch.mse_gradient_row_profile
    undefined = _gradient_undefined(batch)
    undefined["every gradient row has zero variance"] = ~(e.mean(dim=1) > 0)
    return MethodOutput(F.gradtrust_from_row_energy(e), undefined)


TOPK = Param("topk", int, None, "number k of counterfactual classes of gradtrust_topk; none = min(10, C − 1)",
             lambda k: None if k >= 1 else "must be None or an integer >= 1")


def _topk_used(batch: BatchView, name: str, value: Any) -> Any:
    """The ``k`` gradtrust_topk actually uses: ``min(topk or 10, C − 1)``."""
    return min(value or 10, max(batch.num_classes - 1, 1)) if name == "topk" else value


@register_method("gradtrust_topk", needs=GRADIENTS, params=(TOPK,),
                 cuda_graph_safe=True, resolve=_topk_used, source="Prabhushankar & AlRegib, MIPR 2024, as the slides word it")
def gradtrust_topk_score(batch: BatchView) -> MethodOutput:
    """``e_ŷ / mean_{c ∈ top-k after ŷ} e_c``: the predicted class's row energy over that of the ``k``
    classes with the highest logits after ``ŷ`` (the counterfactual classes); default ``k = min(10, C − 1)``.

    Rows must be classes: on a layer whose rows are not the ``C`` classes the score is undefined. On the closed
    form the ratio is taken of the logit factors ``a_c⁴`` (see gradtrust).
    """
    e = batch.mse_gradient_row_profile
    c = batch.num_classes
    if e.shape[1] != c or c < 2:
        return _undefined_for_all(batch, "gradtrust_topk needs a layer with one gradient row per class" if c >= 2
                                  else "gradtrust_topk needs at least two classes")
    numerator, denominator = F.gradtrust_topk_parts(e, batch.logits, batch.options.topk)
    undefined = _gradient_undefined(batch)
    undefined["the counterfactual rows have zero variance"] = ~(denominator > 0)
    values = numerator / denominator
    return MethodOutput(values, undefined)


@register_method("brier", source="Brier (1950), against the predicted class; GradTrust release",
                 cuda_graph_safe=True)
def brier_score(batch: BatchView) -> MethodOutput:
    """Negative Brier score against the prediction ``−Σ_c (p_c − 1[c = ŷ])²``."""
    return MethodOutput(F.brier(batch.logits), {})


@register_method("logit_margin", cuda_graph_safe=True,
                 source="Liang et al., TMLR 2024; Heng & Soh 2025 ('RLog')")
def logit_margin_score(batch: BatchView) -> MethodOutput:
    """Logit margin ``z_(1) − z_(2)``."""
    return _top2_gap(batch, F.logit_margin(batch.logits))


@register_method("energy", source="Liu et al., NeurIPS 2020", cuda_graph_safe=True,
                 tags=DETECTION_BASELINE)
def energy_score(batch: BatchView) -> MethodOutput:
    """Negative free energy ``log Σ_c exp(z_c)``."""
    return MethodOutput(F.energy(batch.logits), {})


@register_method("doctor", source="Granese et al., NeurIPS 2021 (DOCTOR, black-box form)",
                 cuda_graph_safe=True)
def doctor_score(batch: BatchView) -> MethodOutput:
    """``Σ_c p_c²`` (DOCTOR's ``(1 − Σp²)/Σp²`` ranks samples in the reverse order)."""
    return MethodOutput(F.doctor(batch.logits), {})


PNORM_P = Param("pnorm_p", float, 2.0, "the p of maxlogit_pnorm", lambda p: None if p > 0 else "must be > 0")


@register_method("maxlogit_pnorm", params=(PNORM_P,), cuda_graph_safe=True,
                 source="Cattelan & Silva, UAI 2024 ('How to fix a broken confidence estimator')")
def maxlogit_pnorm_score(batch: BatchView) -> MethodOutput:
    """MaxLogit-pNorm ``max_c (z_c − z̄) / ‖z − z̄‖_p`` with ``z̄`` the mean logit (default ``p = 2``)."""
    z = batch.logits
    all_equal = (z == z[:, :1]).all(dim=1)
    return MethodOutput(F.maxlogit_pnorm(z, batch.options.pnorm_p), {"all logits are equal (‖z − z̄‖_p = 0)": all_equal})
