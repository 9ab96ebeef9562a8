"""``Pass.ODIN``: the logits of ODIN's perturbed input, ``odin_logits`` (Liang et al., ICLR 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gradtrust.errors import InputError
from gradtrust.nn.outputs import model_logits
from gradtrust.scores.options import parse_stds, positive
from gradtrust.scores.passes import BatchPasses
from gradtrust.scores.spec import Param, PassSpec


def odin_logits(ctx: BatchPasses) -> torch.Tensor:
    """Logits of ODIN's perturbed input ``x̃ = x − ε·sign(∇_x[−log softmax(f(x)/T)_ŷ])`` (B, C) float64.

    One backward pass to the input through the shared forward graph, one forward pass on ``x̃``.
    Source: Liang et al., ICLR 2018; defaults of the GradTrust release (docs/methods.md).
    """
    forward = ctx.graph_forward()
    z = forward.logits.float()
    log_p = F.log_softmax(z / ctx.options.odin_temperature, dim=1)
    loss = -log_p.gather(1, ctx.prediction.to(z.device).unsqueeze(1)).sum()
    grad = None  # stays None where the logits do not depend differentiably on the input: ODIN does not move it
    if loss.requires_grad:
        (grad,) = torch.autograd.grad(loss, forward.x, retain_graph=True, allow_unused=True)
    grad = torch.zeros_like(forward.x) if grad is None else grad
    perturbed = (forward.x.detach() - odin_step(ctx, forward.x) * grad.sign()).to(ctx.inputs.dtype)
    with torch.no_grad():
        return model_logits(ctx.model, perturbed).double()


def odin_step(ctx: BatchPasses, x: torch.Tensor) -> torch.Tensor | float:
    """ODIN's step on the model's input: ``ε`` (``odin_epsilon_space="input"``), or ``ε / σ_c`` per channel
    (``"pixel"``: ``ε`` in [0, 1] pixel units through the normalisation ``(x − μ) / σ``; Liang et al.,
    ICLR 2018, code release; docs/own_models.md)."""
    eps = ctx.options.odin_epsilon
    if ctx.options.odin_epsilon_space == "input":
        return eps
    std = parse_stds(ctx.options.odin_input_std)
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


ODIN = PassSpec(
    "ODIN", provides={"odin_logits": odin_logits},
    params=(
        Param("odin_temperature", float, 100.0, "ODIN's temperature T", positive),
        Param("odin_epsilon", float, 0.0014, "ODIN's perturbation size ε, in the units of odin_epsilon_space",
              lambda value: None if value >= 0 else "must be >= 0"),
        Param("odin_epsilon_space", str, "input", "'input': ε is a step on the tensor the model receives (the "
              "GradTrust release); 'pixel': ε in [0, 1] pixel units, the step on channel c is ε / σ_c "
              "(Liang et al.'s code, OpenOOD; needs odin_input_std)", choices=("input", "pixel")),
        Param("odin_input_std", str, None, "the normalisation std σ per channel ('0.229,0.224,0.225') for "
              "odin_epsilon_space='pixel'; gradtrust score fills it from the model's preprocessing",
              lambda value: None if parse_stds(value) is not None else "must be positive numbers, one per input channel"),
    ),
    needs_graph=True, module=__name__)
