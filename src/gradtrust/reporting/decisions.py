"""The report's decisions section: runs with a gate applied (``decisions.json``, written by ``gradtrust gate apply``
or ``gradtrust score --gate``) and unlabelled score runs.

- a labelled run with a gate: its risk–coverage curve on the gate's score, the operating point (realised
  coverage and selective risk, with 95% Clopper–Pearson intervals), the gate's risk bound and target;
- an unlabelled run: the distributions of its scores (the gate's score first), and with a gate the threshold and
  what it would refuse. No metric that needs labels is computed from an unlabelled run.

Every bound is printed with :data:`gradtrust.selective.SHIFT_NOTE`: it does not hold under distribution shift.
"""

from __future__ import annotations

import html
import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from gradtrust import schema
from gradtrust.evaluation.risk import risk_coverage_curve
from gradtrust.reporting.figures import new_figure, save_png
from gradtrust.reporting.html import img_html, table_html
from gradtrust.reporting.kinds import DATA_FILES, Section, drawing, mapping, read_manifest, register_section
from gradtrust.reporting.runs import LoadProblem, slugify
from gradtrust.selective import SHIFT_NOTE

__all__ = ["decisions_section", "risk_coverage_figure", "score_distribution_figure"]

_MAX_DISTRIBUTIONS = 6  # score columns drawn for an unlabelled run


def _read_decisions(folder: Path) -> dict[str, Any] | None:
    path = folder / DATA_FILES["decisions"]
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("gate"), dict) else None


