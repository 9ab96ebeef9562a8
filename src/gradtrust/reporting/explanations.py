"""The explanation gallery of a score run (``gradtrust explain`` into its ``explanations/`` sub-folder) or of an
explain run on its own, and the explain section (``docs/explanations.md``).

The maps are read at the layer's resolution and upsampled over the picture as stored; for inputs the model saw
centre-cropped, the overlay covers the whole picture, so it is aligned only approximately. Nothing is re-run.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from gradtrust.reporting.datasets import dataset_identity
from gradtrust.reporting.explanation_scores import curves_figure, evaluation_html, read_summary
from gradtrust.reporting.kinds import DATA_FILES, Section, drawing, mapping, register_section
from gradtrust.reporting.runs import LoadProblem, Run, slugify

EXPLANATIONS_FILE = DATA_FILES["explain"]
COLUMNS = (("gradcam", "Why {p}?"), ("counterfactual", "What if not {p}?"), ("contrast", "Why {p}, not {q}?"),
           ("occlusion", "Occlusion: {p}"), ("rise", "RISE: {p}"), ("shape", "SHAPE: {p}"),
           ("voice", "VOICE uncertainty"))


def find_explanations(run: Run) -> Path | None:
    """``<run>/explanations/explanations.parquet`` or ``<run>/explanations.parquet`` when present."""
    for candidate in (run.source / "explanations" / EXPLANATIONS_FILE, run.source / EXPLANATIONS_FILE):
        if candidate.is_file():
            return candidate
    return None


def select_gallery(run: Run, available: np.ndarray, per_group: int = 2) -> tuple[list[tuple[int, str]], str]:
    """Rows of ``run.frame`` to show: the ``per_group`` most and least trusted right and wrong predictions among
    the samples that have explanations; returns ``[(row, group label)]`` and the trust score used."""
    trust = "gradtrust" if "gradtrust" in run.methods else ("softmax" if "softmax" in run.methods else
                                                            (run.methods[0] if run.methods else ""))
    frame = run.frame
    has = np.isin(frame["index"].to_numpy(), available)
    scores = run.scores(trust) if trust else np.zeros(len(frame))
    chosen: list[tuple[int, str]] = []
    for correct, word in ((True, "right"), (False, "wrong")):
        rows = np.flatnonzero(has & (run.correct == correct) & np.isfinite(scores))
        if rows.size == 0:
            continue
        order = rows[np.argsort(-scores[rows], kind="stable")]
        top = list(order[:per_group])
        low = [r for r in order[::-1][:per_group] if r not in top]
        most, least = ("most trusted ", "least trusted ") if trust else ("", "")  # no score: no ranking to name
        chosen += [(int(r), f"{most}{word}") for r in top]
        chosen += [(int(r), f"{least}{word}") for r in low]
    return chosen, trust


def gallery_figure(run: Run, path: Path, *, per_group: int = 2, cache: Any = None) -> dict[str, Any] | None:
    """Draw the gallery of ``run`` into ``path``; None when the run has no explanations."""
    import pyarrow.parquet as pq
    import torch
    from torch.nn import functional as F

    from gradtrust.reporting.figures import DigitsCache, load_sample_image, new_figure, save_png
    from gradtrust.reporting.layout import fit_canvas

    source = find_explanations(run)
    if source is None:
        return None
    table = pq.read_table(source)
    if table.num_rows == 0:
        return None
    ex = table.to_pandas().set_index("index")
    chosen, trust = select_gallery(run, ex.index.to_numpy(), per_group)
    if not chosen:
        return None
    methods = [(m, title) for m, title in COLUMNS if f"map_{m}" in ex.columns]
    cache = cache or DigitsCache()
    ncols = 1 + len(methods)
    cell = 1.6
    fig = new_figure(cell * ncols, (cell + 0.55) * len(chosen) + 0.5)
    axes = fig.subplots(len(chosen), ncols, squeeze=False)
    for row_axes, (row, group) in zip(axes, chosen, strict=True):
        sample = run.frame.iloc[row]
        info = ex.loc[int(sample["index"])]
        p, q = int(info["target"]), int(info["contrast"])
        p_name, q_name = _short(run.class_name(p)), _short(run.class_name(q)) if q >= 0 else "?"
        img = load_sample_image(run, str(sample["path"]), cache)
        picture = None if img is None else (img.astype(np.float32) / 255.0)
        size = (64, 64) if picture is None else picture.shape[:2]
        head = f"{group}\n{trust} {run.scores(trust)[row]:.3g}" if trust else group
        _panel(row_axes[0], picture, None, f"{head}\ntrue {_short(run.class_name(int(sample['label'])))}")
        for ax, (method, title) in zip(row_axes[1:], methods, strict=True):
            own = f"map_height_{method}" in ex.columns  # interventions: stored at input resolution
            h = int(info[f"map_height_{method}" if own else "map_height"])
            w = int(info[f"map_width_{method}" if own else "map_width"])
            layer_map = torch.tensor(np.array(info[f"map_{method}"], dtype=np.float32)).reshape(1, 1, h, w)
            up = F.interpolate(layer_map, size=size, mode="bilinear", align_corners=False)[0, 0]
            lo, hi = float(up.min()), float(up.max())
            heat = ((up - lo) / (hi - lo)).numpy() if hi > lo else np.zeros(size, np.float32)
            label = title.format(p=p_name, q=q_name)
            if method == "voice" and "voice_snr" in ex.columns:
                label += f"\nSNR {float(info['voice_snr']):.2f} · IoU {float(info['voice_iou']):.2f}"
            elif hi <= lo:
                label += "\n(empty map)"
            _panel(ax, picture, heat, label)
    fig.suptitle(f"{run.name}: explanations ({source.parent.name}/{source.name})", fontsize=8.5)
    fit_canvas(fig, lambda f: f.tight_layout(rect=(0, 0, 1, 0.98)))  # a narrow gallery (one map) widens to its title
    save_png(fig, path)
    return {"rows": [r for r, _ in chosen], "trust": trust, "source": str(source)}


def _panel(ax, picture: np.ndarray | None, heat: np.ndarray | None, title: str) -> None:
    if picture is not None:
        ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    elif heat is None:
        ax.set_facecolor("0.9")
    if heat is not None:
        ax.imshow(heat, cmap="inferno", vmin=0, vmax=1, alpha=0.55 if picture is not None else 1.0,
                  interpolation="bilinear")
    ax.set_title(title, fontsize=6.5)
    ax.set_xticks([])
    ax.set_yticks([])


def _short(name: str, limit: int = 16) -> str:
    name = name.split(",")[0].strip()
    return name if len(name) <= limit else name[: limit - 1] + "…"


def explain_run(folder: Path, manifest: dict[str, Any], table: Any) -> Run:
    """An explain run (its folder, manifest and ``explanations.parquet`` as a DataFrame) as a :class:`Run` the
    gallery can draw: the rows with a known label, the class names and dataset from the manifest's identity,
    ``voice_snr`` as the trust score when VOICE ran."""
    columns = ["index", "path", "label", "prediction", "correct", "voice_snr"]
    frame = table[[c for c in columns if c in table.columns]]
    frame = frame[frame["label"] >= 0].reset_index(drop=True)
    identity = mapping(manifest.get("identity"))
    model = mapping(identity.get("model"))
    names = model.get("class_names")
    key, label = dataset_identity(identity.get("dataset"), manifest)
    return Run(source=folder, scores_path=folder / EXPLANATIONS_FILE, frame=frame, manifest=identity,
               methods=["voice_snr"] if "voice_snr" in frame.columns else [], model=str(model.get("spec") or "?"),
               condition="", dataset_key=key, dataset_label=label,
               class_names=[str(n) for n in names] if isinstance(names, list) else None,
               name=f"{model.get('spec') or folder.name} · {folder.name}")


@register_section("explain", "explain run")
def explain_section(folders: list[Path], report: Any) -> Section:
    """Per explain run: a summary row (model, layer, methods, counts, accuracy, mean VOICE SNR and IoU) and its
    gallery (:func:`gallery_figure`); a run inside a score run of the report shows that run's gallery."""
    import pyarrow.parquet as pq

    from gradtrust.reporting.html import figure_details, table_html
    from gradtrust.reporting.kinds import read_manifest

    e = html.escape
    section = Section("explain")
    rows, galleries, evaluations = [], [], []
    scored = {r.run.source.resolve(): r for r in report.results}
    for folder in folders:
        manifest = read_manifest(folder)
        try:
            table = pq.read_table(folder / EXPLANATIONS_FILE).to_pandas()
            run = explain_run(folder, manifest, table)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for one unreadable file
            section.problems.append(LoadProblem(str(folder / EXPLANATIONS_FILE), f"cannot be read ({exc})."))
            continue
        counts = mapping(manifest.get("counts"))
        labelled = table["label"] >= 0
        snr = table["voice_snr"].mean() if "voice_snr" in table.columns else float("nan")
        iou = table["voice_iou"].mean() if "voice_iou" in table.columns else float("nan")
        methods = [c[4:] for c in table.columns if c.startswith("map_") and not c.startswith(("map_height", "map_width"))]
        rows.append([e(run.name), e(run.model), e(str(manifest.get("layer", "?") or "— (interventions)")), e(", ".join(methods)),
                     str(counts.get("samples", len(table))), str(len(table)), str(counts.get("failed", 0)),
                     f"{100 * table.loc[labelled, 'correct'].mean():.2f}" if labelled.any() else "n/a",
                     f"{snr:.3f}" if np.isfinite(snr) else "—", f"{iou:.3f}" if np.isfinite(iou) else "—"])
        section.runs.append({"name": run.name, "source": str(folder), "explained": len(table)})
        section.add_failures(run.name, folder, manifest)
        owner = scored.get(folder.parent.resolve())
        path = report.figures.get(f"explanations/{owner.name}") if owner is not None else None
        name = f"explanations/{slugify(run.name)}.png"
        with drawing(section.problems, f"figures/{name}"):
            if path is None and report.draw and gallery_figure(run, report.out_dir / "figures" / name,
                                                               cache=report.images) is not None:
                path = section.figures[f"explanations/{run.name}"] = report.out_dir / "figures" / name
        if path is not None:
            galleries.append(figure_details(run.name, path, run.name))
        summary = read_summary(folder)
        if summary is not None:
            curves = None
            name = f"explanations/{slugify(run.name)}-curves.png"
            with drawing(section.problems, f"figures/{name}"):
                if report.draw and curves_figure(folder, report.out_dir / "figures" / name) is not None:
                    curves = section.figures[f"explanations/{run.name}/curves"] = report.out_dir / "figures" / name
            evaluations.append(evaluation_html(run.name, summary, curves))
    if rows:
        section.html = "\n".join([
            '<h2 id="explain">Explanations (gradtrust explain)</h2>',
            '<p class="legend">Per run: the layer explained, the maps stored, samples (in the data, explained, '
            "failed), the accuracy of the explained predictions (%) and VOICE's mean SNR and IoU (— without VOICE). "
            "The gallery: the most and least trusted right and wrong predictions with their maps.</p>",
            table_html(["run", "model", "layer", "maps", "samples", "explained", "failed", "accuracy", "VOICE SNR",
                        "VOICE IoU"], rows, "explain"), *galleries])
        if evaluations:
            section.html += "\n" + "\n".join([
                '<p class="legend">Runs with <code>--evaluate</code>: every map judged by masking the input and '
                "reading the model (mean over samples, 95% bootstrap CI in brackets; ↓/↑ = lower/higher is better). "
                "Deletion fills the most relevant pixels first, insertion puts them back into a blurred copy; Average "
                "Drop and Increase in Confidence read the image multiplied by the map; ROAD removes with noisy linear "
                "imputation; V[E(y|S)] and E[V(y|S)] split the variance of the model's answer over the kept "
                "subsets S. <em>random</em> and <em>centre</em> are baseline maps; “deletion − random” is the "
                "paired difference (negative = the map finds what the model needs faster than chance).</p>",
                *evaluations])
        section.links = [("explain", "explanations")]
    return section
