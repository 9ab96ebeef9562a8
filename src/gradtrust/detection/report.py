"""Figures of detection experiments (``gradtrust detect``) drawn from what only the run has in memory (per-layer
gradient features, ROC curves). Its tables and its section of the HTML report are
:mod:`gradtrust.reporting.detection` (read from the run folder, without torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gradtrust.detection.metrics import roc_points

__all__ = ["profile_figure", "roc_figure"]

#: Drawn in every ROC panel (as gradtrust.reporting.detection orders them; detection cannot import it).
DETECTORS_FIRST = ("purview_mlp", "purview_logistic", "mahalanobis")


def _layer_profile(grad: np.ndarray, layer_index: np.ndarray, n_layers: int) -> np.ndarray:
    per_layer = np.zeros((grad.shape[0], n_layers))
    np.add.at(per_layer.T, layer_index, grad.T)
    return np.log10(np.median(per_layer, axis=0) + 1e-30)


def profile_figure(sets: dict[str, dict[str, np.ndarray]], layer_of_column: list[str], path: Path,
                   title: str) -> Path:
    """Median per-layer ``log10 ‖∂J/∂θ_l‖²`` over evaluation samples: known data vs each challenge (at its
    strongest level), as the seed's "squared L2 distances for different parameter sets"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(dict.fromkeys(layer_of_column))
    index = np.array([layers.index(c) for c in layer_of_column])
    chosen = _strongest(sets)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(layers) + 3), 4.2))
    x = np.arange(len(layers))
    known = sets["known"]
    ax.plot(x, _layer_profile(known["grad"][~known["fit"]], index, len(layers)), "k-o", lw=2.5, ms=4,
            label="known (clean)")
    cmap = plt.get_cmap("tab10")
    for i, key in enumerate(chosen):
        data = sets[key]
        ax.plot(x, _layer_profile(data["grad"][~data["fit"]], index, len(layers)), "-o", ms=3, lw=1.3,
                color=cmap(i % 10), label=key)
    ax.set_xticks(x)
    ax.set_xticklabels(layers, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("median log10 ‖∂J/∂θ_layer‖²")
    ax.set_xlabel("layer (input → output)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _strongest(sets: dict[str, Any]) -> list[str]:
    """Challenge keys, keeping only the highest level of each corruption."""
    best: dict[str, tuple[int, str]] = {}
    for key in sets:
        if key == "known":
            continue
        group, _, level = key.partition(":")
        lv = int(level) if level.isdigit() else 0
        if group == "ood":
            group = key
        if group not in best or lv > best[group][0]:
            best[group] = (lv, key)
    return [key for _, key in best.values()]


def roc_figure(curves: dict[str, tuple[dict[str, np.ndarray], np.ndarray]], table: Any, path: Path,
               title: str) -> Path:
    """ROC curves (known = positive) of the detectors, Mahalanobis and the best scalar baseline per challenge
    (corruptions at their strongest level)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = _strongest({"known": None, **curves})
    cols = min(4, len(keys))
    rows = int(np.ceil(len(keys) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.1 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        scores, is_known = curves[key]
        sub = table[table["challenge"] == key].set_index("method")["auroc"]
        scalar = [m for m in sub.index if m not in DETECTORS_FIRST]
        shown = [m for m in DETECTORS_FIRST if m in scores]
        if scalar:
            shown.append(str(sub[scalar].idxmax()))
        for m in shown:
            fpr, tpr = roc_points(scores[m], is_known)
            ax.plot(fpr, tpr, lw=1.4, label=f"{m} {100 * sub[m]:.1f}")
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("FPR (challenge accepted)", fontsize=7)
        ax.set_ylabel("TPR (known accepted)", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="lower right")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
