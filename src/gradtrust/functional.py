"""Trust scores as pure functions of a batch of logits (and penultimate features where a formula needs them).

The registered methods (:mod:`gradtrust.scores.methods`) call these functions, so each formula lives here
once. Conventions (``docs/methods.md``): input ``logits`` (B, C) of any floating dtype, computed in float64;
output (B,) float64, **higher = more trustworthy**; where a score is undefined the value comes out NaN
(the registered method records why). Notation: ``z`` logits, ``p = softmax(z)``, ``ŷ = argmax z``, ``h``
penultimate features (the input of the final ``nn.Linear``), ``u = 1/C`` the uniform label.

Examples:
    >>> import torch
    >>> from gradtrust import functional as F
    >>> logits = torch.tensor([[4.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    >>> F.softmax(logits)
    tensor([0.9362, 0.3333], dtype=torch.float64)
"""

from __future__ import annotations

import torch

from gradtrust.errors import InputError

__all__ = [
    "brier", "doctor", "energy", "entropy", "feature_square_variance", "gradnorm", "gradtrust",
    "gradtrust_from_row_energy", "gradtrust_topk", "gradtrust_topk_from_row_energy", "gradtrust_topk_parts",
    "logit_margin", "margin", "max_logit", "maxlogit_pnorm", "mse_gradient_row_energy", "mse_gradient_row_profile",
    "probabilities", "softmax", "top2_gap", "uniform_ce_gradient_l1",
]


def _logits(logits: torch.Tensor) -> torch.Tensor:
    if logits.dim() != 2:
        raise InputError(f"logits must be (batch, classes), got shape {tuple(logits.shape)}")
    return logits.double()


def _features(features: torch.Tensor, batch: int) -> torch.Tensor:
    if features.shape[0] != batch:
        raise InputError(f"features hold {features.shape[0]} samples for {batch} rows of logits")
    return features.reshape(batch, -1).double()


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``p = softmax(z)`` (B, C) float64, as ``exp(log_softmax(z))`` (the form every score here uses).

    Examples:
        >>> probabilities(torch.tensor([[0.0, 0.0]]))
        tensor([[0.5000, 0.5000]], dtype=torch.float64)
    """
    return torch.log_softmax(_logits(logits), dim=1).exp()


def top2_gap(x: torch.Tensor) -> torch.Tensor:
    """``x_(1) − x_(2)`` per row: the largest minus the second-largest entry (NaN with one column).

    Examples:
        >>> top2_gap(torch.tensor([[3.0, 1.0, 2.0]]))
        tensor([1.], dtype=torch.float64)
    """
    x = x.double()
    if x.shape[1] < 2:
        return torch.full((x.shape[0],), float("nan"), dtype=torch.float64, device=x.device)
    top = x.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """Maximum softmax probability ``p_ŷ`` (Hendrycks & Gimpel, ICLR 2017).

    Examples:
        >>> softmax(torch.tensor([[0.0, 0.0]]))
        tensor([0.5000], dtype=torch.float64)
    """
    return probabilities(logits).max(dim=1).values


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Negative Shannon entropy ``Σ_c p_c log p_c``, from ``log_softmax`` so it stays finite (``0 log 0 = 0``).

    Examples:
        >>> entropy(torch.tensor([[0.0, 0.0]]))  # −log 2
        tensor([-0.6931], dtype=torch.float64)
    """
    log_p = torch.log_softmax(_logits(logits), dim=1)
    p = log_p.exp()
    return torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(dim=1)


def max_logit(logits: torch.Tensor) -> torch.Tensor:
    """Largest logit ``z_ŷ`` (Hendrycks et al., ICML 2022): the GradTrust paper's "NLL" column, whose code
    applied ``nll_loss`` to raw logits, which returns ``z_ŷ``.

    Examples:
        >>> max_logit(torch.tensor([[1.0, 3.0]]))
        tensor([3.], dtype=torch.float64)
    """
    return _logits(logits).max(dim=1).values


