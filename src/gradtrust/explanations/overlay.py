"""PNG overlays of explanations: the map in a perceptual colour map (``inferno``, with a colour bar) over the image,
with the class names of P and Q in the titles and the true class over the image (``docs/explanations.md``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

TITLES = {"gradcam": "Why {p}?", "counterfactual": "What if not {p}?", "contrast": "Why {p}, not {q}?",
          "occlusion": "Occlusion: {p}", "rise": "RISE: {p}", "shape": "SHAPE: {p}", "voice": "VOICE uncertainty"}
COLORMAP = "inferno"


def displayable(image: torch.Tensor) -> np.ndarray:
    """A preprocessed input (C, H, W) or clip (C, T, H, W) as an (H, W, 3) array in [0, 1] for display: the
    middle frame of a clip, min-max stretched with ONE range for all channels, so the colours keep their balance (a
    per-channel stretch turns a red image into noise; the model's normalisation is undone up to one scale)."""
    x = image.detach().float().cpu()
    if x.dim() == 4:
        x = x[:, x.shape[1] // 2]
    if x.shape[0] == 1:
        x = x.expand(3, *x.shape[1:])
    x = x[:3]
    lo, hi = x.min(), x.max()
    x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    return x.permute(1, 2, 0).numpy()


def overlay_panel(ax, image: np.ndarray, heat: np.ndarray | None, title: str, alpha: float = 0.55) -> Any:
    """The image with ``heat`` in [0, 1] over it; returns the heat layer (for a colour bar) or None."""
    ax.imshow(image, interpolation="nearest")
    layer = None
    if heat is not None:
        layer = ax.imshow(heat, cmap=COLORMAP, vmin=0.0, vmax=1.0, alpha=alpha, interpolation="bilinear")
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()
    return layer


def save_overlay(path: Path, image: torch.Tensor, maps: dict[str, np.ndarray], p_name: str, q_name: str | None,
                 caption: str = "", true_name: str | None = None) -> None:
    """One row: the image (titled with the prediction and, when known, the true class), then each map (``gradcam``,
    ``counterfactual``, ``contrast``, ``occlusion``, ``rise``, ``shape``, ``voice``) over it, and a colour bar
    of the map scale (0 = least, 1 = most relevant after per-image min-max normalisation)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    picture = displayable(image)
    names: Sequence[str] = [m for m in TITLES if m in maps]
    fig, axes = plt.subplots(1, 1 + len(names), figsize=(2.2 * (1 + len(names)) + 0.6, 2.6), squeeze=False)
    head = f"predicted: {_short(p_name)}" + (f"\ntrue: {_short(true_name)}" if true_name is not None else "")
    overlay_panel(axes[0, 0], picture, None, head)
    layer = None
    for ax, name in zip(axes[0, 1:], names, strict=True):
        title = TITLES[name].format(p=_short(p_name), q=_short(q_name or "?"))
        empty = not np.any(maps[name] > 0)  # a ReLU'd map with nothing left: say so rather than show black
        layer = overlay_panel(ax, picture, maps[name], title + ("\n(empty map)" if empty else "")) or layer
    if caption:
        fig.suptitle(caption, fontsize=8, y=0.02, va="bottom")
    fig.tight_layout(rect=(0, 0.06 if caption else 0, 0.93 if layer is not None else 1, 1))
    if layer is not None:  # its own axis right of the panels, so no panel is squeezed
        bar = fig.colorbar(layer, cax=fig.add_axes((0.945, 0.18, 0.012, 0.64)))
        bar.set_label("relevance (per-image min-max)", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _short(name: str, limit: int = 18) -> str:
    name = name.split(",")[0].strip()
    return name if len(name) <= limit else name[:limit - 1] + "…"
