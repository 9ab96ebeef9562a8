"""The report's anomaly-detection section: GradCON runs (:mod:`gradtrust.anomaly_runs`), evaluated with the
inlier class positive, in their own table and figures (never in the misclassification tables; ``docs/gradcon.md``).

Files: ``anomaly.md``, ``anomaly.csv``, ``figures/anomaly/<run>_hist.png``, ``figures/anomaly/<run>_recon.png``.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np

from gradtrust.anomaly_runs import load_anomaly_run
from gradtrust.errors import GradTrustError
from gradtrust.evaluation import anomaly_summary, auroc
from gradtrust.reporting.figures import new_figure, save_png
from gradtrust.reporting.kinds import Section, drawing, register_section
from gradtrust.reporting.runs import LoadProblem, number_clashes, slugify
from gradtrust.reporting.tables import ci_text

__all__ = ["gradcon_section"]

HEADER = ("run", "inlier", "inliers / n", "AUROC", "FPR@95", "AUROC −MSE only", "AUROC gradient only")


def _cells(r: dict[str, Any]) -> list[str]:
    return [str(r["run"]), str(r["inlier"]), f"{r['n_inlier']} / {r['n']}", ci_text(r["auroc"], *(r["auroc_ci"] or [None] * 2)),
            ci_text(r["fpr_at_95tpr"], *(r["fpr_at_95tpr_ci"] or [None] * 2)), ci_text(r.get("auroc_mse_only")),
            ci_text(r.get("auroc_gradient_only"))]


@register_section("gradcon", "GradCON run")
def gradcon_section(folders: list[Path], report: Any) -> Section:
    """Evaluate the GradCON run ``folders``: one row each in ``section.runs`` (AUROC, FPR@95 with CIs, each
    term alone), ``anomaly.md`` / ``anomaly.csv``, the figures, the HTML. A bad run becomes a problem."""
    section = Section("gradcon")
    runs = []
    for f in folders:
        try:
            runs.append(load_anomaly_run(f))
        except GradTrustError as exc:
            section.problems.append(LoadProblem(str(f), str(exc)))
    number_clashes(runs)
    rs, out_dir = max(report.resamples, 0), report.out_dir
    for run in runs:
        frame = run.frame
        inlier = frame["inlier"].to_numpy(dtype=bool)
        score = frame["score"].to_numpy(dtype=np.float64)
        s = anomaly_summary(score, inlier, resamples=rs, confidence=report.confidence, seed=report.seed)
        row: dict[str, Any] = {"run": run.name, "name": run.name, "source": str(run.source),
                               "inlier": run.inlier_name, "n_inlier": s["n_inlier"], "n": s["n"], "auroc": s["auroc"],
                               "auroc_ci": s.get("auroc_ci"), "fpr_at_95tpr": s["fpr_at_95tpr"],
                               "fpr_at_95tpr_ci": s.get("fpr_at_95tpr_ci")}
        if "mse" in frame.columns:
            row["auroc_mse_only"] = auroc(-frame["mse"].to_numpy(dtype=np.float64), inlier)
        if "gradient_term" in frame.columns:
            row["auroc_gradient_only"] = auroc(frame["gradient_term"].to_numpy(dtype=np.float64), inlier)
        section.runs.append(row)
        section.add_failures(run.name, run.source, run.manifest)
        for kind, draw in (("hist", _histogram_figure), ("recon", _reconstruction_figure)) if report.draw else ():
            name = f"anomaly/{slugify(run.name)}_{kind}.png"
            with drawing(section.problems, f"figures/{name}"):
                if draw(run, out_dir / "figures" / name) is not None:
                    section.figures[f"anomaly/{kind}/{run.name}"] = out_dir / "figures" / name
    if section.runs:
        _write_files(section, out_dir, _legend(rs, report.confidence, report.seed))
    return section


def _legend(resamples: int, confidence: float, seed: int) -> str:
    ci = (f" [{int(round(100 * confidence))}% percentile bootstrap CI, {resamples} resamples, seed {seed}]"
          if resamples else "")
    return ("GradCON / autoencoder anomaly runs. AUROC: inliers (the normal class) positive, score higher = more "
            f"normal; FPR@95: share of anomalies accepted at the first threshold that accepts ≥ 95% of the inliers. "
            f"All ×100{ci}. The last two columns rank by one term of the score alone: −MSE, and the mean gradient "
            "cosine.")


def _write_files(section: Section, out_dir: Path, legend: str) -> None:
    """``anomaly.md``, ``anomaly.csv`` and the section's HTML."""
    import pandas as pd

    from gradtrust.reporting.html import img_html, table_html

    lines = [legend, "", "| " + " | ".join(HEADER) + " |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in section.runs]
    (out_dir / "anomaly.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    flat = []
    for r in section.runs:
        d = {k: v for k, v in r.items() if not k.endswith("_ci") and k != "name"}
        for k in ("auroc_ci", "fpr_at_95tpr_ci"):
            d[f"{k}_low"], d[f"{k}_high"] = r.get(k) or [math.nan, math.nan]
        flat.append(d)
    pd.DataFrame(flat).to_csv(out_dir / "anomaly.csv", index=False)
    section.files.update(anomaly_md=out_dir / "anomaly.md", anomaly_csv=out_dir / "anomaly.csv")
    e = html.escape
    out = ['<h2 id="anomaly">Anomaly detection (GradCON)</h2>', f'<p class="legend">{e(legend)}</p>',
           table_html(HEADER, [[e(c) for c in _cells(r)] for r in section.runs])]
    for i, r in enumerate(section.runs):
        imgs = "".join(img_html(p, f"{kind} {r['run']}") for kind in ("hist", "recon")
                       if (p := section.figures.get(f"anomaly/{kind}/{r['run']}")))
        if imgs:
            out.append(f"<details{' open' if i == 0 else ''}><summary>{e(r['run'])}</summary>{imgs}</details>")
    section.html, section.links = "\n".join(out), [("anomaly", "anomaly detection (GradCON)")]


def _histogram_figure(run: Any, path: Path) -> Path:
    """The score's histogram per class (shared bins; the inlier class filled), one panel."""
    import matplotlib

    frame = run.frame
    score = frame["score"].to_numpy(dtype=np.float64)
    labels = frame["label"].to_numpy()
    inlier = frame["inlier"].to_numpy(dtype=bool)
    finite = score[np.isfinite(score)]
    bins = np.histogram_bin_edges(finite, bins=40) if finite.size else np.linspace(0, 1, 41)
    fig = new_figure(7.5, 3.6)
    ax = fig.subplots()
    cmap = matplotlib.colormaps["tab10"]
    palette = [cmap(i) for i in range(10) if i != 2]  # green is the inlier's
    names = run.class_names
    k = 0
    for c in np.unique(labels):
        s = score[(labels == c) & np.isfinite(score)]
        name = names[int(c)] if 0 <= int(c) < len(names) else str(c)
        if inlier[labels == c].all():
            ax.hist(s, bins=bins, density=True, color="tab:green", alpha=0.35, label=f"{name} (inlier)",
                    zorder=1)
            ax.hist(s, bins=bins, density=True, histtype="step", color="darkgreen", linewidth=2.0, zorder=4)
        else:
            ax.hist(s, bins=bins, density=True, histtype="step", color=palette[k % len(palette)], linewidth=1.1,
                    label=name, zorder=3)
            k += 1
    ax.set_xlabel("score (higher = more normal)", fontsize=8)
    ax.set_ylabel("density", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, frameon=False, loc="upper left")
    ax.set_title(f"{run.name}\nscore per class (n = {len(score)})", fontsize=8.5)
    fig.tight_layout()
    return save_png(fig, path)


def _tile(a: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] → (H, W, 3) RGB (grey repeated)."""
    a = np.clip(a.astype(np.float64), 0, 1)
    return np.repeat(a[:1], 3, axis=0).transpose(1, 2, 0) if a.shape[0] != 3 else a.transpose(1, 2, 0)


def _reconstruction_figure(run: Any, path: Path) -> Path | None:
    """Most anomalous (top) and most normal (bottom) inputs, each over its reconstruction: one mosaic image
    (one ``imshow``, cheaper than an axes per tile)."""
    rec = run.reconstructions
    if rec is None or len(rec.get("score", [])) == 0:
        return None
    kinds = [str(k) for k in rec["kind"]]
    groups = [(t, [i for i, k in enumerate(kinds) if k == t]) for t in ("most anomalous", "most normal")]
    groups = [(t, idx) for t, idx in groups if idx]
    ncols = max(len(idx) for _, idx in groups)
    h, w = rec["input"].shape[-2:]
    pad, gap = 2, 10  # pixels between tiles, and between the two groups (room for the labels)
    rows = 2 * len(groups)
    height = rows * (h + pad) + (len(groups) - 1) * gap
    mosaic = np.ones((height, ncols * (w + pad), 3))
    names = run.class_names
    labels: list[tuple[float, float, str, str]] = []
    ticks: list[float] = []
    tick_labels: list[str] = []
    for g, (title, idx) in enumerate(groups):
        top = g * (2 * (h + pad) + gap)
        ticks += [top + h / 2, top + h + pad + h / 2]
        tick_labels += [f"{title}: input", "reconstruction"]
        for col, i in enumerate(idx):
            x0 = col * (w + pad)
            mosaic[top:top + h, x0:x0 + w] = _tile(rec["input"][i])
            mosaic[top + h + pad:top + 2 * h + pad, x0:x0 + w] = _tile(rec["reconstruction"][i])
            label = int(rec["label"][i])
            name = names[label] if 0 <= label < len(names) else str(label)
            colour = "darkgreen" if name == run.inlier_name else "firebrick"
            labels.append((x0 + w / 2, top - 1, f"{name}\n{rec['score'][i]:.4f}", colour))
    fig = new_figure(0.95 * ncols + 1.6, 0.95 * rows + 0.3 * len(groups) + 0.6)
    ax = fig.subplots()
    ax.imshow(mosaic, interpolation="nearest")
    for x, y, text, colour in labels:
        ax.text(x, y, text, ha="center", va="bottom", fontsize=6.5, color=colour)
    ax.set_yticks(ticks, tick_labels, fontsize=7)
    ax.set_xticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(f"{run.name}\nclass and score above each input (green = inlier class)", fontsize=8.5, pad=22)
    fig.tight_layout()
    return save_png(fig, path)
