"""Rendering of the report's numbers (:mod:`gradtrust.reporting.results`) as Markdown, CSV-ready frames and
HTML cells: the paper's table, the selective table and the summary.

Bold = top two of a row, per metric, by the exact (unrounded) values: a method is bold when fewer than two
methods are strictly better. A row where every method has the same value bolds none (it says so).
"""

from __future__ import annotations

import html as _html
from collections.abc import Sequence
from typing import Any

from gradtrust.catalogue import display_name, order_methods
from gradtrust.evaluation.bootstrap import ci_text
from gradtrust.reporting.results import (
    ALL_METRICS,
    HIGHER_IS_BETTER,
    METRIC_NAMES,
    SELECTIVE_METRICS,
    SUMMARY_METRICS,
    Group,
    RunResult,
    Summary,
    is_missing,
    row_values,
    selective_cis,
    summarise,
    top_two,
)

# display_name, SELECTIVE_METRICS, selective_cis and top_two are also imported from here (tests).
__all__ = ["PAPER_LEGEND", "SELECTIVE_METRICS", "ci_text", "display_name", "paper_cells", "paper_table_frame",
           "paper_table_markdown", "selective_cells", "selective_cis", "selective_frame", "selective_legend",
           "selective_markdown", "indistinguishable_leaders", "summary_cells", "summary_markdown", "top_two"]


def _fmt(v: float, digits: int = 2) -> str:
    return "n/a" if is_missing(v) else f"{v:.{digits}f}"


def _bold(text: str, on: bool, html: bool = False) -> str:
    if not on or text == "n/a":
        return text
    return f"<strong>{text}</strong>" if html else f"**{text}**"


def paper_cells(group: Group, html: bool = False) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, notes) of the paper's table for one group; cells already formatted."""
    esc = _html.escape if html else (lambda t: t)
    header = ["run", "accuracy (%)", "n"] + [esc(display_name(m)) for m in group.methods] + [
        "Random (AUAC)", "Oracle (AUAC)"]
    rows, notes = [], []
    for r in group.results:
        bold = {}
        for metric in ("auac", "aufc"):
            bold[metric], tie = top_two(row_values(r, group.methods, metric), True)
            if tie:
                notes.append(f"{r.name}: every method has the same {METRIC_NAMES[metric]}; nothing bold.")
        cells = [esc(r.name), f"{100 * r.accuracy:.2f}", str(r.run.n)]
        for m in group.methods:
            if m not in r.methods:
                cells.append("")
                continue
            a = _bold(_fmt(r.value(m, "auac")), m in bold["auac"], html)
            f = _bold(_fmt(r.value(m, "aufc")), m in bold["aufc"], html)
            cells.append(f"{a} / {f}")
        cells += [_fmt(r.random["auac"]), _fmt(r.oracle["auac"])]
        rows.append(cells)
        for m in group.methods:
            if m in r.methods:
                for why, metrics in _by_reason(r.methods[m].reasons, ("auac", "aufc")).items():
                    notes.append(f"{r.name}, {display_name(m)}: {' and '.join(metrics)} n/a: {why}.")
        missing = [m for m in group.methods if m not in r.methods]
        skipped = r.run.manifest.get("skipped") or {}  # why the scorer left a default method out
        for m in [m for m in missing if isinstance(skipped, dict) and skipped.get(m)]:
            notes.append(f"{r.name}: no column for {display_name(m)} (empty cells): {skipped[m]}")
        unexplained = [display_name(m) for m in missing if not (isinstance(skipped, dict) and skipped.get(m))]
        if unexplained:
            notes.append(f"{r.name}: no column for {', '.join(unexplained)} (empty cells: the method was not "
                         "scored in this run).")
    return header, rows, notes