def margin(logits: torch.Tensor) -> torch.Tensor:
    """Softmax margin ``p_(1) − p_(2)``: top-1 minus top-2 probability.

    Examples:
        >>> margin(torch.tensor([[0.0, 0.0]]))
        tensor([0.], dtype=torch.float64)
    """
    return top2_gap(probabilities(logits))


def brier(logits: torch.Tensor) -> torch.Tensor:
    """Negative Brier score against the prediction, ``−Σ_c (p_c − 1[c = ŷ])²`` (Brier 1950; the GradTrust
    release computes it beside the others).

    Examples:
        >>> brier(torch.tensor([[0.0, 0.0]]))  # −(0.5² + 0.5²)
        tensor([-0.5000], dtype=torch.float64)
    """
    z = _logits(logits)
    p = probabilities(z)
    onehot = torch.zeros_like(p).scatter_(1, z.argmax(dim=1, keepdim=True), 1.0)
    return -(p - onehot).square().sum(dim=1)


def logit_margin(logits: torch.Tensor) -> torch.Tensor:
    """Logit margin ``z_(1) − z_(2)`` (Liang et al., TMLR 2024; Heng & Soh 2025, "RLog").

    Examples:
        >>> logit_margin(torch.tensor([[5.0, 2.0, 1.0]]))
        tensor([3.], dtype=torch.float64)
    """
    return top2_gap(_logits(logits))


def energy(logits: torch.Tensor) -> torch.Tensor:
    """Negative free energy ``log Σ_c exp(z_c)`` (Liu et al., NeurIPS 2020).

    Examples:
        >>> energy(torch.tensor([[0.0, 0.0]]))  # log 2
        tensor([0.6931], dtype=torch.float64)
    """
    return torch.logsumexp(_logits(logits), dim=1)


def doctor(logits: torch.Tensor) -> torch.Tensor:
    """DOCTOR, black-box form: ``Σ_c p_c²`` (Granese et al., NeurIPS 2021; their ``(1 − Σp²)/Σp²`` ranks
    samples in the reverse order).

    Examples:
        >>> doctor(torch.tensor([[0.0, 0.0]]))
        tensor([0.5000], dtype=torch.float64)
    """
    return probabilities(logits).square().sum(dim=1)


