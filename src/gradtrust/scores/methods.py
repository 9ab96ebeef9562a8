"""Every trust score, one small function each, with its formula and its source.

Conventions (SPEC §1): one value per sample, float64, **higher = more trustworthy**; a value that is
undefined for a sample is NaN and the reason is returned beside it. Each function reads the per-batch
quantities it needs from :class:`~gradtrust.scores.passes.BatchPasses`, which computes each pass once.

Notation: logits ``z ∈ R^C``, ``p = softmax(z)``, ``ŷ = argmax z``, penultimate features ``h ∈ R^D``,
final layer ``W ∈ R^{C×D}``, uniform label ``u = 1/C``.
"""

from __future__ import annotations

import torch

from gradtrust.scores.passes import BatchPasses
from gradtrust.scores.registry import MethodOutput, register_method

FORWARD = {"forward"}
GRADIENTS = {"forward", "counterfactual_gradients"}


def _finish(values: torch.Tensor, undefined: dict[str, torch.Tensor] | None = None) -> MethodOutput:
    """Package a method's values with the masks of the samples where it is undefined (see MethodOutput)."""
    return MethodOutput(values, undefined or {})


def _top2_gap(passes: BatchPasses, x: torch.Tensor) -> MethodOutput:
    """``x_(1) − x_(2)`` per sample: largest minus second-largest entry (undefined with one class)."""
    if passes.num_classes < 2:
        batch = x.shape[0]
        return _finish(torch.full((batch,), float("nan"), dtype=torch.float64),
                       {"a margin needs at least two classes": torch.ones(batch, dtype=torch.bool)})
    top = x.topk(2, dim=1).values
    return _finish(top[:, 0] - top[:, 1])


# ---------------------------------------------------------------------------------- one forward pass
@register_method("softmax", needs=FORWARD, source="Hendrycks & Gimpel, ICLR 2017 (maximum softmax probability)")
def softmax_score(passes: BatchPasses) -> MethodOutput:
    """Maximum softmax probability ``p_ŷ``."""
    return _finish(passes.probabilities.max(dim=1).values)


@register_method("entropy", needs=FORWARD, source="Shannon entropy; SPEC §1")
def entropy_score(passes: BatchPasses) -> MethodOutput:
    """Negative entropy ``Σ_c p_c log p_c``, from ``log_softmax`` so it stays finite (``0 log 0 = 0``)."""
    p, log_p = passes.probabilities, passes.log_probabilities
    return _finish(torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(dim=1))


@register_method("max_logit", needs=FORWARD,
                 source="Hendrycks et al., ICML 2022; the paper's 'NLL' column (nll_loss on raw logits = z_ŷ)")
def max_logit_score(passes: BatchPasses) -> MethodOutput:
    """Largest logit ``z_ŷ`` (the GradTrust paper's "NLL" column)."""
    return _finish(passes.logits.max(dim=1).values)


@register_method("margin", needs=FORWARD, source="Top-1 minus top-2 softmax probability; SPEC §1")
def margin_score(passes: BatchPasses) -> MethodOutput:
    """Softmax margin ``p_(1) − p_(2)``."""
    return _top2_gap(passes, passes.probabilities)


@register_method("brier", needs=FORWARD, source="Brier (1950), against the predicted class; GradTrust release")
def brier_score(passes: BatchPasses) -> MethodOutput:
    """Negative Brier score against the prediction ``−Σ_c (p_c − 1[c = ŷ])²``."""
    p = passes.probabilities
    onehot = torch.zeros_like(p).scatter_(1, passes.prediction.unsqueeze(1), 1.0)
    return _finish(-(p - onehot).square().sum(dim=1))


@register_method("logit_margin", needs=FORWARD, source="Liang et al., TMLR 2024; Heng & Soh 2025 ('RLog')")
def logit_margin_score(passes: BatchPasses) -> MethodOutput:
    """Logit margin ``z_(1) − z_(2)``."""
    return _top2_gap(passes, passes.logits)


@register_method("energy", needs=FORWARD, source="Liu et al., NeurIPS 2020")
def energy_score(passes: BatchPasses) -> MethodOutput:
    """Negative free energy ``log Σ_c exp(z_c)``."""
    return _finish(torch.logsumexp(passes.logits, dim=1))


