"""The report's figures (PNG, drawn with matplotlib's Agg canvas; pyplot's global state is never touched):
the curves, the concept scatter and the qualitative grid of each run.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gradtrust.catalogue import display_name, known_methods
from gradtrust.errors import UnknownNameError
from gradtrust.reporting.datasets import dataset_description, dataset_fields
from gradtrust.reporting.layout import fit_canvas
from gradtrust.reporting.results import RunResult
from gradtrust.reporting.runs import Run

__all__ = ["Quadrants", "draw_curves", "load_sample_image", "qualitative_figure", "scatter_figure"]

_DPI = 110
_DIGITS_PATH = re.compile(r"^digits/(train|test)/([A-Za-z_]+)/(\d+)$")
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                   ".pbm", ".pnm"}


def new_figure(width: float, height: float):
    """A matplotlib figure of ``width`` × ``height`` inches at the report's resolution, on the Agg canvas
    (no display, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG at the report's resolution (its folder created); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=_DPI)  # layouts are fixed by tight_layout (cheaper than bbox "tight")
    return path


def method_style(method: str) -> dict[str, Any]:
    """A stable style per method: GradTrust thick black, its top-k variant dashed grey; the others thin,
    each a distinct (colour, line style) pair: tab10's ten colours, then again dashed, dash-dotted, dotted
    (by registry order), so that a legend of ~18 methods stays mappable."""
    import matplotlib

    if method == "gradtrust":
        return {"color": "black", "linewidth": 2.4, "zorder": 5}
    if method == "gradtrust_topk":
        return {"color": "0.35", "linewidth": 1.8, "linestyle": "--", "zorder": 4}
    cmap = matplotlib.colormaps["tab10"]
    others = [m for m in known_methods() if m not in ("gradtrust", "gradtrust_topk")]
    k = others.index(method) if method in others else len(others) + (hash(method) % 6)
    return {"color": cmap(k % 10), "linestyle": ("-", "--", "-.", ":")[(k // 10) % 4], "linewidth": 1.1,
            "alpha": 0.85, "zorder": 3}


#: How the best method of a panel is drawn over its own style (and named in the panel).
BEST_STYLE = {"linewidth": 2.6, "alpha": 1.0, "zorder": 6}


def draw_curves(results: Sequence[RunResult], kind: str = "accuracy") -> Any:
    """Accuracy (``kind="accuracy"``) or macro-F1 (``kind="f1"``) vs. percentile, one panel per run: the figure,
    sized from its content (legend and title included)."""
    if kind not in ("accuracy", "f1"):
        raise UnknownNameError(f"kind must be 'accuracy' or 'f1', got {kind!r}")
    n = len(results)
    ncols = min(4, max(1, n))
    nrows = math.ceil(n / ncols)
    # At least 6.8 in wide: the legend (up to ~17 methods and references) and the title need it even for
    # one run; fit_canvas then grows the canvas if anything still sticks out.
    width = max(3.6 * ncols, 6.8)
    fig = new_figure(width, 2.9 * nrows + 0.9)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    from matplotlib.lines import Line2D

    q = np.arange(100)
    seen: dict[str, Any] = {}
    for ax, r in zip(axes, results, strict=False):
        curves = r.accuracy_curves if kind == "accuracy" else r.f1_curves
        metric = "auac" if kind == "accuracy" else "aufc"
        areas = {m: r.value(m, metric) for m in curves if np.isfinite(r.value(m, metric))}
        best = max(areas, key=lambda m: areas[m]) if areas else None
        for method in sorted(curves, key=lambda m: (m == best, m == "gradtrust")):  # the best, GradTrust last
            style = method_style(method) | (BEST_STYLE if method == best and method != "gradtrust" else {})
            ax.plot(q, 100 * curves[method], label=display_name(method), **style)
            # the legend shows each method's own style (a proxy), not the thick line of a panel's best
            seen.setdefault(display_name(method), Line2D([], [], **method_style(method)))
        if best is not None:  # named in the panel; thick in its own colour
            ax.text(0.02, 0.03, f"best here: {display_name(best)} ({metric.upper()} {areas[best]:.1f})",
                    transform=ax.transAxes, fontsize=7, fontweight="bold", va="bottom",
                    color=method_style(best)["color"], bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0})
        if kind == "accuracy" and r.run.n:
            a = r.accuracy
            (rl,) = ax.plot(q, np.full(100, 100 * a), color="0.5", linestyle=":", linewidth=1.2,
                            label="random (reference)")
            oracle = np.minimum(1.0, a / np.maximum(1e-12, 1 - q / 100.0)) if a > 0 else np.zeros(100)
            (ol,) = ax.plot(q, 100 * oracle, color="0.5", linestyle="-.", linewidth=1.2,
                            label="oracle (reference)")
            seen.setdefault("random (reference)", rl)
            seen.setdefault("oracle (reference)", ol)
        ax.set_title(f"{r.name}\naccuracy {100 * r.accuracy:.1f}%, n = {r.run.n}", fontsize=8.5)
        ax.set_xlim(0, 99)
        ax.set_xlabel("percentile of the trust score (samples below it rejected)", fontsize=7)
        ax.set_ylabel("accuracy of the rest (%)" if kind == "accuracy" else "macro F1 of the rest (%)",
                      fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[n:]:
        ax.set_visible(False)
    title = "Accuracy" if kind == "accuracy" else "Macro F1"
    fig.suptitle(f"{title} vs. percentile (area under the curve = {'AUAC' if kind == 'accuracy' else 'AUFC'})",
                 fontsize=11)
    registry = {display_name(m): k for k, m in enumerate(known_methods())}  # GradTrust, then registry order
    order = sorted(seen, key=lambda name: (name != display_name("gradtrust"), "reference" in name,
                                           registry.get(name, len(registry))))
    legend = fig.legend([seen[name] for name in order], order, loc="lower center",
                        ncol=max(1, min(6, len(seen), int(width // 1.7))), fontsize=7.5, frameon=False,
                        bbox_to_anchor=(0.5, 0.0))

    def relayout(f) -> None:
        """Keep the measured height of the legend (bottom) free of axes."""
        renderer = f.canvas.get_renderer()
        height = f.get_size_inches()[1]
        legend_h = legend.get_window_extent(renderer).height / f.dpi
        f.tight_layout(rect=(0, min(0.5, (legend_h + 0.08) / height), 1, 1))  # it makes room for the suptitle

    # Height from content: the panels keep their 2.9 in each, plus the legend's and the title's measured height.
    renderer = fig.canvas.get_renderer()
    extra = (legend.get_window_extent(renderer).height + fig._suptitle.get_window_extent(renderer).height) / fig.dpi
    fig.set_size_inches(width, 2.9 * nrows + extra + 0.5, forward=False)
    fit_canvas(fig, relayout)
    return fig


@dataclass
class Quadrants:
    """Counts of the concept figure, split at the medians: ``(wrong, total)`` per quadrant."""

    x_median: float
    y_median: float
    low_x_high_y: tuple[int, int]   # top left: low GradTrust, high softmax
    high_x_high_y: tuple[int, int]  # top right
    low_x_low_y: tuple[int, int]    # bottom left
    high_x_low_y: tuple[int, int]   # bottom right: high GradTrust, low softmax
    dropped: int = 0                # samples with a NaN in either score

    def as_dict(self) -> dict[str, Any]:
        return {
            "x_median": self.x_median, "y_median": self.y_median,
            "low_gradtrust_high_softmax": self.low_x_high_y, "high_gradtrust_high_softmax": self.high_x_high_y,
            "low_gradtrust_low_softmax": self.low_x_low_y, "high_gradtrust_low_softmax": self.high_x_low_y,
            "dropped_nan": self.dropped,
        }


def quadrant_counts(x: np.ndarray, y: np.ndarray, correct: np.ndarray) -> Quadrants:
    """Wrong / total per quadrant, split at the medians (a value equal to the median counts as high)."""
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y, c = x[ok], y[ok], correct[ok]
    xm, ym = (float(np.median(x)), float(np.median(y))) if x.size else (float("nan"), float("nan"))
    hx, hy = x >= xm, y >= ym

    def count(mask: np.ndarray) -> tuple[int, int]:
        return int((mask & ~c).sum()), int(mask.sum())

    return Quadrants(xm, ym, count(~hx & hy), count(hx & hy), count(~hx & ~hy), count(hx & ~hy),
                     int((~ok).sum()))


def scatter_figure(result: RunResult, path: Path, x_method: str = "gradtrust",
                   y_method: str = "softmax") -> Quadrants | None:
    """The concept figure of one run; None (nothing drawn) when either score is missing."""
    run = result.run
    if x_method not in run.methods or y_method not in run.methods:
        return None
    x, y, c = run.scores(x_method), run.scores(y_method), run.correct
    quad = quadrant_counts(x, y, c)
    ok = ~(np.isnan(x) | np.isnan(y))
    fig = new_figure(5.6, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    size = 10 if ok.sum() < 3000 else 3
    ax.scatter(x[ok & c], y[ok & c], s=size, c="#2ca02c", alpha=0.55, linewidths=0,
               label=f"correct ({int((ok & c).sum())})")
    ax.scatter(x[ok & ~c], y[ok & ~c], s=size + 4, c="#d62728", alpha=0.8, linewidths=0,
               label=f"wrong ({int((ok & ~c).sum())})")
    if ok.any():
        ax.axvline(quad.x_median, color="0.4", linestyle="--", linewidth=0.9)
        ax.axhline(quad.y_median, color="0.4", linestyle="--", linewidth=0.9)
        boxes = {(0.02, 0.97, "left", "top"): quad.low_x_high_y,
                 (0.98, 0.97, "right", "top"): quad.high_x_high_y,
                 (0.02, 0.03, "left", "bottom"): quad.low_x_low_y,
                 (0.98, 0.03, "right", "bottom"): quad.high_x_low_y}
        for (bx, by, ha, va), (wrong, total) in boxes.items():
            ax.text(bx, by, f"wrong {wrong} of {total}", transform=ax.transAxes, ha=ha, va=va, fontsize=8,
                    color="#d62728", bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7",
                                           "boxstyle": "round,pad=0.25"})
    ax.set_xlabel(f"{display_name(x_method)} (higher = more trustworthy)")
    ax.set_ylabel(f"{display_name(y_method)} confidence")
    note = f"; {quad.dropped} with NaN left out" if quad.dropped else ""
    ax.set_title(f"{run.name}: one point per sample, split at the medians{note}", fontsize=9)
    ax.legend(loc="center right", fontsize=8, framealpha=0.85)
    ax.grid(alpha=0.25)
    fig.tight_layout()
    save_png(fig, path)
    return quad


class DigitsCache:
    """The pictures a report's figures show: the digits datasets, each built once per report, and which image
    files may be read. Results may come from someone else, so by default only files inside a run's data root
    (its manifest's dataset root) or its own folder are read; a path leading elsewhere (``..``, absolute) is
    not, and is listed in ``refused`` (run name → paths) for the page to say so. ``allow_outside=True``
    (``gradtrust report --allow-outside-images``) reads them all."""

    def __init__(self, allow_outside: bool = False) -> None:
        self._sets: dict[tuple, Any] = {}
        self.allow_outside = allow_outside
        self.refused: dict[str, list[str]] = {}

    def may_read(self, run: Run, path: Path, roots: list[Path]) -> bool:
        """Whether ``path`` lies inside one of ``roots`` (lexically: ``..`` resolved, symbolic links kept, so a
        data folder of links still shows), or ``allow_outside``; a refused path is recorded."""
        if self.allow_outside:
            return True
        where = Path(os.path.normpath(os.path.abspath(path)))
        if any(where == root or root in where.parents for root in roots):
            return True
        refused = self.refused.setdefault(run.name, [])
        if str(path) not in refused:
            refused.append(str(path))
        return False

    def image(self, run: Run, sample_path: str) -> np.ndarray | None:
        m = _DIGITS_PATH.match(sample_path)
        if not m:
            return None
        split, tag, index = m.group(1), m.group(2), int(m.group(3))
        fields = dataset_fields(dataset_description(run.manifest))
        corruption = None if tag == "clean" else tag
        severity = int(fields.get("severity") or 1) if corruption else 1
        seed = int(fields.get("seed") or 0) if corruption else 0
        key = (split, corruption, severity, seed)
        try:
            if key not in self._sets:
                from gradtrust.data.digits import DigitsDataset

                self._sets[key] = DigitsDataset(split, corruption=corruption, severity=severity, seed=seed)
            from gradtrust.data.digits import digits_image

            sample = self._sets[key][index]
            return 255 - digits_image(sample.input)  # dark ink on white paper
        except Exception:  # noqa: BLE001 - a picture that cannot be rebuilt is shown as missing
            return None


def load_sample_image(run: Run, sample_path: str, cache: DigitsCache | None = None,
                      max_side: int = 160) -> np.ndarray | None:
    """The picture of one sample as an array (H, W) or (H, W, 3), or None when it cannot be found/read."""
    if not sample_path:
        return None
    if sample_path.startswith("digits/"):
        return (cache or DigitsCache()).image(run, sample_path)  # rebuilt from the bundled data: no file read
    cache = cache or DigitsCache()
    p = Path(sample_path)
    fields = dataset_fields(dataset_description(run.manifest))
    data_roots = [Path(fields[key]) for key in ("root", "path", "data", "folder") if isinstance(fields.get(key), str)]
    home = run.source if run.source.is_dir() else run.source.parent
    roots = [Path(os.path.normpath(os.path.abspath(r))) for r in (*data_roots, home)]
    candidates = [p] if p.is_absolute() else [*(root / p for root in data_roots), run.source / p,
                                               run.source.parent / p, p]
    for cand in candidates:
        if cand.suffix.lower() in _IMAGE_SUFFIXES and cand.is_file():
            if not cache.may_read(run, cand, roots):
                return None
            try:
                from PIL import Image

                with Image.open(cand) as im:
                    im = im.convert("RGB")
                    im.thumbnail((max_side, max_side))
                    return np.asarray(im)
            except Exception:  # noqa: BLE001 - unreadable image: shown as missing
                return None
    return None


def select_qualitative(run: Run, quantile: float = 0.75, max_images: int = 16,
                       trust: str = "gradtrust", confidence: str = "softmax") -> tuple[np.ndarray, float]:
    """Row positions of the wrong predictions whose softmax is in the top quartile (≥ the ``quantile`` of
    all the run's softmax values), in ascending GradTrust (NaN first), at most ``max_images``; and the
    softmax threshold."""
    sm, gt, c = run.scores(confidence), run.scores(trust), run.correct
    finite = sm[~np.isnan(sm)]
    if finite.size == 0:
        return np.array([], dtype=np.int64), float("nan")
    threshold = float(np.quantile(finite, quantile))
    cand = np.flatnonzero(~c & (sm >= threshold))
    key = np.where(np.isnan(gt[cand]), -np.inf, gt[cand])
    order = cand[np.argsort(key, kind="stable")]
    return order[:max_images], threshold


def qualitative_figure(result: RunResult, path: Path, *, max_images: int = 16, quantile: float = 0.75,
                       cache: DigitsCache | None = None) -> dict[str, Any] | None:
    """The qualitative grid of one run. Returns what was drawn (positions, threshold, how many images were
    found) or None when GradTrust or softmax is missing or no wrong prediction has a high softmax."""
    run = result.run
    if "gradtrust" not in run.methods or "softmax" not in run.methods:
        return None
    rows, threshold = select_qualitative(run, quantile, max_images)
    n_candidates = int((~run.correct & (run.scores("softmax") >= threshold)).sum()) if rows.size else 0
    if rows.size == 0:
        return None
    cache = cache or DigitsCache()
    ncols = min(8, rows.size)
    nrows = math.ceil(rows.size / ncols)
    # Fixed geometry (inches): each image 1.5 tall, 0.5 above it for the class names, 0.45 below for the
    # two scores (named in full), 0.7 at the top for the title. tight_layout would ignore the texts above the axes.
    cell_h, above, below, head = 1.5, 0.5, 0.45, 0.75
    height = nrows * (cell_h + above + below) + head
    width = max(1.7 * ncols, 5.6)
    fig = new_figure(width, height)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, gridspec_kw={
        "left": 0.1 / width, "right": 1 - 0.1 / width, "top": 1 - (head + above) / height,
        "bottom": below / height, "hspace": (above + below) / cell_h, "wspace": 0.15})).ravel()
    frame = run.frame
    found = 0
    for ax, i in zip(axes, rows, strict=False):
        img = load_sample_image(run, str(frame["path"].iat[i]), cache)
        ax.set_xticks([])
        ax.set_yticks([])
        if img is None:
            ax.set_facecolor("0.9")
            ax.text(0.5, 0.5, "image not\navailable", ha="center", va="center", fontsize=7, color="0.4",
                    transform=ax.transAxes)
        else:
            found += 1
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255,
                      interpolation="nearest" if max(img.shape[:2]) < 64 else "antialiased")
        pred = run.class_name(int(frame["prediction"].iat[i]))
        true = run.class_name(int(frame["label"].iat[i]))
        ax.text(0.5, 1.14, f"pred: {_short(pred)}", color="#d62728", ha="center", va="bottom", fontsize=7.5,
                transform=ax.transAxes)
        ax.text(0.5, 1.02, f"true: {_short(true)}", color="#1f77b4", ha="center", va="bottom", fontsize=7.5,
                transform=ax.transAxes)
        gt, sm = run.scores("gradtrust")[i], run.scores("softmax")[i]
        ax.set_xlabel(f"{display_name('gradtrust')} {gt:.3g}\n{display_name('softmax')} {sm:.2f}", fontsize=6.5)
    for ax in axes[rows.size:]:
        ax.set_visible(False)
    fig.suptitle(f"{run.name}: wrong predictions with softmax ≥ {threshold:.3f} (top {100 * (1 - quantile):g}% "
                 f"of the run)\nin ascending GradTrust, lowest first ({rows.size} of {n_candidates}); "
                 "red = predicted class, blue = true class", fontsize=8.5, y=1 - 0.12 / height, va="top")
    save_png(fig, path)
    return {"rows": rows.tolist(), "threshold": threshold, "candidates": n_candidates, "images_found": found}


def _short(name: str, limit: int = 22) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"
