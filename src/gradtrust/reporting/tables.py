"""The numbers of the report: every metric of every method of every run, and the tables built from them.

* :func:`evaluate_run` computes, for one run, :func:`gradtrust.evaluation.evaluate` per method, the
  accuracy / F1 percentile curves, the random and oracle references, and seeded bootstrap CIs of the
  selective metrics; undefined values are NaN with the reason in words.
* :func:`group_runs` puts runs of one dataset together (see :data:`gradtrust.reporting.runs.CONDITION_KEYS`),
  ordered by accuracy, ascending, as the paper's table.
* The paper's table (:func:`paper_table_markdown`, :func:`paper_table_frame`), the selective table
  (:func:`selective_markdown`, :func:`selective_frame`) and the summary (:func:`summarise`,
  :func:`summary_markdown`).

Bold = top two of a row, per metric, by the exact (unrounded) values: a method is bold when fewer than two
methods are strictly better. A row where every method has the same value bolds none (it says so).
"""

from __future__ import annotations

import html as _html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradtrust.evaluation import (
    accuracy_curve,
    bootstrap_ci,
    evaluate,
    f1_curve,
    oracle_reference,
    random_reference,
)
from gradtrust.reporting.runs import Run

__all__ = [
    "DISPLAY_NAMES",
    "METHOD_ORDER",
    "PAPER_METHODS",
    "SELECTIVE_METRICS",
    "SUMMARY_METRICS",
    "Group",
    "MethodResult",
    "RunResult",
    "Summary",
    "display_name",
    "evaluate_run",
    "group_runs",
    "order_methods",
    "paper_table_frame",
    "paper_table_markdown",
    "selective_frame",
    "selective_markdown",
    "summarise",
    "summary_markdown",
    "top_two",
]

#: The methods of the paper's table, in its column order (Purview has two variants here).
PAPER_METHODS = (
    "softmax", "entropy", "max_logit", "margin", "odin", "mc_dropout", "gradnorm",
    "purview_initial", "purview_final", "gradtrust",
)
#: Column order of every table: the paper's methods, then the slides' top-k GradTrust, then the rest.
METHOD_ORDER = PAPER_METHODS + (
    "gradtrust_topk", "brier", "logit_margin", "energy", "doctor", "maxlogit_pnorm",
)
DISPLAY_NAMES = {
    "softmax": "Softmax",
    "entropy": "Entropy",
    "max_logit": "NLL (max logit)",
    "margin": "Margin",
    "odin": "ODIN",
    "mc_dropout": "MCD",
    "gradnorm": "GradNorm",
    "purview_initial": "Purview (initial)",
    "purview_final": "Purview (final)",
    "gradtrust": "GradTrust",
    "gradtrust_topk": "GradTrust top-k",
    "brier": "Brier",
    "logit_margin": "Logit margin",
    "energy": "Energy",
    "doctor": "DOCTOR",
    "maxlogit_pnorm": "MaxLogit-pNorm",
}
METRIC_NAMES = {
    "auac": "AUAC",
    "aufc": "AUFC",
    "aurc": "AURC",
    "eaurc": "E-AURC",
    "augrc": "AUGRC",
    "auroc": "AUROC",
    "fpr_at_95tpr": "FPR@95",
}
#: Metrics of the second table, each with a bootstrap CI.
SELECTIVE_METRICS = ("aurc", "augrc", "auroc", "fpr_at_95tpr")
#: Metrics the summary names a winner for.
SUMMARY_METRICS = ("auac", "aufc") + SELECTIVE_METRICS
HIGHER_IS_BETTER = {"auac": True, "aufc": True, "aurc": False, "eaurc": False, "augrc": False,
                    "auroc": True, "fpr_at_95tpr": False}
ALL_METRICS = ("auac", "aufc", "aurc", "eaurc", "augrc", "auroc", "fpr_at_95tpr")


def display_name(method: str) -> str:
    return DISPLAY_NAMES.get(method, method)


def order_methods(methods: Iterable[str]) -> list[str]:
    """Known methods in :data:`METHOD_ORDER`, then unknown ones in the order given."""
    methods = list(dict.fromkeys(methods))
    known = [m for m in METHOD_ORDER if m in methods]
    return known + [m for m in methods if m not in METHOD_ORDER]


