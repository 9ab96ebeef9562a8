"""Building a whole report: load the runs, evaluate them, write the tables, figures and the HTML page.

>>> from gradtrust.reporting import build_report
>>> report = build_report(["runs/resnet18", "runs/alexnet"], "report/")
>>> print(report.table_markdown); report.files["html"]

Never raises for a bad input file: it becomes a problem in ``report.problems`` (and on the page), and the
rest is written. ``report.ok`` is False only when no run at all could be read.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from gradtrust._version import __version__
from gradtrust.errors import InputError
from gradtrust.reporting.results import Report
from gradtrust.reporting.runs import LoadProblem, load_runs, slugify
from gradtrust.reporting.tables import (
    Group,
    evaluate_run,
    group_runs,
    paper_table_frame,
    paper_table_markdown,
    selective_frame,
    selective_markdown,
    summarise,
    summary_markdown,
)

__all__ = ["Report", "build_report"]


def dataset_warnings(groups: Sequence[Group]) -> list[str]:
    if len(groups) <= 1:
        return []
    listing = "; ".join(f"{g.label}: {', '.join(r.name for r in g.results)}" for g in groups)
    return [f"the runs come from {len(groups)} different datasets (by the dataset identity in their "
            f"manifests): {listing}. Their numbers are not comparable across datasets, so each dataset "
            "gets its own table (and the CSV files a `dataset` column); compare rows only within a table."]


def build_report(
    results: Iterable[str | Path],
    out_dir: str | Path,
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    figures: bool = True,
    max_images: int = 16,
    title: str = "GradTrust report",
) -> Report:
    """Write the report of the given runs (folders with ``scores.parquet`` + ``manifest.json``, parquet files,
    or folders holding such runs) into ``out_dir``.

    Args:
        results: the inputs.
        out_dir: output folder (created).
        resamples: bootstrap resamples for the CIs of the selective table (0 = no CIs); seeded by ``seed``.
        confidence: the CIs' level.
        figures: draw the PNG figures.
        max_images: most images in each run's qualitative grid.
        title: the page title.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = list(results)
    runs, problems = load_runs(results)
    from gradtrust.reporting.anomaly import build_anomaly_section

    anomaly = build_anomaly_section(results, out, resamples=resamples, confidence=confidence, seed=seed,
                                    figures=figures)
    problems = anomaly.drop_covered(problems) + anomaly.problems
    evaluated = [evaluate_run(r, resamples=resamples, confidence=confidence, seed=seed) for r in runs]
    groups = group_runs(evaluated)
    ordered = [r for g in groups for r in g.results]
    warnings = dataset_warnings(groups)
    report = Report(out_dir=out, title=title, results=ordered, groups=groups, problems=problems,
                    warnings=warnings, summary=summarise(groups) if ordered else None,
                    resamples=resamples, confidence=confidence, seed=seed,
                    created=_dt.datetime.now().astimezone().isoformat(timespec="seconds"), version=__version__,
                    anomaly=anomaly)
    report.files.update(anomaly.files)
    report.figures.update({f"anomaly/{k}": v for k, v in anomaly.figures.items()})
    if ordered:
        _write_tables(report)
        _write_calibration(report)
        if figures:
            _draw_figures(report, max_images)
    _write_html(report)
    report.elapsed_s = time.perf_counter() - t0
    _write_json(report)
    return report


def _write_tables(report: Report) -> None:
    out, groups, warnings = report.out_dir, report.groups, report.warnings
    report.table_markdown = paper_table_markdown(groups, warnings)
    (out / "table.md").write_text(report.table_markdown, encoding="utf-8")
    paper_table_frame(groups).to_csv(out / "table.csv", index=False)
    (out / "selective.md").write_text(
        selective_markdown(groups, resamples=report.resamples, seed=report.seed, confidence=report.confidence,
                           warnings=warnings), encoding="utf-8")
    selective_frame(groups).to_csv(out / "selective.csv", index=False)
    if report.summary is None:  # write_report summarises whenever there are results
        raise InputError("the report has results but no summary; build it with summarise(groups)")
    text = summary_markdown(report.summary, groups, warnings)
    (out / "summary.md").write_text(text, encoding="utf-8")
    report.summary_lines = [line[2:] for line in text.splitlines() if line.startswith("- ")]
    report.files.update(table_md=out / "table.md", table_csv=out / "table.csv",
                        selective_md=out / "selective.md", selective_csv=out / "selective.csv",
                        summary_md=out / "summary.md")


def _write_calibration(report: Report) -> None:
    """``calibration.md`` / ``calibration.csv`` (:mod:`gradtrust.reporting.calibration`)."""
    from gradtrust.reporting import calibration as C

    report.calibration = C.calibration_rows([r.run for r in report.results], resamples=report.resamples,
                                            seed=report.seed, confidence=report.confidence)
    out = report.out_dir
    (out / "calibration.md").write_text(
        C.calibration_markdown(report.calibration, resamples=report.resamples, confidence=report.confidence),
        encoding="utf-8")
    C.calibration_frame(report.calibration).to_csv(out / "calibration.csv", index=False)
    report.files.update(calibration_md=out / "calibration.md", calibration_csv=out / "calibration.csv")


