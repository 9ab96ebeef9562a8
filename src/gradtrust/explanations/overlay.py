"""PNG overlays of explanations: the map in a perceptual colour map (``inferno``) over the image, with the class
names of P and Q in the titles (``docs/explanations.md``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

TITLES = {"gradcam": "Why {p}?", "counterfactual": "What if not {p}?", "contrast": "Why {p}, not {q}?",
          "voice": "VOICE uncertainty"}
COLORMAP = "inferno"


def displayable(image: torch.Tensor) -> np.ndarray:
    """A preprocessed input (C, H, W) or clip (C, T, H, W) as an (H, W, 3) array in [0, 1] for display: the
    middle frame of a clip, each channel min-max stretched (the model's normalisation undone up to scale)."""
    x = image.detach().float().cpu()
    if x.dim() == 4:
        x = x[:, x.shape[1] // 2]
    if x.shape[0] == 1:
        x = x.expand(3, *x.shape[1:])
    x = x[:3]
    lo = x.flatten(1).amin(1)[:, None, None]
    hi = x.flatten(1).amax(1)[:, None, None]
    x = (x - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    return x.permute(1, 2, 0).numpy()


def overlay_panel(ax, image: np.ndarray, heat: np.ndarray | None, title: str, alpha: float = 0.55) -> None:
    ax.imshow(image, interpolation="nearest")
    if heat is not None:
        ax.imshow(heat, cmap=COLORMAP, vmin=0.0, vmax=1.0, alpha=alpha, interpolation="bilinear")
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def save_overlay(path: Path, image: torch.Tensor, maps: dict[str, np.ndarray], p_name: str, q_name: str | None,
                 caption: str = "") -> None:
    """One row: the image, then each map (``gradcam``, ``counterfactual``, ``contrast``, ``voice``) over it."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    picture = displayable(image)
    names: Sequence[str] = [m for m in TITLES if m in maps]
    fig, axes = plt.subplots(1, 1 + len(names), figsize=(2.2 * (1 + len(names)), 2.5), squeeze=False)
    overlay_panel(axes[0, 0], picture, None, f"predicted: {_short(p_name)}")
    for ax, name in zip(axes[0, 1:], names, strict=True):
        title = TITLES[name].format(p=_short(p_name), q=_short(q_name or "?"))
        empty = not np.any(maps[name] > 0)  # a ReLU'd map with nothing left: say so rather than show black
        overlay_panel(ax, picture, maps[name], title + ("\n(empty map)" if empty else ""))
    if caption:
        fig.suptitle(caption, fontsize=8, y=0.02, va="bottom")
    fig.tight_layout(rect=(0, 0.06 if caption else 0, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _short(name: str, limit: int = 18) -> str:
    name = name.split(",")[0].strip()
    return name if len(name) <= limit else name[:limit - 1] + "…"