# ------------------------------------------------------------------------------------------ metrics


@dataclass
class MethodResult:
    """Every metric of one method on one run. ``values[m]`` is NaN where undefined, ``reasons[m]`` says why;
    ``values`` also holds ``n_nan``, ``accuracy`` and ``<m>_low``/``<m>_high`` for :data:`SELECTIVE_METRICS`."""

    values: dict[str, float]
    reasons: dict[str, str] = field(default_factory=dict)
    note: str = ""

    def get(self, metric: str) -> float:
        v = self.values.get(metric, float("nan"))
        return float(v) if v is not None else float("nan")


@dataclass
class RunResult:
    """Everything the report shows of one run."""

    run: Run
    methods: dict[str, MethodResult]
    random: dict[str, float]
    oracle: dict[str, float]
    accuracy_curves: dict[str, np.ndarray]
    f1_curves: dict[str, np.ndarray]
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def accuracy(self) -> float:
        return self.run.accuracy

    def value(self, method: str, metric: str) -> float:
        r = self.methods.get(method)
        return float("nan") if r is None else r.get(metric)


def _undefined_reason(run: Run, metric: str) -> str:
    if metric in ("auroc", "fpr_at_95tpr"):
        if run.n_wrong == 0:
            return "no wrong predictions (every prediction is correct)"
        if run.n_wrong == run.n:
            return "no correct predictions (every prediction is wrong)"
    return "undefined on this data"


def selective_cis(scores: np.ndarray, correct: np.ndarray, metrics: Sequence[str], *, resamples: int,
                  confidence: float, seed: int) -> dict[str, tuple[float, float]]:
    """Bootstrap CIs of several rank metrics, identical to :func:`gradtrust.evaluation.bootstrap_ci` per
    metric (same seed, same resamples).

    All metrics are computed from one pass over the resamples through the evaluation package's shared
    vectorised bootstrap (about 2.5x faster than one ``bootstrap_ci`` call per metric); if that internal
    function is not there (or changed signature), it falls back to the public ``bootstrap_ci``. The tests
    check that both give the same intervals.
    """
    metrics = list(metrics)
    if not metrics:
        return {}
    try:
        from gradtrust.evaluation.bootstrap import _interval, _vectorised

        dists = _vectorised(metrics, scores, correct, None, int(resamples), seed)
        return {m: _interval(dists[m], float(confidence)) for m in metrics}
    except (ImportError, TypeError, KeyError, AttributeError):
        return {m: bootstrap_ci(m, scores, correct, n_resamples=resamples, confidence=confidence, seed=seed)
                for m in metrics}


def evaluate_run(run: Run, *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                 curves: bool = True) -> RunResult:
    """All metrics, curves and references of one run. ``resamples=0`` skips the bootstrap CIs."""
    y, p, c = run.labels, run.predictions, run.correct
    methods: dict[str, MethodResult] = {}
    acc_curves: dict[str, np.ndarray] = {}
    f1c: dict[str, np.ndarray] = {}
    notes = list(run.notes)
    for method in order_methods(run.methods):
        s = run.scores(method)
        n_nan = int(np.isnan(s).sum())
        if n_nan == len(s):
            why = run.nan_reason(method) or "every score is NaN"
            values = {m: float("nan") for m in ALL_METRICS}
            values.update(n=len(s), n_nan=n_nan, accuracy=run.accuracy)
            methods[method] = MethodResult(
                values, {m: f"all scores undefined: {why}" for m in ALL_METRICS},
                note=f"{display_name(method)}: all {len(s)} scores undefined ({why}).")
            notes.append(methods[method].note)
            continue
        values = evaluate(s, y, p)
        reasons = {m: _undefined_reason(run, m) for m in ALL_METRICS if _isnan(values.get(m))}
        if resamples:
            wanted = [m for m in SELECTIVE_METRICS if not _isnan(values.get(m))]
            cis = selective_cis(s, c, wanted, resamples=resamples, confidence=confidence, seed=seed)
            for m in SELECTIVE_METRICS:
                values[f"{m}_low"], values[f"{m}_high"] = cis.get(m, (float("nan"), float("nan")))
        note = ""
        if n_nan:
            why = run.nan_reason(method)
            note = (f"{display_name(method)}: {n_nan} of {len(s)} scores undefined (NaN), ranked least "
                    f"trustworthy{': ' + why if why else ''}.")
            notes.append(note)
        methods[method] = MethodResult(values, reasons, note)
        if curves:
            acc_curves[method] = accuracy_curve(s, c)
            f1c[method] = f1_curve(s, y, p)
    if run.n_wrong == 0:
        notes.append("no wrong predictions: AUROC and FPR@95 are undefined (n/a); every AUAC is 100.")
    elif run.n_wrong == run.n:
        notes.append("no correct predictions: AUROC and FPR@95 are undefined (n/a); every AUAC is 0.")
    return RunResult(run, methods, random_reference(c), oracle_reference(c), acc_curves, f1c, notes)


