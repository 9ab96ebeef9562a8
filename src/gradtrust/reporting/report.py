"""Building a whole report: load the runs, evaluate them, write the tables, figures and the HTML page.

Never raises for a bad input file: it becomes a problem in ``report.problems`` (and on the page), and the
rest is written. Each run kind's section is a builder registered in :mod:`gradtrust.reporting.kinds`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from gradtrust._version import __version__
from gradtrust.errors import GradTrustError, InputError
from gradtrust.estimator import fsync_path
from gradtrust.reporting import anomaly, detection, explanations, introspection  # noqa: F401 - register sections
from gradtrust.reporting.kinds import KINDS, SECTIONS, Section, discover_runs, drawing, register_section
from gradtrust.reporting.results import Group, Report, evaluate_run, group_runs, summarise
from gradtrust.reporting.runs import LoadProblem, load_runs, slugify
from gradtrust.reporting.tables import (
    paper_table_frame,
    paper_table_markdown,
    selective_frame,
    selective_markdown,
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


def no_prediction_warnings(results: Sequence[Any]) -> list[str]:
    """One warning per run with samples that have no prediction (non-finite logits), shown on the page."""
    return [f"{r.name}: {r.run.n_no_prediction} of {r.run.n} sample(s) have non-finite logits (NaN or inf): no "
            "prediction (−1, nan_reason_prediction in scores.parquet). They count as wrong in the accuracy and "
            "every metric, and their scores are NaN (ranked least trustworthy)."
            for r in results if r.run.n_no_prediction]


def outside_image_warnings(images: Any) -> list[str]:
    """One warning per run whose sample images were not read because they lie outside its data root."""
    out = []
    for name, paths in (getattr(images, "refused", None) or {}).items():
        shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        out.append(f"{name}: {len(paths)} image file(s) were not read, because their paths lie outside the run's "
                   f"data root and folder ({shown}); the figures show them as missing. If you trust these results, "
                   "pass --allow-outside-images (build_report(..., allow_outside_images=True)) to show them.")
    return out


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
    force: bool = False,
    allow_outside_images: bool = False,
) -> Report:
    """Write the report of the given runs into ``out_dir``: one page with a section per run kind (score, explain,
    detect, introspect, GradCON; :mod:`gradtrust.reporting.kinds`), the score runs' tables and figures, and
    ``report.json`` (the inputs, what was read, where everything is).

    The report is built in a temporary sibling folder, fsynced and renamed over ``out_dir``, so it appears
    whole or not at all. A folder holding a report of other inputs is replaced only with ``force``; a
    non-empty folder that holds no report is never replaced.

    ``results`` are run folders, score parquet files or folders holding runs; ``resamples`` bootstrap
    resamples (0 = no CIs, seeded by ``seed``) at level ``confidence``; ``max_images`` per qualitative grid.
    The figures read sample images only inside each run's data root or folder (the results may be someone
    else's): paths leading elsewhere are left out and named in a warning on the page, unless
    ``allow_outside_images``.
    ``InputError`` when ``out_dir`` holds a report of other inputs (without ``force``) or something else;
    ``GradTrustError`` when the report cannot be written (read-only folder, full disk…): nothing is left behind.
    """
    t0 = time.perf_counter()
    out, results = Path(out_dir), list(results)
    inputs = [str(Path(p).resolve()) for p in results]
    check_replaceable(out, inputs, force)
    found, problems = discover_runs(results)
    tmp = None
    try:
        out.absolute().parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.absolute().parent))
        report = Report(out_dir=tmp, title=title, results=[], groups=[], problems=problems, warnings=[],
                        summary=None, resamples=resamples, confidence=confidence, seed=seed, inputs=inputs,
                        draw=figures, max_images=max_images, final_dir=out, version=__version__,
                        created=_dt.datetime.now().astimezone().isoformat(timespec="seconds"))
        from gradtrust.reporting.figures import DigitsCache

        report.images = DigitsCache(allow_outside=allow_outside_images)
        _write_sections(report, found)
        report.elapsed_s = time.perf_counter() - t0
        _write_json(report)
        _publish(tmp, out)
    except BaseException as exc:
        # a failed write() names no file: the one being written is the newest in the temporary folder
        where = None
        if isinstance(exc, OSError):
            newest = _newest_file(tmp) if tmp is not None and not exc.filename else None
            where = exc.filename or (str(out / Path(newest).relative_to(tmp)) if newest and tmp else None)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            what = f"{exc.strerror or exc} ({where})" if where else str(exc)
            raise GradTrustError(f"cannot write the report into {out}: {what}. Free space or choose a writable "
                                 "--out; an earlier report there is left as it was.") from None
        raise
    report.out_dir = out
    report.files = {k: out / Path(v).relative_to(tmp) for k, v in report.files.items()}
    report.figures = {k: out / Path(v).relative_to(tmp) for k, v in report.figures.items()}
    return report


def _newest_file(folder: Path) -> str | None:
    """The file of ``folder`` (recursively) modified last; None if none."""
    try:
        files = [p for p in folder.rglob("*") if p.is_file()]
        return str(max(files, key=lambda p: p.stat().st_mtime_ns)) if files else None
    except OSError:
        return None


def check_replaceable(out: Path, inputs: list[str], force: bool) -> None:
    """Refuse to replace a report of other inputs (its ``report.json``'s ``inputs``) without ``force``, and
    anything that is not a report (a file, a non-empty folder without ``report.json``) at all."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    try:
        previous = json.loads((out / "report.json").read_text(encoding="utf-8")).get("inputs")
    except (OSError, ValueError, AttributeError):
        raise InputError(f"--out {out} is not empty and holds no report (no readable report.json); give a new "
                         "or empty folder: the report replaces the whole folder.") from None
    if previous != inputs and not force:
        old = ", ".join(previous) if isinstance(previous, list) else "unknown inputs"
        raise InputError(f"--out {out} holds the report of other inputs ({old}); pass --force to replace it, "
                         "or choose another --out.")


def _publish(tmp: Path, out: Path) -> None:
    """fsync every file and folder of ``tmp``, rename it to ``out`` (an old ``out`` renamed aside first, removed
    after), fsync the parent: a crash leaves the old report or the new one, never a part."""
    for folder, _, names in os.walk(tmp):
        for name in [*names, "."]:
            fsync_path(Path(folder, name))
    old = tmp.with_name(tmp.name.replace(".tmp-", ".old-"))
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    fsync_path(out.absolute().parent)
    shutil.rmtree(old, ignore_errors=True)


def _write_sections(report: Report, found: dict[str, list[Path]]) -> None:
    """Each kind's section in page order (:data:`gradtrust.reporting.kinds.SECTIONS`), then ``index.html``."""
    from gradtrust.reporting.html import render_html

    for kind in KINDS:
        if found[kind]:
            section = report.sections[kind] = SECTIONS[kind][1](found[kind], report)
            report.problems += section.problems
            report.files.update(section.files)
            report.figures.update(section.figures)
    report.warnings += outside_image_warnings(report.images)
    (report.out_dir / "index.html").write_text(render_html(report), encoding="utf-8")
    report.files["html"] = report.out_dir / "index.html"


@register_section("score", "score run")
def score_section(folders: list[Path], report: Report) -> Section:
    """The score runs: the paper's table, summary, selective and calibration tables, figures, manifests."""
    section = Section("score")
    runs, section.problems = load_runs(folders)
    groups = group_runs([evaluate_run(r, resamples=report.resamples, confidence=report.confidence,
                                      seed=report.seed) for r in runs])
    report.groups, report.results = groups, [r for g in groups for r in g.results]
    report.warnings = dataset_warnings(groups) + no_prediction_warnings(report.results)
    if report.results:
        report.summary = summarise(groups)
        _write_tables(report)
        _write_severity(report)
        _write_calibration(report)
        if report.draw:
            _draw_figures(report, report.max_images)
    for r in report.results:
        section.runs.append({"name": r.name, "source": str(r.run.source)})
        section.add_failures(r.name, r.run.source, r.run.manifest)
    from gradtrust.reporting.html import score_html

    section.html = score_html(report)
    links = [("table", "quantitative results"), ("summary", "summary"), ("severity", "per severity"),
             ("selective", "selective classification"),
             ("calibration", "calibration"), ("figures", "figures"), ("manifests", "manifests")]
    section.links = [(a, w) for a, w in links if report.results and (a != "calibration" or report.calibration)
                     and (a != "severity" or "severity_md" in report.files)]
    return section


def _write_tables(report: Report) -> None:
    out, groups, warnings = report.out_dir, report.groups, report.warnings
    report.table_markdown = paper_table_markdown(groups, warnings)
    (out / "table.md").write_text(report.table_markdown, encoding="utf-8")
    paper_table_frame(groups).to_csv(out / "table.csv", index=False)
    (out / "selective.md").write_text(
        selective_markdown(groups, resamples=report.resamples, seed=report.seed, confidence=report.confidence,
                           warnings=warnings), encoding="utf-8")
    selective_frame(groups).to_csv(out / "selective.csv", index=False)
    assert report.summary is not None  # score_section summarises whenever there are results
    text = summary_markdown(report.summary, groups, warnings)
    (out / "summary.md").write_text(text, encoding="utf-8")
    report.summary_lines = [line[2:] for line in text.splitlines() if line.startswith("- ")]
    report.files.update(table_md=out / "table.md", table_csv=out / "table.csv",
                        selective_md=out / "selective.md", selective_csv=out / "selective.csv",
                        summary_md=out / "summary.md")


def _write_severity(report: Report) -> None:
    """``severity.md``/``.csv`` when some runs are corrupted copies at a severity (:mod:`.severity`)."""
    from gradtrust.reporting.severity import severity_frame, severity_markdown

    frame = severity_frame(report.results)
    if frame is None:
        return
    report.severity = frame
    (report.out_dir / "severity.md").write_text(severity_markdown(frame), encoding="utf-8")
    frame.to_csv(report.out_dir / "severity.csv", index=False)
    report.files.update(severity_md=report.out_dir / "severity.md", severity_csv=report.out_dir / "severity.csv")


def _write_calibration(report: Report) -> None:
    """``calibration.md`` / ``calibration.csv`` (:mod:`gradtrust.reporting.calibration`)."""
    from gradtrust.reporting import calibration as C

    report.calibration = [C.calibration_row(r.run, resamples=report.resamples, seed=report.seed,
                                            confidence=report.confidence) for r in report.results]
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
        with drawing(report.problems, f"figures/{name}.png"):
            report.figures[name] = F.save_png(F.draw_curves(report.results, kind), fig_dir / f"{name}.png")
    with drawing(report.problems, "figures/reliability.png"):
        from gradtrust.reporting.calibration import reliability_figure

        reliability = reliability_figure(report.calibration, fig_dir / "reliability.png")
        if reliability is not None:
            report.figures["reliability"] = reliability
    cache = report.images if report.images is not None else F.DigitsCache()
    used: set[str] = set()
    for r in report.results:
        slug = slugify(r.name)
        while slug in used:
            slug += "_"
        used.add(slug)
        with drawing(report.problems, f"figures/scatter/{slug}.png"):
            path = fig_dir / "scatter" / f"{slug}.png"
            quad = F.scatter_figure(r, path)
            if quad is not None:
                report.figures[f"scatter/{r.name}"] = path
                report.quadrants[r.name] = quad.as_dict()
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
        with drawing(report.problems, f"figures/explanations/{slug}.png"):  # when `gradtrust explain` wrote into it
            from gradtrust.reporting.explanations import gallery_figure

            path = fig_dir / "explanations" / f"{slug}.png"
            if gallery_figure(r.run, path, cache=cache) is not None:
                report.figures[f"explanations/{r.name}"] = path


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
                  "n_wrong": r.run.n_wrong, "no_prediction": r.run.n_no_prediction, "accuracy": r.accuracy,
                  "methods": r.run.methods,
                  "notes": r.notes, "quadrants": report.quadrants.get(r.name)} for r in report.results],
        "summary": None if s is None else {
            "top2": s.top2, "top2_paper_methods": s.top2_paper, "rows": s.rows, "wins": s.wins,
            "all_tie_rows": s.ties,
            "winners": [{"run": k[0], "metric": k[1], "methods": v} for k, v in s.winners.items()],
        },
        "anomaly_runs": report.sections["gradcon"].runs if "gradcon" in report.sections else [],
        "inputs": report.inputs,
        "kinds": {kind: section.runs for kind, section in report.sections.items()},
        "failed_files": [{"run": name, "source": source, "failed": total,
                          "files": [{"index": i, "path": p, "reason": r} for i, p, r in listed]}
                         for section in report.sections.values() for name, source, listed, total in section.failed],
        "files": {k: str(v) for k, v in report.files.items()},
        "figures": {k: str(v) for k, v in report.figures.items()},
    }
    path = report.out_dir / "report.json"
    report.files["json"] = path
    data["files"]["json"] = str(path)
    final = report.final_dir or report.out_dir  # the paths the files will have once the temporary folder is renamed
    for group in ("files", "figures"):
        data[group] = {k: str(final / Path(v).relative_to(report.out_dir)) for k, v in data[group].items()}
    path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
