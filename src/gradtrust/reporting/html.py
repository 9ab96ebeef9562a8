"""``index.html``: one self-contained page (inline CSS, PNGs as base64 data URIs, no script, no network)."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path

from gradtrust.reporting.results import Report
from gradtrust.reporting.tables import (
    PAPER_LEGEND,
    paper_cells,
    selective_cells,
    selective_legend,
    summary_cells,
)

__all__ = ["figure_details", "img_html", "render_html", "score_html", "table_html"]

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1.5em auto; max-width: 1500px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
h3 { font-size: 1.05em; margin-bottom: .3em; }
table { border-collapse: collapse; font-size: 12.5px; margin: .5em 0 1em; }
th, td { border: 1px solid #ddd; padding: 3px 6px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; position: sticky; top: 0; }
td:first-child, th:first-child { text-align: left; }
td:first-child { position: sticky; left: 0; background: #fff; z-index: 1; }
th:first-child { left: 0; z-index: 2; }
tr:nth-child(even) td { background: #fafafa; }
.scroll { overflow-x: auto; }
.warning { background: #fff4ce; border: 1px solid #e0b400; padding: .5em 1em; margin: .6em 0; }
.problem { background: #fde7e9; border: 1px solid #d13438; padding: .5em 1em; margin: .6em 0; }
.legend, .notes { font-size: 13px; color: #444; }
.notes li.warn { color: #8a5300; font-weight: 600; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
details { margin: .3em 0; } summary { cursor: pointer; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: 12px; }
.claim { font-size: 15px; background: #eef6ff; border: 1px solid #9cc3ee; padding: .5em 1em; }
"""


def table_html(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """Cells are trusted HTML fragments (built escaped by :mod:`.tables`)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _md_bold_to_html(text: str) -> str:
    parts = html.escape(text).split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


def _notes(notes: Sequence[str]) -> str:
    if not notes:
        return ""
    items = "".join(f'<li class="warn">{html.escape(n)}</li>' if n.startswith("Warning:") else f"<li>{html.escape(n)}</li>"
                    for n in dict.fromkeys(notes))
    return f'<ul class="notes">{items}</ul>'


def img_html(path: Path | None, alt: str) -> str:
    if path is None or not Path(path).is_file():
        return ""
    uri = "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<p><img src="{uri}" alt="{html.escape(alt)}"></p>'


def figure_details(name: str, path: Path, alt: str) -> str:
    """The figure at ``path`` in an open ``<details>`` headed ``name``."""
    return f"<details open><summary>{html.escape(name)}</summary>{img_html(path, alt)}</details>"


#: Failed files listed per run on the page (the rest are counted; all are in the run's manifest.json).
MAX_FAILURES_SHOWN = 20


def render_html(report: Report) -> str:
    """The whole page as a string: the header (runs of every kind, links to the sections present), warnings and
    problems, each kind's section (:mod:`.kinds`) in order, then the failed files of every run."""
    from gradtrust.reporting.kinds import KINDS, SECTIONS

    e = html.escape
    sections = [report.sections[k] for k in KINDS if k in report.sections]
    counts = [f"{len(s.runs)} {SECTIONS[s.kind][0]}{'' if len(s.runs) == 1 else 's'}" for s in sections]
    links = [link for s in sections for link in s.links]
    failed = [f for s in sections for f in s.failed]
    links += [("failures", "failed files")] if failed else []
    toc = " · ".join(f'<a href="#{anchor}">{e(words)}</a>' for anchor, words in links)
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{e(report.title)}</title>", f"<style>{_CSS}</style></head><body>",
           f"<h1>{e(report.title)}</h1>",
           f'<p class="legend">Generated {e(report.created)} by gradtrust {e(report.version)} from '
           f"{', '.join(counts) or 'no run'}." + (f" Sections: {toc}." if toc else "") + "</p>"]
    for w in report.warnings:
        out.append(f'<div class="warning"><strong>Warning:</strong> {e(w)}</div>')
    if report.problems:
        items = "".join(f"<li><code>{e(p.source)}</code>: {e(p.message)}</li>" for p in report.problems)
        out.append(f'<div class="problem"><strong>{len(report.problems)} input(s) could not be used '
                   f"(the rest of the report is complete):</strong><ul>{items}</ul></div>")
    if not report.ok:
        out.append("<p>No run could be read: nothing to report.</p>")
    out += [s.html for s in sections if s.html]
    if failed:
        out.append('<h2 id="failures">Failed files</h2>')
        out.append('<p class="legend">Files a run could not read, with the reason; they are left out of every '
                   f"number. At most {MAX_FAILURES_SHOWN} per run are listed; all are in the run's "
                   "manifest.json.</p>")
        for name, source, listed, total in failed:
            rows = [[e(str(i)), f"<code>{e(path)}</code>", e(reason)] for i, path, reason in listed[:MAX_FAILURES_SHOWN]]
            more = total - len(rows)
            out.append(f"<h3>{e(name)}: {total} failed</h3><p class=\"legend\"><code>{e(source)}</code></p>")
            out.append(table_html(["index", "path", "reason"], rows, "failures"))
            if more:
                out.append(f'<p class="legend">… and {more} more (see {e(source)}/manifest.json).</p>')
    out.append("</body></html>")
    return "\n".join(out)


