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
layer on and batched backward passes over every class.
"""

from __future__ import annotations

import weakref

import torch

from gradtrust.errors import GradTrustError
from gradtrust.scores.registry import register_method
from gradtrust.scores.spec import MethodOutput, Param
from gradtrust.scores.view import BatchView

VOICE_LAYER = Param("voice_layer", str, None, "module whose activations VOICE explains; none = the default layer "
                    "of gradtrust.explain (the last spatial layer before global pooling)")
VOICE_THRESHOLD = Param("voice_threshold", float, 0.1, "τ of VOICE's IoU between U > τ and E > τ",
                        lambda t: None if 0.0 <= t <= 1.0 else "must be in [0, 1]")
SOURCE = "Prabhushankar & AlRegib, IEEE JSTSP 2024 (VOICE); docs/explanations.md"

# One entry: both statistics of a batch come from one VOICE computation. The key is the batch tensor itself
# (weakly held, so nothing outlives the batch) and the two settings.
_LAST: dict[str, object] = {}


def _voice(batch: BatchView):
    layer, threshold = batch.options.voice_layer, batch.options.voice_threshold
    ref = _LAST.get("inputs")
    if ref is not None and ref() is batch.inputs and _LAST.get("key") == (layer, threshold):  # type: ignore[operator]
        return _LAST["result"]
    from gradtrust.explanations.cams import Session
    from gradtrust.explanations.uncertainty import voice_session

    s = Session(batch.model, batch.inputs, layer)  # the model is already in its scoring state
    result = voice_session(s, batch.inputs, None, threshold)
    _LAST.update(inputs=weakref.ref(batch.inputs), key=(layer, threshold), result=result)
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


def _undefined(batch: BatchView, result) -> dict[str, torch.Tensor]:
    return {"non-finite logits": ~result.valid.to(batch.logits.device)}


@register_method("voice_snr", display_name="VOICE SNR", params=(VOICE_LAYER, VOICE_THRESHOLD), applies=_applies,
                 source=SOURCE)
def voice_snr_score(batch: BatchView) -> MethodOutput:
    """``SNR = mean(U)/std(U)`` of the VOICE uncertainty map ``U`` (higher = uncertainty spread evenly)."""
    result = _voice(batch)
    return MethodOutput(result.snr.to(batch.logits.device, torch.float64), _undefined(batch, result))


@register_method("voice_iou", display_name="VOICE 1 − IoU", params=(VOICE_LAYER, VOICE_THRESHOLD),
                 applies=_applies, source=SOURCE)
def voice_iou_score(batch: BatchView) -> MethodOutput:
    """``1 − IoU(U > τ, E > τ)`` of VOICE's uncertainty ``U`` and explanation ``E`` (higher = less overlap)."""
    result = _voice(batch)
    return MethodOutput(1.0 - result.iou.to(batch.logits.device, torch.float64), _undefined(batch, result))