def _isnan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


# ------------------------------------------------------------------------------------------- groups


@dataclass
class Group:
    """Runs of one dataset, ordered by accuracy ascending; ``methods`` is the union of their methods."""

    key: str
    label: str
    results: list[RunResult]
    methods: list[str]


def group_runs(results: Sequence[RunResult]) -> list[Group]:
    """Split runs by dataset identity (first appearance order); each group sorted by accuracy, ascending."""
    by_key: dict[str, list[RunResult]] = {}
    labels: dict[str, str] = {}
    for r in results:
        by_key.setdefault(r.run.dataset_key, []).append(r)
        labels.setdefault(r.run.dataset_key, r.run.dataset_label)
    groups = []
    label_count: dict[str, int] = {}
    for lab in labels.values():
        label_count[lab] = label_count.get(lab, 0) + 1
    for i, (key, rs) in enumerate(by_key.items()):
        rs = sorted(rs, key=lambda r: (r.accuracy, r.name))
        methods = order_methods(m for r in rs for m in r.run.methods)
        label = labels[key] if label_count[labels[key]] == 1 else f"{labels[key]} #{i + 1}"
        groups.append(Group(key, label, rs, methods))
    return groups


def top_two(values: dict[str, float], higher: bool = True) -> tuple[set[str], bool]:
    """Methods with fewer than two strictly better (NaN ignored); and whether the whole row is one tie."""
    finite = {m: v for m, v in values.items() if not _isnan(v)}
    if not finite:
        return set(), False
    if len(finite) > 1 and len(set(finite.values())) == 1:
        return set(), True
    out = set()
    for m, v in finite.items():
        better = sum(1 for w in finite.values() if (w > v if higher else w < v))
        if better < 2:
            out.add(m)
    return out, False


def rank_of(method: str, values: dict[str, float], higher: bool = True) -> int | None:
    """1 + the number of methods strictly better (ties share a rank); None where undefined."""
    v = values.get(method)
    if v is None or _isnan(v):
        return None
    return 1 + sum(1 for w in values.values() if not _isnan(w) and bool(w > v if higher else w < v))


def row_values(result: RunResult, methods: Sequence[str], metric: str) -> dict[str, float]:
    return {m: result.value(m, metric) for m in methods if m in result.methods}


# ------------------------------------------------------------------------------------- paper table


def _fmt(v: float, digits: int = 2) -> str:
    return "n/a" if _isnan(v) else f"{v:.{digits}f}"


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
            winners, tie = top_two(row_values(r, group.methods, metric), True)
            bold[metric] = winners
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


PAPER_LEGEND = (
    "Cells: AUAC / AUFC (area under the accuracy / macro-F1 vs. percentile curve, ×100, higher is better). "
    "In each row the top two methods of each metric are **bold**. Rows: runs ordered by accuracy, ascending. "
    "Random (AUAC) = expected AUAC of a random score = 100·A; Oracle (AUAC) = a perfect score's "
    "100·(A − A ln A) at accuracy A (AUFC has no such reference: it depends on which classes the errors "
    "fall in). Empty cell: method not scored in that run; n/a: undefined (see the notes)."
)


