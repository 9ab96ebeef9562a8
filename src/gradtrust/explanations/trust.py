"""VOICE's statistics as trust scores: the pass ``Pass.VOICE`` and the methods ``voice_snr`` and ``voice_iou``
(higher = more trustworthy). This package joins the scores engine the way a plug-in does: through its
``gradtrust.methods`` entry point (pyproject.toml), which the registry loads after the built-in methods.

VOICE (Prabhushankar & AlRegib, IEEE JSTSP 2024; ``docs/explanations.md``) measures how uncertain the Grad-CAM
explanation of the prediction is. Whether that predicts a wrong prediction is an open question; registering
the two statistics lets ``gradtrust score``/``gradtrust benchmark`` measure it. Orientation:

* ``voice_snr`` = ``+SNR = mean(U)/std(U)``: a low SNR means the uncertainty is concentrated in a few regions
  — specific image regions where the contrastive explanations disagree — while a high SNR means it is
  spread evenly, with no region singled out as contested;
* ``voice_iou`` = ``1 − IoU(U > τ, E > τ)``: a high overlap means the very regions the explanation relies on
  are the contested ones.

Both read one VOICE computation per batch (the pass's per-batch memo) and need a spatial layer (the default one
of :func:`gradtrust.explain`); models without one skip them with the reason. Cost: that of
:func:`gradtrust.voice`, but without the closed form only up to ``voice_max_backward_classes`` classes (default
100), so that scoring a non-GAP ImageNet network with every method does not cost ~30 extra forward passes; above
it the scores are NaN with the reason (raise the option to compute them).
"""

from __future__ import annotations

import torch

from gradtrust.errors import GradTrustError
from gradtrust.explanations.cams import Session, gradient_reaches_logits, no_gradient_reason
from gradtrust.explanations.layers import resolve_layer
from gradtrust.explanations.uncertainty import VoiceResult, voice_session
from gradtrust.scores import BatchView, MethodOutput, Param, PassSpec, register_method, register_pass
from gradtrust.scores.passes import BatchPasses

VOICE_LAYER = Param("voice_layer", str, None, "module whose activations VOICE explains; none = the default layer "
                    "of gradtrust.explain (the last spatial layer before global pooling)")
VOICE_THRESHOLD = Param("voice_threshold", float, 0.1, "τ of VOICE's IoU between U > τ and E > τ",
                        lambda t: None if 0.0 <= t <= 1.0 else "must be in [0, 1]")
VOICE_MAX_BACKWARD = Param(
    "voice_max_backward_classes", int, 100, "without the GAP + linear closed form, VOICE needs one backward per "
    "class: it runs only up to this many classes (larger: NaN with the reason)",
    lambda n: None if n >= 0 else "must be >= 0")
SOURCE = "Prabhushankar & AlRegib, IEEE JSTSP 2024 (VOICE); docs/explanations.md"


def voice_of_batch(ctx: BatchPasses) -> VoiceResult | str:
    """VOICE of the batch's prediction (:func:`gradtrust.explanations.uncertainty.voice_session`), or the reason
    it is not computed (more backward passes than ``voice_max_backward_classes``)."""
    layer, limit = ctx.options.voice_layer, ctx.options.voice_max_backward_classes
    s = Session(ctx.model, ctx.inputs, layer)  # the model is already in its scoring state
    if not s.weights.closed_form and s.num_classes > limit:
        return (f"the layer does not feed global average pooling and a linear head, so VOICE needs "
                f"{s.num_classes} backward passes (more than voice_max_backward_classes={limit})")
    return voice_session(s, ctx.inputs, None, ctx.options.voice_threshold)


def _no_spatial_layer(ctx: BatchPasses) -> str | None:
    if ctx.num_classes < 3:
        return "VOICE needs at least 3 classes"
    try:
        resolve_layer(ctx.model, ctx.inputs, ctx.options.voice_layer)
    except GradTrustError as exc:
        return f"no spatial layer for VOICE: {exc}"
    if ctx.inputs.dim() < 4:
        return "VOICE needs image or video inputs"
    if not gradient_reaches_logits(ctx.model, ctx.inputs, ctx.options.voice_layer):
        return f"VOICE needs gradients: {no_gradient_reason(resolve_layer(ctx.model, ctx.inputs, ctx.options.voice_layer).name)}"
    return None


VOICE = register_pass(PassSpec(
    "VOICE", provides={"voice": voice_of_batch},
    params=(VOICE_LAYER, VOICE_THRESHOLD, VOICE_MAX_BACKWARD), unavailable=_no_spatial_layer, module=__name__))


def _output(batch: BatchView, statistic: str) -> MethodOutput:
    result = batch.voice
    device = batch.logits.device
    if isinstance(result, str):  # too costly for this model: undefined for every sample, with the reason
        nan = torch.full((batch.batch_size,), float("nan"), dtype=torch.float64, device=device)
        return MethodOutput(nan, {result: torch.ones(batch.batch_size, dtype=torch.bool, device=device)})
    values = result.snr if statistic == "snr" else 1.0 - result.iou
    return MethodOutput(values.to(device, torch.float64), {"non-finite logits": ~result.valid.to(device)})


@register_method("voice_snr", needs=(VOICE,), source=SOURCE)
def voice_snr_score(batch: BatchView) -> MethodOutput:
    """``SNR = mean(U)/std(U)`` of the VOICE uncertainty map ``U`` (higher = uncertainty spread evenly)."""
    return _output(batch, "snr")


@register_method("voice_iou", needs=(VOICE,), source=SOURCE)
def voice_iou_score(batch: BatchView) -> MethodOutput:
    """``1 − IoU(U > τ, E > τ)`` of VOICE's uncertainty ``U`` and explanation ``E`` (higher = less overlap)."""
    return _output(batch, "iou")