def score_html(report: Report) -> str:
    """The score runs' part of the page ('' when there is none): tables, figures, manifests."""
    e = html.escape
    out: list[str] = []
    if not report.results:
        return ""
    out.append('<h2 id="table">Quantitative results (AUAC / AUFC)</h2>')
    out.append(f'<p class="legend">{_md_bold_to_html(PAPER_LEGEND)}</p>')
    for g in report.groups:
        if len(report.groups) > 1:
            out.append(f"<h3>Dataset: {e(g.label)}</h3>")
        header, rows, notes = paper_cells(g, html=True)
        out.append(table_html(header, rows, "paper"))
        out.append(_notes(notes))

    out.append('<h2 id="summary">Summary: which trust score wins</h2>')
    for line in report.summary_lines:
        out.append(f'<p class="claim">{e(line)}</p>')
    assert report.summary is not None  # score_section summarises whenever there are results
    header, rows = summary_cells(report.summary)
    out.append(table_html([e(h) for h in header], [[e(c) for c in row] for row in rows], "summary"))

    if report.severity is not None:  # a corruption benchmark: the tables per severity (severity.md)
        from gradtrust.reporting.severity import SEVERITY_LEGEND, severity_tables

        out.append('<h2 id="severity">Per corruption severity</h2>')
        out.append(f'<p class="legend">{e(SEVERITY_LEGEND)}</p>')
        for title, header, rows in severity_tables(report.severity):
            out.append(f"<h3>{e(title)}</h3>")
            out.append(table_html([e(h) for h in header], [[e(c) for c in row] for row in rows], "severity"))

    out.append('<h2 id="selective">Selective classification (AURC, AUGRC, AUROC, FPR@95)</h2>')
    out.append(f'<p class="legend">{_md_bold_to_html(selective_legend(report.resamples, report.seed, report.confidence))}</p>')
    for g in report.groups:
        if len(report.groups) > 1:
            out.append(f"<h3>Dataset: {e(g.label)}</h3>")
        for i, r in enumerate(g.results):
            header, rows, notes = selective_cells(r, g.methods, html=True)
            missing = f", {r.run.n_no_prediction} without prediction (non-finite logits)" if r.run.n_no_prediction else ""
            out.append(f"<details{' open' if i == 0 else ''}><summary><strong>{e(r.name)}</strong> — accuracy "
                       f"{100 * r.accuracy:.2f}%, n = {r.run.n}{missing}</summary>")
            out.append(table_html(header, rows, "selective"))
            out.append(_notes(notes))
            out.append("</details>")

    if report.calibration:
        from gradtrust.reporting.calibration import CALIBRATION_LEGEND, calibration_cells

        out.append('<h2 id="calibration">Calibration</h2>')
        out.append(f'<p class="legend">{e(CALIBRATION_LEGEND)}</p>')
        header, rows, notes = calibration_cells(report.calibration)
        out.append(table_html([e(h) for h in header], [[e(c) for c in row] for row in rows], "calibration"))
        out.append(_notes(notes))
        out.append(img_html(report.figures.get("reliability"), "reliability diagrams"))

    out.append('<h2 id="figures">Figures</h2>')
    figs = report.figures
    if not figs:
        out.append("<p>Figures were not drawn (--no-figures).</p>")
    else:
        out.append("<h3>Accuracy vs. percentile</h3>" + img_html(figs.get("accuracy_curves"), "accuracy curves"))
        out.append("<h3>Macro F1 vs. percentile</h3>" + img_html(figs.get("f1_curves"), "F1 curves"))
        out.append("<h3>Concept figure: GradTrust vs. softmax</h3>")
        out.append('<p class="legend">One point per sample; green = correct, red = wrong. Dashed lines: the '
                   "medians; each quadrant gives its wrong predictions out of its samples. The paper's claim: "
                   "many wrong predictions with low GradTrust and high softmax (top left), none with low "
                   "softmax and high GradTrust (bottom right).</p>")
        for r in report.results:
            path = figs.get(f"scatter/{r.name}")
            if path is None:
                out.append(f"<p>{e(r.name)}: no concept figure (needs both gradtrust and softmax).</p>")
            else:
                out.append(figure_details(r.name, path, "scatter " + r.name))
        out.append("<h3>Qualitative grid: confident mistakes, lowest GradTrust first</h3>")
        for r in report.results:
            path = figs.get(f"qualitative/{r.name}")
            if path is None:
                why = report.qualitative_notes.get(r.name, "")
                out.append(f"<p>{e(r.name)}: no grid{': ' + e(why) if why else ''}.</p>")
            else:
                out.append(figure_details(r.name, path, "qualitative " + r.name))

    galleries = [(r, figs[f"explanations/{r.name}"]) for r in report.results if f"explanations/{r.name}" in figs]
    if galleries:  # written by gradtrust.reporting.explanations (docs/explanations.md)
        out.append("<h3>Explanations: Why P? What if not P? Why P, rather than Q? VOICE uncertainty</h3>")
        for r, path in galleries:
            out.append(figure_details(r.name, path, "explanations " + r.name))

    out.append('<h2 id="manifests">Runs and their manifests</h2>')
    for r in report.results:
        run = r.run
        body = json.dumps(run.manifest, indent=2, sort_keys=False, default=str) if run.manifest else "(no manifest)"
        extra = _notes(run.notes)
        out.append(f"<details><summary><strong>{e(run.name)}</strong> — <code>{e(str(run.source))}</code>; "
                   f"dataset {e(run.dataset_label)}; {run.n} samples, {len(run.methods)} methods</summary>"
                   f"{extra}<pre>{e(body)}</pre></details>")
    return "\n".join(out)
