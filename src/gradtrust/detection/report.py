"""Tables, figures and an HTML page for detection experiments (``gradtrust detect``)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from gradtrust.detection.metrics import roc_points

__all__ = ["auroc_table", "format_text_table", "profile_figure", "roc_figure", "write_html"]

DETECTORS_FIRST = ("purview_mlp", "purview_logistic", "mahalanobis")


def _method_order(methods: list[str]) -> list[str]:
    first = [m for m in DETECTORS_FIRST if m in methods]
    return first + [m for m in methods if m not in first]


def auroc_table(table: Any) -> Any:
    """AUROC (%) with rows = (model, challenge) and one column per method."""
    index = [c for c in ("model", "challenge") if c in table.columns]
    wide = table.pivot_table(index=index, columns="method", values="auroc", sort=False) * 100
    return wide[_method_order(list(wide.columns))]


def format_text_table(table: Any) -> str:
    """The printed table: AUROC (%) per method, then AUROC [95% CI], FPR@95%TPR and detection error (%) of
    the gradient-feature detector (the MLP if fitted, else logistic regression) and of Mahalanobis."""
    wide = auroc_table(table)
    lines = ["AUROC (%), known = positive; evaluated on held-out samples only", wide.round(1).to_string(), ""]
    detector = "purview_mlp" if (table["method"] == "purview_mlp").any() else "purview_logistic"
    detail = table[table["method"].isin([detector, "mahalanobis"])].copy()
    if len(detail):
        def cell(row: Any, name: str) -> str:
            return f"{100 * row[name]:5.1f} [{100 * row[name + '_low']:5.1f}, {100 * row[name + '_high']:5.1f}]"

        detail["AUROC [95% CI]"] = [cell(r, "auroc") for _, r in detail.iterrows()]
        detail["FPR@95TPR"] = (100 * detail["fpr_at_95tpr"]).round(1)
        detail["det. error"] = (100 * detail["detection_error"]).round(1)
        keep = [c for c in ("model", "challenge", "method") if c in detail.columns]
        lines += [f"Gradient-feature detector ({detector}) vs Mahalanobis (%, 95% bootstrap CI)",
                  detail[keep + ["AUROC [95% CI]", "FPR@95TPR", "det. error"]].to_string(index=False)]
    return "\n".join(lines)


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


def write_html(path: Path, title: str, text_table: str, full_table: Any, figures: list[Path],
               notes: list[str]) -> Path:
    """A self-contained page (figures referenced by relative path) with the tables and figures."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}"
             "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
             "pre{font-size:12px;background:#f6f6f6;padding:8px;overflow-x:auto}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    parts.append(f"<h2>Summary</h2><pre>{html.escape(text_table)}</pre>")
    for fig in figures:
        parts.append(f"<h2>{html.escape(fig.stem)}</h2><img src='{html.escape(fig.name)}' style='max-width:100%'>")
    parts.append("<h2>All metrics (fractions; _low/_high: 95% bootstrap interval)</h2>")
    parts.append(full_table.to_html(index=False, float_format=lambda v: f"{v:.4f}"))
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
