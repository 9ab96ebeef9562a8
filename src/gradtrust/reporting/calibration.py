"""The report's calibration section: one row per run (ECE, adaptive ECE, classwise ECE, Brier, NLL with
bootstrap CIs, and the ECE after temperature scaling cross-fitted on the run's two halves) and a figure of
reliability diagrams. Formulas: :mod:`gradtrust.evaluation.calibration` and ``docs/calibration.md``.

What a run needs: the full probability vector (classwise ECE, Brier, NLL, temperature scaling) comes from
the logits that ``gradtrust score`` stores beside ``scores.parquet`` (``logits.parquet``). A run scored
before the logits were stored still gets the top-label ECE, adaptive ECE and reliability diagram from its
``softmax`` column (which *is* the top-label confidence), and its other cells say why they are empty.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gradtrust.evaluation import calibration as cal
from gradtrust.evaluation.bootstrap import basic_interval, bca_interval, bootstrap_indices
from gradtrust.reporting.runs import Run
from gradtrust.reporting.tables import ci_text

__all__ = ["CALIBRATION_LEGEND", "CalibrationRow", "calibration_markdown", "corrected_interval",
           "reliability_figure", "run_logits"]

LOGITS_FILE = "logits.parquet"
#: CIs of the classwise ECE are drawn only while a resample costs at most this many probabilities.
_CLASSWISE_CI_LIMIT = 2_000_000
_COLUMNS = ("ece", "adaptive_ece", "classwise_ece", "brier", "nll")
#: The binned errors: biased upwards on small samples, shown bias-corrected with a basic bootstrap interval.
_BINNED = ("ece", "adaptive_ece", "classwise_ece")
_HEADER = ["run", "accuracy (%)", "n", "ECE ×100 (corrected)", "adaptive ECE ×100 (corrected)",
           "classwise ECE ×100 (corrected)", "Brier", "NLL",
           "T (halves)", "ECE ×100 after T"]

CALIBRATION_LEGEND = (
    "Lower is better in every column. ECE: 15 equal-width bins of the top-label confidence ([lo, hi), 1.0 in the "
    "last bin); adaptive ECE: 15 equal-mass bins; classwise ECE: the binned error of every class's probability, "
    "averaged over classes; Brier: Σ_c (p_c − 1[y = c])², mean over samples; NLL: −log p_y, mean over samples. "
    "A binned error is biased upwards on few samples (|acc − conf| of a bin is never negative) and bootstrap "
    "resamples inherit the bias, so a percentile interval can exclude its own estimate: the three ECE columns "
    "show the bias-corrected estimate 2·ECE − mean(ECE*) with the basic bootstrap interval [2·ECE − q_hi, "
    "2·ECE − q_lo] (Davison & Hinkley 1997), both clipped at 0, the plug-in ECE in parentheses; Brier and NLL (means) show a BCa "
    "bootstrap interval (Efron 1987). Temperature scaling: T fitted by NLL on one half of the run (a "
    "seeded random split) and applied to the other, and the other way round; the ECE after T is over all "
    "samples, each scaled by the T of the half it was not fitted on, so no sample is calibrated on itself. "
    "Formulas: docs/calibration.md."
)


@dataclass
class CalibrationRow:
    """One run's calibration numbers (NaN where undefined) and why cells are empty."""

    name: str
    accuracy: float
    n: int
    values: dict[str, float] = field(default_factory=dict)
    #: the bias-corrected estimates ``2θ̂ − mean(θ*)`` of the binned errors (:data:`_BINNED`)
    corrected: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    temperatures: tuple[float, float] | None = None
    ece_scaled: float = float("nan")
    diagram: cal.ReliabilityDiagram | None = None
    notes: list[str] = field(default_factory=list)


