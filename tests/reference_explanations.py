"""The straightforward per-image, per-class restatement of the maps and of VOICE: one forward and one backward per
map, as the Explanatory-Paradigms and VOICE releases compute them (Prabhushankar & AlRegib, IEEE SPM 2022 and
IEEE JSTSP 2024; ``docs/explanations.md``). Slow by design: tests and ``benchmarks/bench_explain.py`` compare the
batched implementation with it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from gradtrust.explanations.layers import LayerSpec
from gradtrust.nn.outputs import model_logits
from gradtrust.nn.state import scoring_state


def _normalise(m: torch.Tensor) -> torch.Tensor:
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m)


def reference_map(module: nn.Module, image: torch.Tensor, spec: LayerSpec, method: str, target: int,
                  contrast: int | None = None) -> torch.Tensor:
    """One layer-resolution map (h, w) of one image ``(C, H, W)``/``(C, T, H, W)`` by hooks and ``.backward()``:
    the objectives and maps of :mod:`gradtrust.explanations.cams`; video maps are averaged over time before the ReLU.
    """
    layer = module.get_submodule(spec.name)
    store: dict[str, torch.Tensor] = {}

    def hook(mod, args, out):
        out = out.clone()  # an in-place op downstream must not touch what we keep
        out.retain_grad()
        store["a"] = out
        return out

    with scoring_state(module):
        handle = layer.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                x = image[None].detach().requires_grad_(True)  # so that the layer output has a graph
                z = model_logits(module, x)
                if method == "contrast":
                    assert contrast is not None
                    objective = F.cross_entropy(z.float(), torch.tensor([contrast], device=z.device))
                else:
                    objective = z[0, target]
                objective.backward()
        finally:
            handle.remove()
    grad = store["a"].grad
    assert grad is not None
    a = spec.canonical(store["a"].detach()).float()[0]
    g = spec.canonical(grad).float()[0]
    alpha = g.flatten(1).mean(1)
    sign = -1.0 if method == "counterfactual" else 1.0
    cam = sign * torch.einsum("k,k...->...", alpha, a)
    if cam.dim() == 3:
        cam = cam.mean(0)
    return cam.clamp_min(0)


def upsample_normalise(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling to ``size`` and min-max normalisation of one (h, w) map."""
    up = F.interpolate(cam[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    return _normalise(up)


def reference_voice(module: nn.Module, image: torch.Tensor, spec: LayerSpec, target: int,
                    threshold: float = 0.1) -> tuple[torch.Tensor, float, float]:
    """VOICE of one image by the loop over all ``C − 1`` contrast classes at input resolution (float64).

    Returns ``(U (H, W), SNR, IoU)`` as defined in :mod:`gradtrust.explanations.uncertainty`.
    """
    with scoring_state(module), torch.no_grad():
        num_classes = model_logits(module, image[None]).shape[1]
    size = (image.shape[-2], image.shape[-1])
    explanation = upsample_normalise(reference_map(module, image, spec, "gradcam", target), size).double()
    maps = [upsample_normalise(reference_map(module, image, spec, "contrast", target, q), size).double()
            for q in range(num_classes) if q != target]
    u = _normalise(torch.stack(maps).var(0, unbiased=True))
    std = u.std(unbiased=False)
    snr = float(u.mean() / std) if std > 0 else 0.0
    a, b = u > threshold, explanation > threshold
    union = int((a | b).sum())
    iou = int((a & b).sum()) / union if union else 0.0
    return u, snr, iou