def paper_table_markdown(groups: Sequence[Group], warnings: Sequence[str] = ()) -> str:
    """``table.md``: the paper's table, one section per dataset."""
    out = ["# Quantitative results (AUAC / AUFC)", ""]
    for w in warnings:
        out += [f"> **Warning:** {w}", ""]
    out += [PAPER_LEGEND, ""]
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


# --------------------------------------------------------------------------------- selective table


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


def _ci_cell(v: float, lo: float | None, hi: float | None) -> str:
    if _isnan(v):
        return "n/a"
    base = f"{100 * v:.2f}"
    if lo is None or hi is None or _isnan(lo) or _isnan(hi):
        return base
    return f"{base} [{100 * lo:.2f}, {100 * hi:.2f}]"


def selective_cells(result: RunResult, methods: Sequence[str], html: bool = False
                    ) -> tuple[list[str], list[list[str]], list[str]]:
    esc = _html.escape if html else (lambda t: t)
    header = ["method"] + [f"{METRIC_NAMES[m]} ×100" for m in SELECTIVE_METRICS] + ["NaN scores"]
    best = {}
    for metric in SELECTIVE_METRICS:
        vals = row_values(result, methods, metric)
        finite = [v for v in vals.values() if not _isnan(v)]
        if finite and len(set(finite)) > 1:
            target = max(finite) if HIGHER_IS_BETTER[metric] else min(finite)
            best[metric] = {m for m, v in vals.items() if v == target}
        else:
            best[metric] = set()
    rows, notes = [], []
    for m in methods:
        if m not in result.methods:
            continue
        mr = result.methods[m]
        cells = [esc(display_name(m))]
        for metric in SELECTIVE_METRICS:
            text = _ci_cell(mr.get(metric), mr.values.get(f"{metric}_low"), mr.values.get(f"{metric}_high"))
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
                    + [_ci_cell(ref.get(metric, float("nan")), None, None) for metric in SELECTIVE_METRICS]
                    + ["–"])
    return header, rows, list(dict.fromkeys(notes))


def selective_markdown(groups: Sequence[Group], *, resamples: int, seed: int, confidence: float = 0.95,
                       warnings: Sequence[str] = ()) -> str:
    """``selective.md``: AURC / AUGRC / AUROC / FPR@95 (×100) with CIs, one table per run."""
    out = ["# Selective classification (AURC, AUGRC, AUROC, FPR@95)", ""]
    for w in warnings:
        out += [f"> **Warning:** {w}", ""]
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
    """``selective.csv``: one row per (run, method) plus the two reference rows per run; fractions (AUAC and
    AUFC in [0, 100] as everywhere), ``<metric>_low``/``_high`` the bootstrap interval."""
    import pandas as pd

    rows = []
    for g in groups:
        for r in g.results:
            base = {"dataset": g.label, "run": r.name, "model": r.run.model, "condition": r.run.condition,
                    "n": r.run.n, "accuracy": r.accuracy}
            for m in g.methods:
                if m not in r.methods:
                    continue
                mr = r.methods[m]
                row = dict(base, method=m, n_nan=int(mr.values.get("n_nan", 0)))
                for metric in ALL_METRICS:
                    row[metric] = mr.get(metric)
                    if metric in SELECTIVE_METRICS:
                        row[f"{metric}_low"] = mr.values.get(f"{metric}_low", float("nan"))
                        row[f"{metric}_high"] = mr.values.get(f"{metric}_high", float("nan"))
                row["undefined"] = "; ".join(f"{k}: {v}" for k, v in mr.reasons.items())
                rows.append(row)
            for ref_name, ref in (("random_reference", r.random), ("oracle_reference", r.oracle)):
                row = dict(base, method=ref_name, n_nan=0)
                for metric in ALL_METRICS:
                    row[metric] = ref.get(metric, float("nan"))
                rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ summary