def _draw_figures(report: Report, max_images: int) -> None:
    from gradtrust.reporting import figures as F

    fig_dir = report.out_dir / "figures"
    for kind, name in (("accuracy", "accuracy_curves"), ("f1", "f1_curves")):
        try:
            report.figures[name] = F.curves_figure(report.results, fig_dir / f"{name}.png", kind)
        except Exception as exc:  # noqa: BLE001 - one figure never stops the report
            report.problems.append(LoadProblem(f"figures/{name}.png", f"could not be drawn: {exc!r}"))
    try:
        from gradtrust.reporting.calibration import reliability_figure

        reliability = reliability_figure(report.calibration, fig_dir / "reliability.png")
        if reliability is not None:
            report.figures["reliability"] = reliability
    except Exception as exc:  # noqa: BLE001
        report.problems.append(LoadProblem("figures/reliability.png", f"could not be drawn: {exc!r}"))
    cache = F.DigitsCache()
    used: set[str] = set()
    for r in report.results:
        slug = slugify(r.name)
        while slug in used:
            slug += "_"
        used.add(slug)
        try:
            path = fig_dir / "scatter" / f"{slug}.png"
            quad = F.scatter_figure(r, path)
            if quad is not None:
                report.figures[f"scatter/{r.name}"] = path
                report.quadrants[r.name] = quad.as_dict()
        except Exception as exc:  # noqa: BLE001
            report.problems.append(LoadProblem(f"figures/scatter/{slug}.png", f"could not be drawn: {exc!r}"))
        try:
            path = fig_dir / "qualitative" / f"{slug}.png"
            drawn = F.qualitative_figure(r, path, max_images=max_images, cache=cache)
            if drawn is not None:
                report.figures[f"qualitative/{r.name}"] = path
            elif "gradtrust" not in r.run.methods or "softmax" not in r.run.methods:
                report.qualitative_notes[r.name] = "needs both gradtrust and softmax"
            elif max_images < 1:
                report.qualitative_notes[r.name] = f"max_images={max_images} (--max-images) asks for no image"
            elif bool(r.run.correct.all()):
                report.qualitative_notes[r.name] = "every prediction is right: there is no mistake to show"
            else:
                report.qualitative_notes[r.name] = "no wrong prediction with a softmax in the top quartile"
        except Exception as exc:  # noqa: BLE001
            report.qualitative_notes[r.name] = f"could not be drawn ({type(exc).__name__}: {exc})"
            report.problems.append(LoadProblem(f"figures/qualitative/{slug}.png", f"could not be drawn: {exc!r}"))
        try:  # the explanation gallery, when `gradtrust explain` wrote into the run's explanations/ folder
            from gradtrust.reporting.explanations import gallery_figure

            path = fig_dir / "explanations" / f"{slug}.png"
            if gallery_figure(r.run, path, cache=cache) is not None:
                report.figures[f"explanations/{r.name}"] = path
        except Exception as exc:  # noqa: BLE001
            report.problems.append(LoadProblem(f"figures/explanations/{slug}.png", f"could not be drawn: {exc!r}"))


def _write_html(report: Report) -> None:
    from gradtrust.reporting.html import render_html

    path = report.out_dir / "index.html"
    path.write_text(render_html(report), encoding="utf-8")
    report.files["html"] = path


def _write_json(report: Report) -> None:
    """``report.json``: what was read, what failed, where everything is (for scripts and tests)."""
    s = report.summary
    data: dict[str, Any] = {
        "created": report.created,
        "gradtrust_version": report.version,
        "elapsed_s": round(report.elapsed_s, 3),
        "bootstrap": {"resamples": report.resamples, "confidence": report.confidence, "seed": report.seed},
        "warnings": report.warnings,
        "problems": [{"source": p.source, "message": p.message} for p in report.problems],
        "groups": [{"dataset": g.label, "runs": [r.name for r in g.results], "methods": g.methods}
                   for g in report.groups],
        "runs": [{"name": r.name, "source": str(r.run.source), "model": r.run.model,
                  "condition": r.run.condition, "dataset": r.run.dataset_label, "n": r.run.n,
                  "n_wrong": r.run.n_wrong, "accuracy": r.accuracy, "methods": r.run.methods,
                  "notes": r.notes, "quadrants": report.quadrants.get(r.name)} for r in report.results],
        "summary": None if s is None else {
            "top2": s.top2, "top2_paper_methods": s.top2_paper, "rows": s.rows, "wins": s.wins,
            "all_tie_rows": s.ties,
            "winners": [{"run": k[0], "metric": k[1], "methods": v} for k, v in s.winners.items()],
        },
        "anomaly_runs": report.anomaly.rows if report.anomaly is not None else [],
        "files": {k: str(v) for k, v in report.files.items()},
        "figures": {k: str(v) for k, v in report.figures.items()},
    }
    path = report.out_dir / "report.json"
    report.files["json"] = path
    data["files"]["json"] = str(path)
    path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