@register_method("doctor", needs=FORWARD, source="Granese et al., NeurIPS 2021 (DOCTOR, black-box form)")
def doctor_score(passes: BatchPasses) -> MethodOutput:
    """``Σ_c p_c²`` (DOCTOR's ``(1 − Σp²)/Σp²`` ranks samples in the reverse order)."""
    return _finish(passes.probabilities.square().sum(dim=1))


@register_method("maxlogit_pnorm", needs=FORWARD, options=("pnorm_p",),
                 source="Cattelan & Silva, UAI 2024 ('How to fix a broken confidence estimator')")
def maxlogit_pnorm_score(passes: BatchPasses) -> MethodOutput:
    """MaxLogit-pNorm ``max_c (z_c − z̄) / ‖z − z̄‖_p`` with ``z̄`` the mean logit (default ``p = 2``)."""
    centred = passes.logits - passes.logits.mean(dim=1, keepdim=True)
    norm = centred.abs().pow(passes.options.pnorm_p).sum(dim=1).pow(1.0 / passes.options.pnorm_p)
    values = centred.max(dim=1).values / norm
    return _finish(values, {"all logits are equal (‖z − z̄‖_p = 0)": norm == 0})


# ---------------------------------------------------------------------------------- counterfactual gradients
def _gradient_undefined(passes: BatchPasses) -> dict[str, torch.Tensor]:
    """Where ``G = a hᵀ`` carries no row variance: ``Var_d(h_d²) = 0`` (closed form only)."""
    if passes.uses_autograd_path:
        return {}
    return {"penultimate features carry no variance (Var_d(h_d²) = 0)": ~(passes.feature_sq_variance > 0)}


@register_method("gradtrust", needs=GRADIENTS, options=("layer", "gradient_path"),
                 source="Prabhushankar & AlRegib, MIPR 2024 (GradTrust), as the code release computes it")
def gradtrust_score(passes: BatchPasses) -> MethodOutput:
    """GradTrust ``max_c e_c / mean_c e_c`` with ``e_c = Var_d(G_{c,d}²)`` and ``G = ∂L/∂W``.

    ``L = (1/C) Σ_c (z_c − 1/C)²`` (the MSE between the logits and the uniform "confounding" label).
    On the final layer ``e_c = a_c⁴ Var_d(h_d²)``, ``a_c = (2/C)(z_c − 1/C)``, so the score is
    ``max_c (z_c − 1/C)⁴ / mean_c (z_c − 1/C)⁴`` (SPEC §1): one forward pass. Note that the maximum runs
    over all rows, and the largest ``|z_c − 1/C|`` can be a strongly negative logit, not the predicted class.
    """
    e = passes.mse_gradient_rows.row_energy
    mean = e.mean(dim=1)
    values = e.max(dim=1).values / mean
    undefined = _gradient_undefined(passes)
    undefined["every gradient row has zero variance"] = ~(mean > 0)
    return _finish(values, undefined)


@register_method("gradtrust_topk", needs=GRADIENTS, options=("topk", "layer", "gradient_path"),
                 source="Prabhushankar & AlRegib, MIPR 2024, as the slides word it")
def gradtrust_topk_score(passes: BatchPasses) -> MethodOutput:
    """``e_ŷ / mean_{c ∈ top-k after ŷ} e_c``: the predicted class's row energy over that of the ``k``
    classes with the highest logits after ``ŷ`` (the counterfactual classes); default ``k = min(10, C − 1)``.

    Rows must be classes: on a layer whose rows are not the ``C`` classes the score is undefined.
    """
    e = passes.mse_gradient_rows.row_energy
    batch, c = passes.logits.shape
    if e.shape[1] != c or c < 2:
        reason = ("gradtrust_topk needs a layer with one gradient row per class" if c >= 2
                  else "gradtrust_topk needs at least two classes")
        return _finish(torch.full((batch,), float("nan"), dtype=torch.float64),
                       {reason: torch.ones(batch, dtype=torch.bool)})
    k = min(passes.options.topk or 10, c - 1)
    prediction = passes.prediction
    others = passes.logits.clone().scatter_(1, prediction.unsqueeze(1), float("-inf"))
    counterfactuals = others.topk(k, dim=1).indices
    numerator = e.gather(1, prediction.unsqueeze(1)).squeeze(1)
    denominator = e.gather(1, counterfactuals).mean(dim=1)
    undefined = _gradient_undefined(passes)
    undefined["the counterfactual rows have zero variance"] = ~(denominator > 0)
    return _finish(numerator / denominator, undefined)