def risk_coverage_figure(
    scores: np.ndarray, correct: np.ndarray, gate: dict[str, Any], realised: dict[str, Any], title: str, path: Path
) -> Path:
    """The risk–coverage curve of ``scores`` with the gate's operating point (realised coverage and risk, with
    their intervals), its risk bound and target."""
    coverage, risk, _ = risk_coverage_curve(scores, correct)
    fig = new_figure(6.4, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(coverage, risk, color="#333", lw=1.5, label=f"risk–coverage ({gate.get('score')})")
    bound = gate.get("risk_bound")
    if isinstance(bound, (int, float)) and np.isfinite(bound):
        ax.axhline(
            bound, color="#d13438", ls="--", lw=1.2, label=f"risk bound {bound:.4f} (1 − δ = {1 - gate['delta']:g})"
        )
    target = gate.get("target_risk")
    if isinstance(target, (int, float)):
        ax.axhline(target, color="#888", ls=":", lw=1.2, label=f"target r* = {target:g}")
    cov, rsk = realised["coverage"], realised["risk"]
    if cov is not None and rsk is not None and np.isfinite(rsk):
        xerr = [[cov - realised["coverage_ci"][0]], [realised["coverage_ci"][1] - cov]]
        yerr = [[rsk - realised["risk_ci"][0]], [realised["risk_ci"][1] - rsk]]
        ax.errorbar(
            [cov],
            [rsk],
            xerr=xerr,
            yerr=yerr,
            fmt="o",
            color="#0078d4",
            ms=7,
            capsize=3,
            label=f"operating point: coverage {cov:.3f}, risk {rsk:.4f}",
        )
    ax.set_xlabel("coverage (share accepted)")
    ax.set_ylabel("selective risk (share wrong among accepted)")
    ax.set_xlim(0, 1.01)
    top = max(float(np.nanmax(risk)) if risk.size else 0.0, bound if isinstance(bound, float) else 0.0)
    ax.set_ylim(0, max(top * 1.1, 0.01))
    ax.set_title(textwrap.fill(title, width=70), fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path)


def score_distribution_figure(
    frame: Any, columns: list[str], gate: dict[str, Any] | None, title: str, path: Path
) -> Path:
    """Histograms of the score columns of an unlabelled run; on the gate's score, the threshold and the share
    it refuses."""
    width = 3.2 * min(len(columns), 3)
    fig = new_figure(width, 2.6 * ((len(columns) + 2) // 3) + 0.3)
    for k, name in enumerate(columns):
        ax = fig.add_subplot((len(columns) + 2) // 3, min(len(columns), 3), k + 1)
        values = frame[name].to_numpy(dtype=np.float64)
        finite = values[np.isfinite(values)]
        ax.hist(finite, bins=min(40, max(5, finite.size // 3)), color="#8aa", edgecolor="white")
        label = name
        if gate is not None and name == gate.get("score"):
            threshold = float(gate["threshold"])
            refused = float(np.mean(~(values >= threshold))) if values.size else 0.0
            ax.axvline(threshold, color="#d13438", lw=1.5)
            label += f"\nthreshold {threshold:.4g}: refuses {100 * refused:.1f}%"
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=7)
    # A run's name is often longer than one narrow panel: wrap it (~11 characters an inch at 10 pt).
    fig.suptitle(textwrap.fill(title, width=int(11 * width)), fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)


def _gate_words(gate: dict[str, Any]) -> str:
    target = ", ".join(
        x
        for x in (
            f"risk ≤ {gate['target_risk']:g}" if gate.get("target_risk") is not None else "",
            f"coverage ≥ {gate['target_coverage']:g}" if gate.get("target_coverage") is not None else "",
        )
        if x
    )
    return (
        f"{gate.get('score')} ≥ {float(gate['threshold']):.6g} ({gate.get('method')}; target {target}, "
        f"δ = {gate.get('delta')}; risk bound {float(gate['risk_bound']):.4f}; calibration coverage "
        f"{float(gate['coverage']):.4f} of {gate.get('n')})"
    )


@register_section("decisions", "decisions run")
def decisions_section(folders: list[Path], report: Any) -> Section:
    """Per run: the gate, what it accepts, and (labelled) the risk–coverage curve with the operating point and
    bound, or (unlabelled) the score distributions and what the gate would refuse."""
    import pandas as pd

    e = html.escape
    section = Section("decisions")
    parts = [
        '<h2 id="decisions">Decisions (gradtrust gate)</h2>',
        '<p class="legend">Each gate accepts a prediction when its trust score reaches the threshold. Labelled '
        "runs: realised coverage and selective risk [95% Clopper–Pearson interval] against the bound. "
        "Unlabelled runs: score distributions only (no label metric), and what the gate would refuse. "
        f"Note: {e(SHIFT_NOTE)}.</p>",
    ]
    rows: list[list[str]] = []
    figures: list[str] = []
    for folder in folders:
        try:
            frame = pd.read_parquet(folder / schema.SCORES_FILE)
            methods = schema.method_columns(frame)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
            section.problems.append(LoadProblem(str(folder), f"cannot be read ({type(exc).__name__}: {exc})."))
            continue
        manifest = read_manifest(folder)
        model = mapping(manifest.get("model")).get("spec") or folder.name
        name = f"{model} · {folder.name}"
        decisions = _read_decisions(folder)
        gate = decisions["gate"] if decisions else None
        labels = frame["label"].to_numpy()
        known = labels >= 0
        slug = slugify(name)
        entry: dict[str, Any] = {
            "name": name,
            "source": str(folder),
            "rows": int(len(frame)),
            "labelled": int(known.sum()),
            "gate": gate,
        }
        section.runs.append(entry)
        section.add_failures(name, folder, manifest)
        accepted = "" if decisions is None else f"{decisions['accepted']} of {decisions['rows']}"
        realised = (decisions or {}).get("realised")
        if realised:
            cov = f"{realised['coverage']:.4f} [{realised['coverage_ci'][0]:.4f}, {realised['coverage_ci'][1]:.4f}]"
            risk = (
                f"{realised['risk']:.4f} [{realised['risk_ci'][0]:.4f}, {realised['risk_ci'][1]:.4f}]"
                if realised["accepted"]
                else "n/a (nothing accepted)"
            )
        else:
            cov = "" if decisions is None else f"{decisions['coverage']:.4f}"
            risk = "n/a (no labels)" if not known.any() else ""
        rows.append(
            [
                e(name),
                str(int(len(frame))),
                str(int(known.sum())),
                e(_gate_words(gate)) if gate else "none",
                accepted,
                cov,
                risk,
                f"{float(gate['risk_bound']):.4f}" if gate else "",
            ]
        )
        if not report.draw:
            continue
        figure = report.out_dir / "figures" / "decisions" / f"{slug}.png"
        with drawing(section.problems, f"figures/decisions/{slug}.png"):
            if gate is not None and realised and gate.get("score") in frame.columns:
                scores = frame.loc[known, gate["score"]].to_numpy(dtype=np.float64)
                correct = labels[known] == frame.loc[known, "prediction"].to_numpy()
                risk_coverage_figure(scores, correct, gate, realised, f"{name}: {gate['score']}", figure)
            elif not known.any() and methods:
                first = [gate["score"]] if gate and gate.get("score") in methods else []
                columns = (first + [m for m in methods if m not in first])[:_MAX_DISTRIBUTIONS]
                score_distribution_figure(frame, columns, gate, f"{name}: {len(frame)} unlabelled samples", figure)
            else:
                figure = None
            if figure is not None:
                section.figures[f"decisions/{name}"] = figure
                figures.append(f"<h3>{e(name)}</h3>" + img_html(figure, name))
    if not section.runs:
        return section
    parts.append(
        table_html(
            [
                "run",
                "rows",
                "labelled",
                "gate",
                "accepted",
                "coverage [95% CI]",
                "selective risk [95% CI]",
                "risk bound",
            ],
            rows,
            "decisions",
        )
    )
    parts += figures
    section.html = "\n".join(parts)
    section.links = [("decisions", "decisions")]
    return section