def run_logits(run: Run) -> np.ndarray | None:
    """The run's logits, aligned with ``run.frame`` (by ``index``), or ``None`` when it stores none."""
    path = Path(run.scores_path).parent / LOGITS_FILE
    if run.scores_path.name != "scores.parquet" or not path.is_file():
        return None
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    index = table["index"].to_numpy()
    column = table["logits"].combine_chunks()
    width = column.type.list_size
    values = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width).astype(np.float64)
    position = {int(i): k for k, i in enumerate(index)}
    try:
        rows = np.array([position[int(i)] for i in run.frame["index"].to_numpy()], dtype=np.int64)
    except KeyError:
        return None
    return values[rows]


def corrected_interval(stat, estimate: float, n: int, resamples: int, seed: int,
                       confidence: float) -> tuple[float, tuple[float, float]]:
    """A binned error's bias-corrected estimate ``max(0, 2θ̂ − mean(θ*))`` (Efron & Tibshirani 1993, §10.6)
    and basic bootstrap interval (:func:`~gradtrust.evaluation.bootstrap.basic_interval`), both clipped at
    0 (an error's least value), over the resamples ``bootstrap_indices(n, resamples, seed)`` of
    ``stat(indices)``. The interval contains the estimate whenever ``mean(θ*)`` lies between the
    percentiles; the percentile interval of a plug-in ECE on few samples sat above its own estimate
    ("2.36 [2.57, 3.14]")."""
    values = np.array([stat(idx) for idx in bootstrap_indices(n, resamples, seed)])
    if not np.isfinite(values).any():
        return float("nan"), (float("nan"), float("nan"))
    low, high = basic_interval(values, estimate, confidence)
    return max(0.0, float(2.0 * estimate - np.nanmean(values))), (max(0.0, low), max(0.0, high))


def _binned_bootstrap(row: CalibrationRow, key: str, stat, n: int, resamples: int, seed: int,
                      confidence: float) -> None:
    if resamples > 0 and n >= 2:
        row.corrected[key], row.intervals[key] = corrected_interval(stat, row.values[key], n, resamples, seed,
                                                                    confidence)


def _mean_bootstrap(x: np.ndarray, resamples: int, seed: int, confidence: float) -> tuple[float, float]:
    """BCa interval (:func:`~gradtrust.evaluation.bootstrap.bca_interval`) of the mean of per-sample values
    ``x``; its jackknife values are the leave-one-out means ``(Σx − x_i)/(n − 1)``."""
    n = x.shape[0]
    if resamples <= 0 or n < 2:
        return (float("nan"), float("nan"))
    values = np.array([float(x[idx].mean()) for idx in bootstrap_indices(n, resamples, seed)])
    return bca_interval(values, float(x.mean()), (x.sum() - x) / (n - 1), confidence)