def _by_reason(reasons: dict[str, str], metrics: Sequence[str]) -> dict[str, list[str]]:
    """``{reason: [metric display names]}`` for the undefined metrics among ``metrics``."""
    out: dict[str, list[str]] = {}
    for metric in metrics:
        why = reasons.get(metric)
        if why:
            out.setdefault(why, []).append(METRIC_NAMES[metric])
    return out


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")
    lines = ["| " + " | ".join(esc(h) for h in header) + " |",
             "| " + " | ".join("---" if i == 0 else "---:" for i in range(len(header))) + " |"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _md_head(title: str, warnings: Sequence[str]) -> list[str]:
    """The lines of a Markdown file's title and its warnings."""
    out = [f"# {title}", ""]
    for w in warnings:
        out += [f"> **Warning:** {w}", ""]
    return out


PAPER_LEGEND = (
    "Cells: AUAC / AUFC (area under the accuracy / macro-F1 vs. percentile curve, ×100, higher is better). "
    "In each row the top two methods of each metric are **bold**. Rows: runs ordered by accuracy, ascending. "
    "Random (AUAC) = expected AUAC of a random score = 100·A; Oracle (AUAC) = a perfect score's "
    "100·(A − A ln A) at accuracy A (AUFC has no such reference: it depends on which classes the errors "
    "fall in). Empty cell: method not scored in that run; n/a: undefined (see the notes)."
)


def paper_table_markdown(groups: Sequence[Group], warnings: Sequence[str] = ()) -> str:
    """``table.md``: the paper's table, one section per dataset."""
    out = _md_head("Quantitative results (AUAC / AUFC)", warnings) + [PAPER_LEGEND, ""]
    for g in groups:
        header, rows, notes = paper_cells(g)
        if len(groups) > 1:
            out += [f"## Dataset: {g.label}", ""]
        out += [_md_table(header, rows), ""]
        if notes:
            out += ["Notes:", ""] + [f"- {n}" for n in dict.fromkeys(notes)] + [""]
    return "\n".join(out).rstrip() + "\n"


def paper_table_frame(groups: Sequence[Group]):
    """``table.csv``: one row per run, numeric; one column per method × metric (``<method>_auac``…)."""
    import pandas as pd

    methods = order_methods(m for g in groups for m in g.methods)
    rows = []
    for g in groups:
        for r in g.results:
            row: dict[str, Any] = {
                "dataset": g.label,
                "run": r.name,
                "model": r.run.model,
                "condition": r.run.condition,
                "source": str(r.run.source),
                "n": r.run.n,
                "n_unlabeled": r.run.n_unlabeled,
                "n_wrong": r.run.n_wrong,
                "accuracy_pct": 100.0 * r.accuracy,
                "random_auac": r.random["auac"],
                "oracle_auac": r.oracle["auac"],
            }
            for m in methods:
                for metric in ("auac", "aufc"):
                    row[f"{m}_{metric}"] = r.value(m, metric) if m in r.methods else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)


def selective_legend(resamples: int, seed: int, confidence: float = 0.95) -> str:
    """The explanation printed above the selective table."""
    if resamples:
        ci = (f"Values ×100, with bootstrap {100 * confidence:g}% confidence intervals in brackets "
              f"(percentile bootstrap, {resamples} resamples, seed {seed}). ")
    else:
        ci = "Values ×100 (no confidence intervals: bootstrap off). "
    return ci + (
        "AURC: area under the selective risk–coverage curve; AUGRC: area under the generalised risk "
        "(accepted errors / all samples) curve; lower is better for both. AUROC: correct vs. wrong "
        "predictions, higher is better. FPR@95: share of wrong predictions accepted when 95% of the correct "
        "ones are, lower is better. Thresholds at distinct score values (tied scores are accepted or "
        "rejected together). Best method of each run per metric in **bold**. The random and oracle rows "
        "are references (expected value of a random score; a perfect score), not methods."
    )