def maxlogit_pnorm(logits: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """MaxLogit-pNorm ``max_c (z_c − z̄) / ‖z − z̄‖_p`` with ``z̄`` the mean logit (Cattelan & Silva, UAI 2024).

    NaN where all logits are equal (``‖z − z̄‖_p = 0``).

    Examples:
        >>> maxlogit_pnorm(torch.tensor([[1.0, -1.0]]))  # 1 / √2
        tensor([0.7071], dtype=torch.float64)
    """
    z = _logits(logits)
    centred = z - z.mean(dim=1, keepdim=True)
    norm = centred.abs().pow(p).sum(dim=1).pow(1.0 / p)
    return centred.max(dim=1).values / norm


def mse_gradient_row_profile(logits: torch.Tensor) -> torch.Tensor:
    """The logit factor ``a_c⁴`` (B, C) of the row energies of :func:`mse_gradient_row_energy`, with
    ``a_c = (2/C)(z_c − 1/C)``: ``e_c = a_c⁴ · Var_d(h_d²)`` (Prabhushankar & AlRegib, MIPR 2024;
    ``docs/methods.md``, "GradTrust's closed form").

    Every ratio of row energies GradTrust takes (``max_c e_c / mean_c e_c``, ``e_ŷ / mean e_c``) is a ratio of
    these factors: ``Var_d(h_d²)`` cancels. Computing the ratio from the factors alone cancels it exactly, so
    equal logits give bit-identical scores whatever the features (multiplying by ``Var_d(h_d²)`` first and
    dividing it out again cancels it only up to rounding).

    Examples:
        >>> mse_gradient_row_profile(torch.tensor([[1.0, 0.0]]))  # a = (0.5, -0.5)
        tensor([[0.0625, 0.0625]], dtype=torch.float64)
    """
    z = _logits(logits)
    c = z.shape[1]
    return ((2.0 / c) * (z - 1.0 / c)).pow(4)


def feature_square_variance(features: torch.Tensor) -> torch.Tensor:
    """``Var_d(h_d²)`` (B,) float64, unbiased over the ``D`` features: the per-sample factor of the row energies
    (:func:`mse_gradient_row_energy`); where it is 0 (e.g. all-zero features) GradTrust is undefined.

    Examples:
        >>> feature_square_variance(torch.tensor([[1.0, 2.0]]))  # Var(1, 4)
        tensor([4.5000], dtype=torch.float64)
    """
    h = features.reshape(features.shape[0], -1).double()
    return h.square().var(dim=1, unbiased=True)


def mse_gradient_row_energy(logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Row energies ``e_c = Var_d(G_{c,d}²)`` (B, C) of ``G = ∂L/∂W`` for ``L = (1/C) Σ_c (z_c − 1/C)²``.

    Closed form on the final linear layer (Prabhushankar & AlRegib, MIPR 2024; ``docs/methods.md``,
    "GradTrust's closed form"): ``G = a hᵀ`` with ``a_c = (2/C)(z_c − 1/C)``, so ``e_c = a_c⁴ · Var_d(h_d²)``
    (unbiased variance over the ``D`` features): :func:`mse_gradient_row_profile` times
    :func:`feature_square_variance`.

    Examples:
        >>> e = mse_gradient_row_energy(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 2.0]]))
        >>> e  # a = (0.5, -0.5), Var(1, 4) = 4.5, e = a⁴·4.5
        tensor([[0.2812, 0.2812]], dtype=torch.float64)
    """
    z = _logits(logits)
    h = _features(features, z.shape[0])
    return mse_gradient_row_profile(z) * feature_square_variance(h).unsqueeze(1)


def _undefined_where_flat(values: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """``values`` with NaN where ``Var_d(h_d²) = 0``: there ``G`` carries no row variance and GradTrust is
    undefined (the features decide only this degenerate case)."""
    flat = ~(feature_square_variance(_features(features, values.shape[0])) > 0)
    return values.masked_fill(flat.to(values.device), float("nan"))


def gradtrust_from_row_energy(row_energy: torch.Tensor) -> torch.Tensor:
    """GradTrust from gradient row energies: ``max_c e_c / mean_c e_c`` (NaN where every ``e_c = 0``).

    Examples:
        >>> gradtrust_from_row_energy(torch.tensor([[1.0, 3.0]]))
        tensor([1.5000], dtype=torch.float64)
    """
    e = row_energy.double()
    return e.max(dim=1).values / e.mean(dim=1)


def gradtrust(logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """GradTrust (Prabhushankar & AlRegib, MIPR 2024, as its code release computes it).

    ``L = (1/C) Σ_c (z_c − 1/C)²``, ``G = ∂L/∂W``, ``e_c = Var_d(G_{c,d}²)``, score ``max_c e_c / mean_c e_c``,
    which on the final layer is ``max_c (z_c − 1/C)⁴ / mean_c (z_c − 1/C)⁴`` wherever ``Var_d(h_d²) > 0``
    (NaN where it is 0, e.g. all-zero features), computed from the logits alone
    (:func:`mse_gradient_row_profile`): equal logits give bit-identical scores. The maximum runs over *all*
    rows: the winning row can be a strongly negative logit rather than the prediction (``docs/methods.md``).

    Examples:
        >>> gradtrust(torch.tensor([[2.5, -0.5]]), torch.tensor([[1.0, 2.0]]))  # (2⁴ + 1) / 2 → 16 / 8.5
        tensor([1.8824], dtype=torch.float64)
    """
    return _undefined_where_flat(gradtrust_from_row_energy(mse_gradient_row_profile(logits)), features)


def gradtrust_topk_parts(row_energy: torch.Tensor, logits: torch.Tensor, k: int | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Numerator ``e_ŷ`` and denominator ``mean_{c ∈ top-k after ŷ} e_c`` of :func:`gradtrust_topk_from_row_energy`
    (both (B,) float64); the rows must be the ``C ≥ 2`` classes.

    Examples:
        >>> gradtrust_topk_parts(torch.tensor([[4.0, 2.0, 1.0]]), torch.tensor([[3.0, 2.0, 1.0]]), k=2)
        (tensor([4.], dtype=torch.float64), tensor([1.5000], dtype=torch.float64))
    """
    z = _logits(logits)
    e = row_energy.double()
    c = z.shape[1]
    if c < 2 or e.shape[1] != c:
        raise InputError(f"gradtrust_topk needs one gradient row per class and C >= 2, got rows {tuple(e.shape)} "
                         f"for logits {tuple(z.shape)}")
    k = min(k or 10, c - 1)
    prediction = z.argmax(dim=1, keepdim=True)
    counterfactuals = z.scatter(1, prediction, float("-inf")).topk(k, dim=1).indices
    return e.gather(1, prediction).squeeze(1), e.gather(1, counterfactuals).mean(dim=1)