def _halves_temperature(logits: np.ndarray, labels: np.ndarray, seed: int):
    """Cross-fitted temperature scaling: ``(T fitted on half A, T fitted on half B)`` and the ECE of every
    sample scaled by the temperature of the half it is *not* in."""
    n = labels.shape[0]
    order = np.random.default_rng(seed).permutation(n)
    halves = [order[: n // 2], order[n // 2:]]
    temps = [cal.fit_temperature(logits[h], labels[h]) for h in halves]
    probs = np.empty_like(logits)
    probs[halves[1]] = cal.softmax(logits[halves[1]], temps[0])
    probs[halves[0]] = cal.softmax(logits[halves[0]], temps[1])
    conf, correct = cal.top_label(probs, labels)
    return (temps[0], temps[1]), cal.expected_calibration_error(conf, correct)


def calibration_row(run: Run, name: str | None = None, *, resamples: int = 1000, seed: int = 0,
                    confidence: float = 0.95) -> CalibrationRow:
    """The calibration numbers of one run (never raises for missing data: the cells say why)."""
    labels = run.labels.astype(np.int64)
    correct = run.correct
    row = CalibrationRow(name or run.name, run.accuracy, run.n)
    logits = run_logits(run)
    conf = None
    if logits is not None and (not np.all(np.isfinite(logits)) or labels.max() >= logits.shape[1]):
        row.notes.append("its logits hold non-finite values or fewer classes than the labels; calibration from "
                         "the softmax column only.")
        logits = None
    if logits is not None:
        probs = cal.softmax(logits)
        conf = probs.max(axis=1)
        correct = probs.argmax(axis=1) == labels
        if not np.array_equal(correct, run.correct):
            row.notes.append("argmax of the stored logits differs from the stored prediction in "
                             f"{int((correct != run.correct).sum())} row(s) (ties?); the logits are used.")
    elif "softmax" in run.methods:
        conf = run.scores("softmax")
        if not np.all(np.isfinite(conf)):
            row.notes.append("its softmax column holds NaN: no calibration numbers.")
            conf = None
        else:
            row.notes.append("no logits.parquet (scored before GradTrust stored logits, or not by `gradtrust "
                             "score`): ECE, adaptive ECE and the diagram come from the softmax column; classwise "
                             "ECE, Brier, NLL and temperature scaling need the logits (score the run again).")
    else:
        row.notes.append("neither logits.parquet nor a softmax column: nothing to measure calibration on.")
    n = row.n
    if conf is not None:
        c, k = conf, correct
        for key, metric in (("ece", cal.expected_calibration_error), ("adaptive_ece", cal.adaptive_calibration_error)):
            row.values[key] = metric(c, k)
            _binned_bootstrap(row, key, lambda i, f=metric: f(c[i], k[i]), n, resamples, seed, confidence)
        row.diagram = cal.reliability_diagram(c, k)
    if logits is not None:
        probs = cal.softmax(logits)
        onehot = (np.arange(probs.shape[1]) == labels[:, None]).astype(probs.dtype)
        brier = np.square(probs - onehot).sum(axis=1)  # per sample: the bootstrap is a resampled mean
        row.values.update(classwise_ece=cal.classwise_calibration_error(probs, labels),
                          brier=float(brier.mean()), nll=cal.negative_log_likelihood(logits, labels))
        row.intervals["brier"] = _mean_bootstrap(brier, resamples, seed, confidence)
        shifted = logits - logits.max(axis=1, keepdims=True)
        nll = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(n), labels]  # per sample
        row.intervals["nll"] = _mean_bootstrap(nll, resamples, seed, confidence)
        if n * probs.shape[1] <= _CLASSWISE_CI_LIMIT:
            _binned_bootstrap(row, "classwise_ece", lambda i: cal.classwise_calibration_error(probs[i], labels[i]),
                              n, resamples, seed, confidence)
        if n >= 4 and probs.shape[1] >= 2:
            row.temperatures, row.ece_scaled = _halves_temperature(logits, labels, seed)
    return row


def _cell(row: CalibrationRow, key: str, scale: float, digits: int) -> str:
    """``value [low, high]``; a binned error with a bootstrap: ``corrected [low, high] (plug-in value)``."""
    if math.isfinite(row.corrected.get(key, math.nan)):
        plug_in = f" (plug-in {scale * row.values[key]:.{digits}f})"
        return ci_text(row.corrected[key], *row.intervals[key], scale=scale, digits=digits) + plug_in
    return ci_text(row.values.get(key), *row.intervals.get(key, (None, None)), scale=scale, digits=digits)


def calibration_cells(rows: Sequence[CalibrationRow]) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, one row of cells per run (plain text), and the notes."""
    out, notes = [], []
    for r in rows:
        temps = "n/a" if r.temperatures is None else f"{r.temperatures[0]:.3g} / {r.temperatures[1]:.3g}"
        scaled = "n/a" if math.isnan(r.ece_scaled) else f"{100 * r.ece_scaled:.2f}"
        out.append([r.name, f"{100 * r.accuracy:.2f}", str(r.n), _cell(r, "ece", 100, 2),
                    _cell(r, "adaptive_ece", 100, 2), _cell(r, "classwise_ece", 100, 2), _cell(r, "brier", 1, 4),
                    _cell(r, "nll", 1, 4), temps, scaled])
        notes += [f"{r.name}: {n}" for n in r.notes]
    return list(_HEADER), out, notes


def calibration_markdown(rows: Sequence[CalibrationRow], *, resamples: int, confidence: float) -> str:
    header, cells, notes = calibration_cells(rows)
    lines = ["# Calibration", "", CALIBRATION_LEGEND + f" CIs: {resamples} resamples, level {confidence:g}.", "",
             "| " + " | ".join(header) + " |", "| --- | " + " | ".join("---:" for _ in header[1:]) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def calibration_frame(rows: Sequence[CalibrationRow]):
    import pandas as pd

    records = []
    for r in rows:
        rec: dict = {"run": r.name, "n": r.n, "accuracy": r.accuracy}
        for key in _COLUMNS:
            rec[key] = r.values.get(key, float("nan"))
            rec[f"{key}_low"], rec[f"{key}_high"] = r.intervals.get(key, (float("nan"), float("nan")))
            if key in _BINNED:
                rec[f"{key}_corrected"] = r.corrected.get(key, float("nan"))
        rec["temperature_half_a"], rec["temperature_half_b"] = r.temperatures or (float("nan"), float("nan"))
        rec["ece_after_temperature"] = r.ece_scaled
        records.append(rec)
    return pd.DataFrame.from_records(records)


def reliability_figure(rows: Sequence[CalibrationRow], path: Path) -> Path | None:
    """One reliability diagram per run: accuracy per confidence bin (bars), the gap to the diagonal (red),
    and the share of samples per bin (grey, right axis)."""
    drawn = [r for r in rows if r.diagram is not None]
    if not drawn:
        return None
    from gradtrust.reporting.figures import new_figure, save_png
    from gradtrust.reporting.layout import fit_canvas

    cols = min(4, len(drawn))
    nrows = -(-len(drawn) // cols)
    fig = new_figure(3.4 * cols, 3.3 * nrows)
    for k, r in enumerate(drawn):
        d = r.diagram
        assert d is not None
        ax = fig.add_subplot(nrows, cols, k + 1)
        width = d.upper - d.lower
        filled = d.counts > 0
        ax.bar(d.lower[filled], d.accuracy[filled], width=width[filled], align="edge", color="#4c72b0",
               edgecolor="white", label="accuracy")
        gap_low = np.minimum(d.accuracy, d.confidence)[filled]
        ax.bar(d.lower[filled], np.abs(d.accuracy - d.confidence)[filled], bottom=gap_low, width=width[filled],
               align="edge", color="#d62728", alpha=0.35, edgecolor="#d62728", label="gap to confidence")
        ax.plot([0, 1], [0, 1], color="0.3", linestyle="--", linewidth=1)
        share = ax.twinx()
        share.plot((d.lower + d.upper)[filled] / 2, (d.counts / d.counts.sum())[filled], color="0.45",
                   marker=".", linewidth=0.8)
        share.set_ylim(0, 1)
        share.tick_params(labelsize=7, colors="0.45")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{r.name}\nECE {100 * d.ece:.2f}", fontsize=8)
        ax.tick_params(labelsize=7)
        if k % cols == 0:
            ax.set_ylabel("accuracy", fontsize=8)
        if k // cols == nrows - 1:
            ax.set_xlabel("confidence (top label)", fontsize=8)
        if k == 0:
            ax.legend(fontsize=6, loc="upper left")
    title = "Reliability diagram" + ("s" if len(drawn) > 1 else "")
    fig.suptitle(f"{title} (15 equal-width bins)\ngrey: share of samples per bin, right axis", fontsize=9)
    fit_canvas(fig, lambda f: f.tight_layout())  # one 3.4-inch panel is narrower than the title
    return save_png(fig, path)