def indistinguishable_leaders(result: RunResult, methods: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``{metric: (best, second)}`` for each selective metric whose two best methods (by the exact values)
    have overlapping bootstrap intervals: on this run the data cannot tell them apart."""
    out = {}
    for metric in SELECTIVE_METRICS:
        ranked = sorted(((v, m) for m, v in row_values(result, methods, metric).items() if not is_missing(v)),
                        reverse=HIGHER_IS_BETTER[metric])
        if len(ranked) < 2:
            continue
        (_, first), (_, second) = ranked[:2]
        ends = [result.methods[m].values.get(f"{metric}_{end}") for end in ("low", "high") for m in (first, second)]
        if any(v is None or is_missing(v) for v in ends):
            continue
        low_a, low_b, high_a, high_b = (float(v) for v in ends)  # type: ignore[arg-type]
        if max(low_a, low_b) <= min(high_a, high_b):
            out[metric] = (first, second)
    return out


def selective_cells(result: RunResult, methods: Sequence[str], html: bool = False
                    ) -> tuple[list[str], list[list[str]], list[str]]:
    esc = _html.escape if html else (lambda t: t)
    header = ["method"] + [f"{METRIC_NAMES[m]} ×100" for m in SELECTIVE_METRICS] + ["NaN scores"]
    best = {}
    for metric in SELECTIVE_METRICS:
        vals = row_values(result, methods, metric)
        finite = [v for v in vals.values() if not is_missing(v)]
        target = (max if HIGHER_IS_BETTER[metric] else min)(finite) if len(set(finite)) > 1 else None
        best[metric] = {m for m, v in vals.items() if v == target}
    rows, notes = [], []
    close = indistinguishable_leaders(result, methods)
    if close:
        pairs = "; ".join(f"{METRIC_NAMES[k]}: {display_name(a)} and {display_name(b)}" for k, (a, b) in close.items())
        notes.append(f"Warning: the best two methods are within each other's intervals ({pairs}) on n = "
                     f"{result.run.n} samples: their order here is not distinguishable from chance.")
    for m in methods:
        if m not in result.methods:
            continue
        mr = result.methods[m]
        cells = [esc(display_name(m))]
        for metric in SELECTIVE_METRICS:
            text = ci_text(mr.get(metric), mr.values.get(f"{metric}_low"), mr.values.get(f"{metric}_high"))
            if text != "n/a" and m in best[metric]:
                head, _, rest = text.partition(" ")
                text = _bold(head, True, html) + (f" {rest}" if rest else "")
            cells.append(text)
        for why, metrics in _by_reason(mr.reasons, SELECTIVE_METRICS).items():
            notes.append(f"{display_name(m)}: {', '.join(metrics)} n/a: {why}.")
        cells.append(str(int(mr.values.get("n_nan", 0))))
        rows.append(cells)
    for ref_name, ref in (("random (reference)", result.random), ("oracle (reference)", result.oracle)):
        rows.append([f"*{ref_name}*" if not html else f"<em>{ref_name}</em>"]
                    + [ci_text(ref.get(metric)) for metric in SELECTIVE_METRICS]
                    + ["–"])
    return header, rows, list(dict.fromkeys(notes))


def selective_markdown(groups: Sequence[Group], *, resamples: int, seed: int, confidence: float = 0.95,
                       warnings: Sequence[str] = ()) -> str:
    """``selective.md``: AURC / AUGRC / AUROC / FPR@95 (×100) with CIs, one table per run."""
    out = _md_head("Selective classification (AURC, AUGRC, AUROC, FPR@95)", warnings)
    out += [selective_legend(resamples, seed, confidence), ""]
    for g in groups:
        if len(groups) > 1:
            out += [f"## Dataset: {g.label}", ""]
        for r in g.results:
            header, rows, notes = selective_cells(r, g.methods)
            out += [f"### {r.name} (accuracy {100 * r.accuracy:.2f}%, n = {r.run.n})", "",
                    _md_table(header, rows), ""]
            if notes:
                out += [f"- {n}" for n in notes] + [""]
    return "\n".join(out).rstrip() + "\n"


def selective_frame(groups: Sequence[Group]):
    """``selective.csv``: one row per (run, method) plus the two reference rows per run; every rate in
    percent, as on the page and in ``table.csv``, the scale in each column's name (``aurc_pct``,
    ``aurc_low_pct``/``aurc_high_pct`` the bootstrap interval, ``accuracy_pct``)."""
    import pandas as pd

    def pct(metric: str, value: float) -> float:  # AUAC and AUFC are percentages already
        return value if metric in ("auac", "aufc") else 100.0 * value

    rows = []
    for g in groups:
        for r in g.results:
            base = {"dataset": g.label, "run": r.name, "model": r.run.model, "condition": r.run.condition,
                    "n": r.run.n, "accuracy_pct": 100.0 * r.accuracy}
            for m in g.methods:
                if m not in r.methods:
                    continue
                mr = r.methods[m]
                row = dict(base, method=m, n_nan=int(mr.values.get("n_nan", 0)))
                for metric in ALL_METRICS:
                    row[f"{metric}_pct"] = pct(metric, mr.get(metric))
                    if metric in SELECTIVE_METRICS:
                        for end in ("low", "high"):
                            row[f"{metric}_{end}_pct"] = pct(metric, mr.values.get(f"{metric}_{end}", float("nan")))
                row["undefined"] = "; ".join(f"{k}: {v}" for k, v in mr.reasons.items())
                rows.append(row)
            for ref_name, ref in (("random_reference", r.random), ("oracle_reference", r.oracle)):
                rows.append(dict(base, method=ref_name, n_nan=0,
                                 **{f"{m}_pct": pct(m, ref.get(m, float("nan"))) for m in ALL_METRICS}))
    return pd.DataFrame(rows)


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def summary_cells(summary: Summary) -> tuple[list[str], list[list[str]]]:
    header = ["run"] + [f"{METRIC_NAMES[m]} ({'↑' if HIGHER_IS_BETTER[m] else '↓'})" for m in SUMMARY_METRICS]
    rows = []
    for name in summary.run_order:
        cells = [name]
        for metric in SUMMARY_METRICS:
            w = summary.winners.get((name, metric), [])
            text = ", ".join(display_name(m) for m in w) if w else "tie / n/a"
            k = summary.ranks.get((name, metric))
            if k is not None and summary.method not in w:
                text += f" ({display_name(summary.method)} {_ordinal(k)})"
            cells.append(text)
        rows.append(cells)
    return header, rows


def summary_markdown(summary: Summary, groups: Sequence[Group], warnings: Sequence[str] = ()) -> str:
    """``summary.md``: the winner of each (run, metric), GradTrust's rank, and the top-2 count."""
    out = _md_head("Summary: which trust score wins", warnings) + [
        f"- {summary.claim_line()}",
        f"- Over all six metrics ({', '.join(METRIC_NAMES[m] for m in SUMMARY_METRICS)}): "
        + summary.claim_line(SUMMARY_METRICS).split(" (The paper")[0]]
    if "gradtrust_topk" in {m for g in groups for m in g.methods} and summary.method == "gradtrust":
        alt = summarise(groups, "gradtrust_topk")
        out.append(f"- {alt.claim_line()}".replace(" (The paper claims top-2 in 37 of 38 cells on "
                                                   "ImageNet/Kinetics.)", ""))
    if summary.wins:
        ranked = sorted(summary.wins.items(), key=lambda kv: (-kv[1], kv[0]))
        out.append("- Wins per method (cells where it is best, ties counted for each): "
                   + ", ".join(f"{display_name(m)} {k}" for m, k in ranked) + ".")
    out += ["", f"Winner of each (run, metric) cell; in brackets {display_name(summary.method)}'s rank "
            "when it does not win (↑ higher is better, ↓ lower is better).", ""]
    header, rows = summary_cells(summary)
    out += [_md_table(header, rows), ""]
    return "\n".join(out).rstrip() + "\n"
