"""Figures sized from their content: :func:`fit_canvas` grows the canvas until every artist (titles, legends,
labels) is on it, instead of matplotlib cutting it off at the edge; :func:`artists_outside` lists what would
still be clipped (used by the tests)."""

from __future__ import annotations

from typing import Any

__all__ = ["artists_outside", "fit_canvas"]

_MARGIN_IN = 0.08  # inches kept free around the content


def fit_canvas(fig: Any, relayout: Any = None, max_rounds: int = 4) -> None:
    """Enlarge ``fig`` until its tight bounding box lies on the canvas (with a small margin).

    ``relayout(fig)`` is called after each resize (e.g. ``tight_layout`` with the space kept for a legend);
    a constrained-layout figure re-lays itself out on draw. Content that sticks out on the left or bottom
    is moved in by growing the canvas and shifting the layout through ``relayout``.
    """
    for _ in range(max_rounds):
        if relayout is not None:
            relayout(fig)
        renderer = fig.canvas.get_renderer()
        fig.draw_without_rendering()
        box = fig.get_tightbbox(renderer)  # inches
        width, height = fig.get_size_inches()
        need_w = max(width, box.width + 2 * _MARGIN_IN)
        need_h = max(height, box.height + 2 * _MARGIN_IN)
        if not (box.x0 < 0 or box.y0 < 0 or box.x1 > width or box.y1 > height):  # nothing outside
            return
        if need_w <= width + 1e-3 and need_h <= height + 1e-3:  # it fits, but is misplaced: grow a little
            need_w, need_h = width + 2 * _MARGIN_IN, height + 2 * _MARGIN_IN
        fig.set_size_inches(need_w, need_h, forward=False)


def artists_outside(fig: Any, tolerance_px: float = 0.5) -> list[str]:
    """Descriptions of the visible artists whose drawn extent leaves the canvas (empty when none)."""
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()
    canvas = fig.bbox
    out = []
    candidates = list(fig.texts) + list(fig.legends)
    if getattr(fig, "_suptitle", None) is not None and fig._suptitle not in candidates:
        candidates.append(fig._suptitle)
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        candidates += [ax, ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        if ax.get_legend() is not None:
            candidates.append(ax.get_legend())
    for artist in candidates:
        if artist is None or not artist.get_visible() or (hasattr(artist, "get_text") and not artist.get_text()):
            continue
        box = artist.get_tightbbox(renderer) if hasattr(artist, "get_tightbbox") else artist.get_window_extent(renderer)
        if box is None or box.width == 0:
            continue
        if (box.x0 < canvas.x0 - tolerance_px or box.y0 < canvas.y0 - tolerance_px
                or box.x1 > canvas.x1 + tolerance_px or box.y1 > canvas.y1 + tolerance_px):
            label = artist.get_text() if hasattr(artist, "get_text") else type(artist).__name__
            out.append(f"{type(artist).__name__} {label[:40]!r}: {box.bounds} outside {canvas.bounds}")
    return out