@dataclass
class Summary:
    """Who wins each (run, metric) cell and how often GradTrust is in the top two.

    ``winners[(run, metric)]`` lists the best method(s) (ties all listed); ``ranks[(run, metric)]`` is
    GradTrust's rank there (1 = best, ties share), ``None`` where it was not scored; ``top2`` counts, per
    metric, the rows where GradTrust is top two among all methods of the run (``top2_paper``: among the
    paper's methods only) and ``rows`` how many rows had it. A row where every method has the same value
    (e.g. every prediction right, or every one wrong: no score can separate anything) counts for nobody:
    it is left out of ``rows``, ``top2`` and ``wins`` and counted in ``ties``.
    """

    winners: dict[tuple[str, str], list[str]]
    ranks: dict[tuple[str, str], int | None]
    top2: dict[str, int]
    top2_paper: dict[str, int]
    rows: dict[str, int]
    wins: dict[str, int]
    run_order: list[str]
    method: str = "gradtrust"
    ties: dict[str, int] = field(default_factory=dict)

    def claim_line(self, metrics: Sequence[str] = ("auac", "aufc")) -> str:
        total = sum(self.rows.get(m, 0) for m in metrics)
        hit = sum(self.top2.get(m, 0) for m in metrics)
        hit_p = sum(self.top2_paper.get(m, 0) for m in metrics)
        per = ", ".join(f"{METRIC_NAMES[m]} {self.top2.get(m, 0)}/{self.rows.get(m, 0)}" for m in metrics)
        tied = sum(self.ties.get(m, 0) for m in metrics)
        ties = (f" {tied} cells where every method ties (e.g. all predictions right or all wrong) count for "
                "nobody." if tied else "")
        return (f"{display_name(self.method)} is top-2 in {hit} of {total} (run, metric) cells among all "
                f"methods ({per}); among the paper's methods only: {hit_p} of {total}.{ties} "
                "(The paper claims top-2 in 37 of 38 cells on ImageNet/Kinetics.)")


def summarise(groups: Sequence[Group], method: str = "gradtrust") -> Summary:
    winners: dict[tuple[str, str], list[str]] = {}
    ranks: dict[tuple[str, str], int | None] = {}
    top2 = {m: 0 for m in SUMMARY_METRICS}
    top2_paper = {m: 0 for m in SUMMARY_METRICS}
    rows = {m: 0 for m in SUMMARY_METRICS}
    ties = {m: 0 for m in SUMMARY_METRICS}
    wins: dict[str, int] = {}
    order = []
    for g in groups:
        for r in g.results:
            order.append(r.name)
            for metric in SUMMARY_METRICS:
                higher = HIGHER_IS_BETTER[metric]
                vals = row_values(r, g.methods, metric)
                finite = {m: v for m, v in vals.items() if not _isnan(v)}
                if len(finite) > 1 and len(set(finite.values())) == 1:  # every method ties: nobody's cell
                    winners[(r.name, metric)] = []
                    ranks[(r.name, metric)] = None
                    ties[metric] += 1
                    continue
                if finite:
                    target = max(finite.values()) if higher else min(finite.values())
                    best = [m for m, v in finite.items() if v == target]
                    winners[(r.name, metric)] = best if len(best) < len(finite) or len(finite) == 1 else []
                    for m in winners[(r.name, metric)]:
                        wins[m] = wins.get(m, 0) + 1
                else:
                    winners[(r.name, metric)] = []
                ranks[(r.name, metric)] = rank_of(method, vals, higher) if method in vals else None
                if method in finite:
                    rows[metric] += 1
                    if (rank_of(method, vals, higher) or 3) <= 2:
                        top2[metric] += 1
                    paper_vals = {m: v for m, v in vals.items() if m in PAPER_METHODS or m == method}
                    if (rank_of(method, paper_vals, higher) or 3) <= 2:
                        top2_paper[metric] += 1
    return Summary(winners, ranks, top2, top2_paper, rows, wins, order, method, ties)


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
    out = ["# Summary: which trust score wins", ""]
    for w in warnings:
        out += [f"> **Warning:** {w}", ""]
    out += [f"- {summary.claim_line()}",
            f"- Over all six metrics ({', '.join(METRIC_NAMES[m] for m in SUMMARY_METRICS)}): "
            + summary.claim_line(SUMMARY_METRICS).split(" (The paper")[0],
            ]
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
