"""The report's detection section (``gradtrust detect`` runs, read from ``table.csv``, ``manifest.json`` and the
PNGs the run drew), and :func:`format_text_table`, the table ``gradtrust detect`` prints.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from gradtrust.reporting.html import img_html, table_html
from gradtrust.reporting.kinds import DATA_FILES, Section, read_manifest, register_section
from gradtrust.reporting.runs import LoadProblem
from gradtrust.reporting.tables import ci_text

__all__ = ["auroc_table", "detect_section", "format_text_table"]

DETECTORS_FIRST = ("purview_mlp", "purview_logistic", "mahalanobis")


def _method_order(methods: list[str]) -> list[str]:
    first = [m for m in DETECTORS_FIRST if m in methods]
    return first + [m for m in methods if m not in first]


def auroc_table(table: Any) -> Any:
    """AUROC (%) with rows = (model, challenge) and one column per method (detectors first)."""
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


def _cell(row: Any, name: str) -> str:
    return ci_text(row.get(name), row.get(f"{name}_low"), row.get(f"{name}_high"), digits=1)


@register_section("detect", "detect run")
def detect_section(folders: list[Path], report: Any) -> Section:
    """Per detect run and model: the AUROC table (challenge × method, with CIs), FPR@95 and detection error per
    row, and the run's ROC and profile figures."""
    import pandas as pd

    e = html.escape
    section = Section("detect")
    parts = ['<h2 id="detect">Detection (gradtrust detect)</h2>',
             '<p class="legend">AUROC (%) of each detector and baseline at telling the known (trained-distribution) '
             "samples (positive) from each challenge set, on held-out samples only; [95% percentile bootstrap "
             "interval]. Below each table: FPR@95%TPR and detection error (%) per challenge and method.</p>"]
    for folder in folders:
        try:
            table = pd.read_csv(folder / DATA_FILES["detect"])
            missing = {"challenge", "method", "auroc"} - set(table.columns)
            if missing:
                raise ValueError(f"lacks the column(s) {', '.join(sorted(missing))}")
        except (OSError, ValueError) as exc:
            section.problems.append(LoadProblem(str(folder / DATA_FILES["detect"]), f"not a detection table ({exc})."))
            continue
        manifest = read_manifest(folder)
        name = folder.name
        section.runs.append({"name": name, "source": str(folder), "rows": len(table)})
        section.add_failures(name, folder, manifest)
        if "model" not in table.columns:
            table = table.assign(model=name)
        parts.append(f"<h3>{e(name)}</h3><p class=\"legend\"><code>{e(str(folder))}</code>; challenges "
                     f"{e(str(manifest.get('challenges', '?')))}; seed {e(str(manifest.get('seed', '?')))}</p>")
        methods = _method_order(list(dict.fromkeys(table["method"])))
        for model, rows in table.groupby("model", sort=False):
            cells = {(r["challenge"], r["method"]): r for _, r in rows.iterrows()}
            challenges = list(dict.fromkeys(rows["challenge"]))
            body = [[e(f"{model} · {c}")] + [_cell(cells[c, m], "auroc") if (c, m) in cells else "" for m in methods]
                    for c in challenges]
            parts.append(table_html(["model · challenge", *map(e, methods)], body, "detect"))
            detail = [[e(f"{model} · {r['challenge']}"), e(r["method"]), _cell(r, "fpr_at_95tpr"),
                       _cell(r, "detection_error"), str(r.get("n_known", "")), str(r.get("n_challenge", ""))]
                      for _, r in rows.iterrows()]
            parts.append("<details><summary>FPR@95%TPR and detection error</summary>" + table_html(
                ["model · challenge", "method", "FPR@95%TPR", "detection error", "known n", "challenge n"], detail,
                "detect") + "</details>")
        parts += [img_html(p, p.stem) for p in sorted(folder.glob("roc_*.png")) + sorted(folder.glob("profile_*.png"))]
    if section.runs:
        section.html = "\n".join(parts)
        section.links = [("detect", "detection")]
    return section
