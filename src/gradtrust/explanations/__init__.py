"""Explanations: Grad-CAM ("Why P?"), Counterfactual-CAM ("What if not P?"), Contrast-CAM ("Why P, rather than
Q?") and VOICE (how uncertain an explanation is), the interventions occlusion, RISE and SHAPE, and
``evaluate_explanations`` (judging any map by masking) — batched, every class at once (``docs/explanations.md``).

>>> ex = gradtrust.explain(model, images)                 # doctest: +SKIP
>>> ex["gradcam"], ex["counterfactual"], ex["contrast"]   # (B, H, W) in [0, 1]
>>> v = gradtrust.voice(model, images)                    # doctest: +SKIP
>>> v.uncertainty, v.snr, v.iou
>>> ex = gradtrust.explain(model, images, methods="occlusion,rise,shape")  # doctest: +SKIP
>>> table = gradtrust.evaluate_explanations(model, images, ex)            # doctest: +SKIP
"""

from gradtrust.explanations.cams import CAM_METHODS, METHODS, QUESTIONS, Explanation, explain
from gradtrust.explanations.evaluate import evaluate_explanations
from gradtrust.explanations.layers import LayerSpec, resolve_layer
from gradtrust.explanations.perturbation import PERTURBATION_METHODS, PerturbationOptions
from gradtrust.explanations.uncertainty import VoiceResult, snr_and_iou, voice

__all__ = [
    "CAM_METHODS",
    "METHODS",
    "PERTURBATION_METHODS",
    "PerturbationOptions",
    "QUESTIONS",
    "Explanation",
    "LayerSpec",
    "VoiceResult",
    "evaluate_explanations",
    "explain",
    "resolve_layer",
    "snr_and_iou",
    "voice",
]
