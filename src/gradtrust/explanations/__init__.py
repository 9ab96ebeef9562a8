"""Explanations: Grad-CAM ("Why P?"), Counterfactual-CAM ("What if not P?"), Contrast-CAM ("Why P, rather than
Q?") and VOICE (how uncertain an explanation is) — batched, every class at once (``docs/explanations.md``).

>>> ex = gradtrust.explain(model, images)                 # doctest: +SKIP
>>> ex["gradcam"], ex["counterfactual"], ex["contrast"]   # (B, H, W) in [0, 1]
>>> v = gradtrust.voice(model, images)                    # doctest: +SKIP
>>> v.uncertainty, v.snr, v.iou
"""

from gradtrust.explanations.cams import METHODS, QUESTIONS, Explanation, explain
from gradtrust.explanations.layers import LayerSpec, resolve_layer
from gradtrust.explanations.uncertainty import VoiceResult, snr_and_iou, voice

__all__ = ["METHODS", "QUESTIONS", "Explanation", "LayerSpec", "VoiceResult", "explain", "resolve_layer",
           "snr_and_iou", "voice"]