def gradtrust_topk_from_row_energy(row_energy: torch.Tensor, logits: torch.Tensor, k: int | None = None
                                   ) -> torch.Tensor:
    """``e_ŷ / mean_{c ∈ top-k after ŷ} e_c``: the predicted class's row energy over that of the ``k`` classes
    with the highest logits after ``ŷ`` (the counterfactual classes); ``k = min(k or 10, C − 1)``. NaN for
    fewer than two classes or rows that are not the classes.

    Examples:
        >>> gradtrust_topk_from_row_energy(torch.tensor([[4.0, 2.0, 1.0]]), torch.tensor([[3.0, 2.0, 1.0]]), k=1)
        tensor([2.], dtype=torch.float64)
    """
    if logits.shape[1] < 2 or row_energy.shape[1] != logits.shape[1]:
        return torch.full((logits.shape[0],), float("nan"), dtype=torch.float64, device=logits.device)
    numerator, denominator = gradtrust_topk_parts(row_energy, logits, k)
    return numerator / denominator


def gradtrust_topk(logits: torch.Tensor, features: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """GradTrust as the slides word it: "variance of gradients of the predicted class / mean of variance of
    gradients of the top-k counterfactual classes", on the final layer's closed form (see :func:`gradtrust`:
    a ratio of :func:`mse_gradient_row_profile` factors, NaN where ``Var_d(h_d²) = 0``); ``k = min(k or 10, C − 1)``.

    Examples:
        >>> gradtrust_topk(torch.tensor([[2.5, -0.5, 0.0]]), torch.tensor([[1.0, 2.0]]), k=1)
        tensor([1785.0625], dtype=torch.float64)
    """
    return _undefined_where_flat(gradtrust_topk_from_row_energy(mse_gradient_row_profile(logits), logits, k), features)


def uniform_ce_gradient_l1(logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """``‖∂L/∂W‖₁`` for ``L = −Σ_c u_c log p_c`` (cross-entropy against the uniform label) on the final layer:
    ``G = (p − u) hᵀ`` so ``‖G‖₁ = ‖p − u‖₁ · ‖h‖₁`` (Huang et al., NeurIPS 2021).

    Examples:
        >>> uniform_ce_gradient_l1(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, -2.0]]))
        tensor([0.], dtype=torch.float64)
    """
    z = _logits(logits)
    h = _features(features, z.shape[0])
    p = probabilities(z)
    return (p - 1.0 / z.shape[1]).abs().sum(dim=1) * h.abs().sum(dim=1)


def gradnorm(logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """GradNorm (Huang et al., NeurIPS 2021): ``‖∂L/∂W‖₁ = ‖p − u‖₁ · ‖h‖₁``, higher = more in-distribution.

    The GradTrust release used a negated L2 norm of a KL-divergence variant instead: a documented deviation
    (``docs/methods.md``). Defined for every finite sample; all-zero features give 0.

    Examples:
        >>> gradnorm(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]))
        tensor([0.9242], dtype=torch.float64)
    """
    return uniform_ce_gradient_l1(logits, features)
