"""VOICE: the uncertainty of an explanation, from the variance of its contrastive explanations.

(Prabhushankar & AlRegib, "VOICE: Variance of Induced Contrastive Explanations to Quantify Uncertainty in Neural
Network Interpretability", IEEE JSTSP 2024; ``docs/explanations.md``.) For a prediction ``P``:

* explanation ``E`` = the normalised Grad-CAM map of ``P`` (input resolution);
* ``N_Q`` = the normalised Contrast-CAM map "Why P, rather than Q?" (upsampled, min-max per map) for every
  class ``Q ≠ P``;
* uncertainty ``U`` = the per-pixel unbiased variance of ``N_Q`` over the ``C − 1`` classes, min-max normalised;
* ``SNR = mean(U) / std(U)`` (population std; 0 when the std is 0);
* ``IoU = |U > τ ∧ E > τ| / |U > τ ∨ E > τ|`` (0 when both are empty), ``τ = 0.1`` by default.

**Exact, without materialising ``C`` input-resolution maps.** Upsampling is ``up(M) = R M Cᵀ`` (linear, rows of
``R`` and ``C`` sum to 1), so ``N_Q = up((M_Q − m_Q)/s_Q)`` with ``m_Q, s_Q`` the minimum and range of
``up(M_Q)``, found exactly on the run-end pixels (:class:`gradtrust.explanations.maps.Upsampler`). Then
``Σ_Q N_Q = up(Σ_Q Ñ_Q)`` and ``Σ_Q N_Q(i,j)²`` is a quadratic form of the layer-resolution Gram matrix
``Σ_Q vec(Ñ_Q) vec(Ñ_Q)ᵀ``, accumulated over chunks of classes in float64. With the closed-form weights the
whole computation costs one forward pass plus ``O(B·C·(K·h·w + (h·w)²))`` arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gradtrust.errors import InputError
from gradtrust.explanations.cams import Session, class_ids, prepare_images
from gradtrust.explanations.maps import Upsampler, minmax, upsample, weighted_map
from gradtrust.explanations.weights import DEFAULT_CHUNK_BYTES
from gradtrust.nn.model import as_module
from gradtrust.nn.state import scoring_state


@dataclass
class VoiceResult:
    """VOICE of one batch: ``uncertainty`` and ``explanation`` (B, H, W) float32 in [0, 1]; ``snr``, ``iou`` (B,)
    float64; ``target`` (B,) the explained class P; ``layer``; ``closed_form``; ``valid`` (finite logits)."""

    uncertainty: torch.Tensor
    explanation: torch.Tensor
    snr: torch.Tensor
    iou: torch.Tensor
    target: torch.Tensor
    logits: torch.Tensor
    layer: str
    threshold: float
    closed_form: bool
    valid: torch.Tensor


def snr_and_iou(uncertainty: torch.Tensor, explanation: torch.Tensor,
                threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``SNR = mean(U)/std(U)`` (population std, 0 when 0) and ``IoU`` of ``U > τ`` and ``E > τ`` (0 when
    the union is empty), per sample, float64."""
    u = uncertainty.double().flatten(1)
    mean, std = u.mean(1), u.std(1, unbiased=False)
    snr = torch.where(std > 0, mean / torch.where(std > 0, std, torch.ones_like(std)), torch.zeros_like(std))
    a, b = u > threshold, explanation.flatten(1) > threshold
    inter, union = (a & b).sum(1).double(), (a | b).sum(1).double()
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(union))
    return snr, iou


def voice(model, images, layer: str | None = None, threshold: float = 0.1, *, target=None,
          gradient_path: str = "auto", chunk_bytes: int = DEFAULT_CHUNK_BYTES,
          output_index: int | str | None = None) -> VoiceResult:
    """VOICE uncertainty maps and their SNR and IoU for a batch (see the module docstring for the formulas).

    ``threshold``: ``τ`` of the IoU, in [0, 1]; ``target``: the explained class P (default: the prediction);
    the other arguments as :func:`gradtrust.explain`.

    Cost on GAP heads: one forward pass (closed form); otherwise one forward pass and batched backwards over
    every class in chunks.
    """
    if not 0.0 <= float(threshold) <= 1.0:
        raise InputError(f"threshold must be in [0, 1] (maps are min-max normalised), got {threshold}.")
    module = as_module(model)
    x = prepare_images(module, images)
    with scoring_state(module, output_index=output_index):
        s = Session(module, x, layer, gradient_path, chunk_bytes)
        return voice_session(s, x, target, threshold)


def voice_session(s: Session, x: torch.Tensor, target=None, threshold: float = 0.1) -> VoiceResult:
    """:func:`voice` from an existing :class:`Session` (its forward pass and weights)."""
    batch, device = x.shape[0], s.logits.device
    if s.num_classes < 3:
        raise InputError(f"VOICE needs at least 3 classes (a variance over the C − 1 contrast classes); the "
                         f"model has {s.num_classes}.")
    p = s.logits.argmax(1) if target is None else class_ids(target, batch, s.num_classes, "target", device)
    size = (x.shape[-2], x.shape[-1])
    acts = s.cap.activations
    explanation = minmax(upsample(s.finish(weighted_map(s.weights.gradcam(p), acts)), size))

    layer_size = (acts.shape[-2], acts.shape[-1])
    hw = layer_size[0] * layer_size[1]
    up = Upsampler(layer_size, size, device)
    total = torch.zeros(batch, *layer_size, dtype=torch.float64, device=device)
    gram = torch.zeros(batch, hw, hw, dtype=torch.float64, device=device)
    for start, alpha in s.weights.contrast_all():
        maps = s.finish(weighted_map(alpha, acts))  # (B, c, h, w)
        lo, hi = up.range(maps)
        span = hi - lo
        keep = span > 0
        classes = torch.arange(start, start + maps.shape[1], device=device)
        keep &= classes[None, :] != p[:, None]  # Q ≠ P
        scale = torch.where(keep, 1.0 / torch.where(keep, span, torch.ones_like(span)), torch.zeros_like(span))
        normed = (maps.double() - lo[..., None, None]) * scale[..., None, None]  # (B, c, h, w), 0 when dropped
        total += normed.sum(1)
        flat = normed.flatten(2)
        gram += flat.transpose(1, 2) @ flat
    n = s.num_classes - 1
    mean = up.apply(total) / n  # (B, H, W)
    second = up.squared(gram)  # Σ_Q N_Q², (B, H, W)
    variance = ((second - n * mean.square()) / (n - 1)).clamp_min(0)
    variance = torch.where(s.valid[:, None, None], variance, torch.zeros_like(variance))
    uncertainty = minmax(variance).float()
    snr, iou = snr_and_iou(uncertainty, explanation, float(threshold))
    return VoiceResult(uncertainty=uncertainty, explanation=explanation, snr=snr.cpu(), iou=iou.cpu(), target=p,
                       logits=s.logits.float(), layer=s.spec.name, threshold=float(threshold),
                       closed_form=s.weights.closed_form, valid=s.valid)