@register_method("gradnorm", needs=GRADIENTS, options=("layer", "gradient_path"),
                 source="Huang et al., NeurIPS 2021 (GradNorm)")
def gradnorm_score(passes: BatchPasses) -> MethodOutput:
    """GradNorm ``‖∂L/∂W‖₁`` for ``L = −Σ_c u_c log p_c``; on the final layer ``‖p − u‖₁ · ‖h‖₁``.

    Higher means more in-distribution (Huang et al.). The GradTrust release used a negated L2 norm of a
    KL-divergence variant instead: a documented deviation (SPEC §1). Defined for every finite sample,
    all-zero features included (the gradient is then zero, the least trustworthy value).
    """
    return _finish(passes.uniform_ce_grad_l1)


# ---------------------------------------------------------------------------------- extra passes
@register_method("odin", needs={"forward", "odin"},
                 options=("odin_temperature", "odin_epsilon", "odin_epsilon_space", "odin_input_std"),
                 source="Liang et al., ICLR 2018 (ODIN); T = 100, ε = 0.0014 as in the GradTrust release")
def odin_score(passes: BatchPasses) -> MethodOutput:
    """ODIN ``max_c softmax(f(x̃)/T)_c`` with ``x̃ = x − ε·sign(∇_x[−log softmax(f(x)/T)_ŷ])``."""
    scaled = passes.odin_logits / passes.options.odin_temperature
    values = torch.softmax(scaled, dim=1).max(dim=1).values
    return _finish(values, {"non-finite logits on the ODIN-perturbed input": ~torch.isfinite(scaled).all(1)})


@register_method("mc_dropout", needs={"forward", "mc_dropout"}, options=("mc_samples", "seed"),
                 source="Gal & Ghahramani, ICML 2016 (MC dropout); negative predictive entropy")
def mc_dropout_score(passes: BatchPasses) -> MethodOutput:
    """``Σ_c p̄_c log p̄_c`` with ``p̄ = mean_t softmax(f_t(x))`` over ``T`` dropout passes (default 10).

    Every dropout layer samples a mask (seeded per sample), everything else stays in eval mode. The
    GradTrust release averaged only the last pass (a bug); this averages all ``T``.
    """
    p = passes.mc_mean_probabilities
    values = torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(dim=1)
    return _finish(values, {"non-finite logits in a dropout pass": ~torch.isfinite(p).all(1)})


def _purview(passes: BatchPasses, part: str) -> MethodOutput:
    """Shared body of the two Purview scores; see :func:`purview_initial_score`."""
    s = passes.parameter_sq_norms
    j = s.shape[1]
    m = j - 1
    columns = slice(0, m // 2) if part == "initial" else slice((m + 1) // 2, j)
    chosen = s[:, columns]
    batch = s.shape[0]
    if chosen.shape[1] == 0:
        return _finish(torch.full((batch,), float("nan"), dtype=torch.float64),
                       {f"the model has too few parameter tensors ({j}) for an {part} Purview group":
                        torch.ones(batch, dtype=torch.bool)})
    return _finish(-chosen.mean(dim=1),
                   {"non-finite parameter gradients": ~torch.isfinite(chosen).all(1)})


@register_method("purview_initial", needs={"forward", "per_sample_gradients"}, options=("purview_backend",),
                 source="Lee et al., IEEE Access 2023 (Probing the Purview of Neural Networks), as in the GradTrust release")
def purview_initial_score(passes: BatchPasses) -> MethodOutput:
    """``−mean_{j < ⌊m/2⌋} ‖∂L/∂θ_j‖²₂`` over the first half of the parameter tensors.

    ``L = mean_c BCEWithLogits(z_c, 1)``; ``θ_j`` in ``named_parameters()`` order, ``J`` tensors,
    ``m = J − 1``; initial = ``s[0 : ⌊m/2⌋]``, final = ``s[⌈m/2⌉ : J]`` (SPEC §1).
    """
    return _purview(passes, "initial")


@register_method("purview_final", needs={"forward", "per_sample_gradients"}, options=("purview_backend",),
                 source="Lee et al., IEEE Access 2023, as in the GradTrust release")
def purview_final_score(passes: BatchPasses) -> MethodOutput:
    """``−mean_{j ≥ ⌈m/2⌉} ‖∂L/∂θ_j‖²₂`` over the last half of the parameter tensors (see purview_initial)."""
    return _purview(passes, "final")
