"""VOICE's statistics as trust scores: ``voice_snr`` and ``voice_iou`` (higher = more trustworthy).

VOICE (Prabhushankar & AlRegib, IEEE JSTSP 2024; ``docs/explanations.md``) measures how uncertain the Grad-CAM
explanation of the prediction is. Whether that predicts a wrong prediction is an open question; registering
the two statistics lets ``gradtrust score``/``gradtrust benchmark`` measure it. Orientation:

* ``voice_snr`` = ``+SNR = mean(U)/std(U)``: a low SNR means the uncertainty is concentrated in a few regions
  — specific image regions where the contrastive explanations disagree — while a high SNR means it is
  spread evenly, with no region singled out as contested;
* ``voice_iou`` = ``1 − IoU(U > τ, E > τ)``: a high overlap means the very regions the explanation relies on
  are the contested ones.

Both need a spatial layer (the default one of :func:`gradtrust.explain`); models without one skip them with the
reason. Cost: one extra forward pass on GAP heads (closed form), otherwise a forward pass with a graph from the
layer on and batched backward passes over every class — only up to ``voice_max_backward_classes`` classes
(default 100), so that scoring a non-GAP ImageNet network with every method does not cost ~30 extra forward
passes; above it the scores are NaN with the reason (raise the option to compute them).
"""

from __future__ import annotations

import weakref

import torch

from gradtrust.errors import GradTrustError
from gradtrust.explanations.uncertainty import VoiceResult
from gradtrust.scores.registry import register_method
from gradtrust.scores.spec import MethodOutput, Param
from gradtrust.scores.view import BatchView

VOICE_LAYER = Param("voice_layer", str, None, "module whose activations VOICE explains; none = the default layer "
                    "of gradtrust.explain (the last spatial layer before global pooling)")
VOICE_THRESHOLD = Param("voice_threshold", float, 0.1, "τ of VOICE's IoU between U > τ and E > τ",
                        lambda t: None if 0.0 <= t <= 1.0 else "must be in [0, 1]")
VOICE_MAX_BACKWARD = Param(
    "voice_max_backward_classes", int, 100, "without the GAP + linear closed form, VOICE needs one backward per "
    "class: it runs only up to this many classes (larger: NaN with the reason)",
    lambda n: None if n >= 0 else "must be >= 0")
PARAMS = (VOICE_LAYER, VOICE_THRESHOLD, VOICE_MAX_BACKWARD)
SOURCE = "Prabhushankar & AlRegib, IEEE JSTSP 2024 (VOICE); docs/explanations.md"

# One entry: both statistics of a batch come from one VOICE computation. The key is the batch tensor itself
# and the model (both weakly held) and the settings.
_LAST: dict[str, object] = {}


def _voice(batch: BatchView):
    layer, threshold = batch.options.voice_layer, batch.options.voice_threshold
    limit = batch.options.voice_max_backward_classes
    key = (layer, threshold, limit, weakref.ref(batch.model))
    ref = _LAST.get("inputs")
    if ref is not None and ref() is batch.inputs and _LAST.get("key") == key:  # type: ignore[operator]
        return _LAST["result"]
    from gradtrust.explanations.cams import Session
    from gradtrust.explanations.uncertainty import voice_session

    s = Session(batch.model, batch.inputs, layer)  # the model is already in its scoring state
    result: VoiceResult | str
    if not s.weights.closed_form and s.num_classes > limit:
        result = (f"the layer does not feed global average pooling and a linear head, so VOICE needs "
                  f"{s.num_classes} backward passes (more than voice_max_backward_classes={limit})")
    else:
        result = voice_session(s, batch.inputs, None, threshold)
    _LAST.update(inputs=weakref.ref(batch.inputs), key=key, result=result)
    return result


def _applies(batch: BatchView) -> str | None:
    from gradtrust.explanations.layers import resolve_layer

    if batch.num_classes < 3:
        return "VOICE needs at least 3 classes"
    try:
        resolve_layer(batch.model, batch.inputs, batch.options.voice_layer)
    except GradTrustError as exc:
        return f"no spatial layer for VOICE: {exc}"
    if batch.inputs.dim() < 4:
        return "VOICE needs image or video inputs"
    return None


def _output(batch: BatchView, statistic: str) -> MethodOutput:
    result = _voice(batch)
    device = batch.logits.device
    if isinstance(result, str):  # too costly for this model: undefined for every sample, with the reason
        nan = torch.full((batch.batch_size,), float("nan"), dtype=torch.float64, device=device)
        return MethodOutput(nan, {result: torch.ones(batch.batch_size, dtype=torch.bool, device=device)})
    values = result.snr if statistic == "snr" else 1.0 - result.iou
    return MethodOutput(values.to(device, torch.float64), {"non-finite logits": ~result.valid.to(device)})


@register_method("voice_snr", display_name="VOICE SNR", params=PARAMS, applies=_applies, source=SOURCE)
def voice_snr_score(batch: BatchView) -> MethodOutput:
    """``SNR = mean(U)/std(U)`` of the VOICE uncertainty map ``U`` (higher = uncertainty spread evenly)."""
    return _output(batch, "snr")


@register_method("voice_iou", display_name="VOICE 1 − IoU", params=PARAMS, applies=_applies, source=SOURCE)
def voice_iou_score(batch: BatchView) -> MethodOutput:
    """``1 − IoU(U > τ, E > τ)`` of VOICE's uncertainty ``U`` and explanation ``E`` (higher = less overlap)."""
    return _output(batch, "iou")
