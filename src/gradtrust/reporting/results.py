"""The numbers of the report: every metric of every method of every run (:func:`evaluate_run`), the runs
grouped by dataset (:func:`group_runs`), and who wins each (run, metric) cell (:func:`summarise`). Rendering is
in :mod:`gradtrust.reporting.tables`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gradtrust.catalogue import display_name, order_methods, paper_methods
from gradtrust.evaluation import (
    accuracy_curve,
    bootstrap_cis,
    evaluate,
    f1_curve,
    oracle_reference,
    random_reference,
)
from gradtrust.reporting.runs import LoadProblem, Run

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
    metric (same seed, same resamples), drawn once for all metrics by
    :func:`gradtrust.evaluation.bootstrap_cis`."""
    return bootstrap_cis(list(metrics), scores, correct, n_resamples=int(resamples), confidence=float(confidence),
                         seed=seed)


def evaluate_run(run: Run, *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> RunResult:
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
        reasons = {m: _undefined_reason(run, m) for m in ALL_METRICS if is_missing(values.get(m))}
        if resamples:
            wanted = [m for m in SELECTIVE_METRICS if not is_missing(values.get(m))]
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
        acc_curves[method] = accuracy_curve(s, c)
        f1c[method] = f1_curve(s, y, p)
    if run.n_wrong == 0:
        notes.append("no wrong predictions: AUROC and FPR@95 are undefined (n/a); every AUAC is 100.")
    elif run.n_wrong == run.n:
        notes.append("no correct predictions: AUROC and FPR@95 are undefined (n/a); every AUAC is 0.")
    return RunResult(run, methods, random_reference(c), oracle_reference(c), acc_curves, f1c, notes)


def is_missing(v: Any) -> bool:
    """Whether a table value is absent: None or a float NaN."""
    return v is None or (isinstance(v, float) and math.isnan(v))


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
    label_count = Counter(labels.values())
    for i, (key, rs) in enumerate(by_key.items()):
        rs = sorted(rs, key=lambda r: (r.accuracy, r.name))
        methods = order_methods(m for r in rs for m in r.run.methods)
        label = labels[key] if label_count[labels[key]] == 1 else f"{labels[key]} #{i + 1}"
        groups.append(Group(key, label, rs, methods))
    return groups


def top_two(values: dict[str, float], higher: bool = True) -> tuple[set[str], bool]:
    """Methods with fewer than two strictly better (NaN ignored); and whether the whole row is one tie."""
    finite = {m: v for m, v in values.items() if not is_missing(v)}
    if len(finite) > 1 and len(set(finite.values())) == 1:
        return set(), True
    return {m for m in finite if rank_of(m, finite, higher) in (1, 2)}, False


def rank_of(method: str, values: dict[str, float], higher: bool = True) -> int | None:
    """1 + the number of methods strictly better (ties share a rank); None where undefined."""
    v = values.get(method)
    if v is None or is_missing(v):
        return None
    return 1 + sum(1 for w in values.values() if not is_missing(w) and (w > v if higher else w < v))


def row_values(result: RunResult, methods: Sequence[str], metric: str) -> dict[str, float]:
    return {m: result.value(m, metric) for m in methods if m in result.methods}


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
    in_paper = set(paper_methods())
    for g in groups:
        for r in g.results:
            order.append(r.name)
            for metric in SUMMARY_METRICS:
                higher = HIGHER_IS_BETTER[metric]
                vals = row_values(r, g.methods, metric)
                finite = {m: v for m, v in vals.items() if not is_missing(v)}
                if len(finite) > 1 and len(set(finite.values())) == 1:  # every method ties: nobody's cell
                    winners[(r.name, metric)], ranks[(r.name, metric)] = [], None
                    ties[metric] += 1
                    continue
                target = (max if higher else min)(finite.values(), default=None)
                winners[(r.name, metric)] = [m for m, v in finite.items() if v == target]
                for m in winners[(r.name, metric)]:
                    wins[m] = wins.get(m, 0) + 1
                rank = ranks[(r.name, metric)] = rank_of(method, vals, higher) if method in vals else None
                if method in finite:
                    rows[metric] += 1
                    if rank is not None and rank <= 2:
                        top2[metric] += 1
                    paper_vals = {m: v for m, v in vals.items() if m in in_paper or m == method}
                    paper_rank = rank_of(method, paper_vals, higher)
                    if paper_rank is not None and paper_rank <= 2:
                        top2_paper[metric] += 1
    return Summary(winners, ranks, top2, top2_paper, rows, wins, order, method, ties)


@dataclass
class Report:
    """What :func:`build_report` produced: the readable score runs (``results``; ``groups``: by dataset, each
    ordered by accuracy ascending), the inputs that could not be used and figures not drawn (``problems``),
    ``warnings`` the reader must know, the ``summary``, each kind's section, and the files and figures written
    (name → path)."""

    out_dir: Path
    title: str
    results: list[RunResult]
    groups: list[Group]
    problems: list[LoadProblem]
    warnings: list[str]
    summary: Summary | None
    summary_lines: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    quadrants: dict[str, dict] = field(default_factory=dict)
    qualitative_notes: dict[str, str] = field(default_factory=dict)
    table_markdown: str = ""
    calibration: list = field(default_factory=list)
    severity: Any = None  # the per-severity frame (gradtrust.reporting.severity) of a corruption benchmark
    resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0
    created: str = ""
    version: str = ""
    elapsed_s: float = 0.0
    sections: dict[str, Any] = field(default_factory=dict)  # kind → gradtrust.reporting.kinds.Section
    inputs: list[str] = field(default_factory=list)  # the inputs, resolved (report.json; --force compares them)
    draw: bool = True  # draw the figures
    max_images: int = 16
    final_dir: Path | None = None  # where out_dir is renamed to once written
    images: Any = None  # the figures' picture reader (gradtrust.reporting.figures.DigitsCache): which files it read

    @property
    def ok(self) -> bool:
        """True when at least one run of any kind was read."""
        return any(section.runs for section in self.sections.values())
