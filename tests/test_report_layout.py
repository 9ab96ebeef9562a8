"""Report figures sized from their content (no artist off the canvas) and summaries where all-tie rows
count for nobody (issue 12, items 3 and 4)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import gradtrust
from gradtrust.data.digits import DigitsDataset
from gradtrust.models import load_model
from gradtrust.reporting import build_report
from gradtrust.reporting.figures import draw_curves, scatter_figure
from gradtrust.reporting.layout import artists_outside
from gradtrust.reporting.results import summarise

METHODS = ["softmax", "entropy", "max_logit", "margin", "odin", "gradnorm", "gradtrust", "gradtrust_topk",
           "logit_margin", "energy", "doctor", "maxlogit_pnorm", "brier"]


def make_run(out: Path, n: int = 120, perfect: bool = False) -> Path:
    """A run folder as the runner writes it: the bundled digits_tiny network on the first n test digits."""
    loaded = load_model("digits:digits_tiny", "DEFAULT")
    ds = DigitsDataset("test")
    x, y = ds.tensors()
    x, y = x[:n], y[:n]
    result = gradtrust.score(loaded, x, METHODS)
    df = result.to_dataframe()
    df.insert(0, "index", np.arange(n, dtype=np.int64))
    df.insert(1, "path", [f"digits/test/clean/{i:04d}" for i in range(n)])
    df.insert(2, "label", df["prediction"].to_numpy() if perfect else y.numpy().astype(np.int64))
    df.insert(4, "correct", df["label"].to_numpy() == df["prediction"].to_numpy())
    out.mkdir(parents=True)
    df.to_parquet(out / "scores.parquet", index=False)
    dataset = {"kind": "digits", "split": "test", "corruption": None, "spec": "digits:test:clean"}
    (out / "manifest.json").write_text(json.dumps({
        "model": loaded.describe(), "dataset": dataset, "methods": result.parameters, "skipped": result.skipped,
        "counts": {"samples": n, "scored": n, "failed": 0}}), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("layout")
    return make_run(root / "a_run_with_a_rather_long_name"), make_run(root / "perfect", perfect=True)


@pytest.mark.slow  # draws three curve figures (~4 s on a shared machine)
def test_single_and_two_run_curves_fit_their_canvas(two_runs, tmp_path):
    rep = build_report([two_runs[0]], tmp_path / "one", resamples=0, figures=False)
    for kind, copies in (("accuracy", 1), ("f1", 1), ("accuracy", 3)):
        fig = draw_curves(rep.results * copies, kind)
        assert artists_outside(fig) == []
        # the legend holds every method (and both references), the title is there
        assert len(fig.legends[0].get_texts()) == len(METHODS) + (2 if kind == "accuracy" else 0)
        assert fig.get_suptitle()
        if copies == 1:
            width, height = fig.get_size_inches() * fig.dpi
            assert width > 396 and height > 418  # the clipped single-run size it had before


@pytest.mark.slow  # one more report (the fixture runs are shared with the tie test)
def test_scatter_fits_its_canvas(two_runs, tmp_path):
    rep = build_report([two_runs[0]], tmp_path / "one", resamples=0, figures=False)
    captured = {}
    import gradtrust.reporting.figures as F

    original = F.save_png

    def keep(fig, path):
        captured["fig"] = fig
        return original(fig, path)

    F.save_png = keep
    try:
        scatter_figure(rep.results[0], tmp_path / "s.png")
    finally:
        F.save_png = original
    assert artists_outside(captured["fig"]) == []


def test_all_tie_rows_count_for_nobody(two_runs, tmp_path):
    rep = build_report(list(two_runs), tmp_path / "two", resamples=0, figures=False)
    summary = summarise(rep.groups)
    # The perfect run: every method has AUAC = AUFC = 100 and AURC = 0 — a tie in each of these cells.
    perfect = next(r.name for r in rep.results if r.accuracy == 1.0)
    for metric in ("auac", "aufc", "aurc"):
        assert summary.winners[(perfect, metric)] == [] and summary.ranks[(perfect, metric)] is None
    assert summary.ties["auac"] == 1 and summary.ties["aufc"] == 1
    # Only the other run counts: one row per metric, not two.
    assert summary.rows["auac"] == 1 and summary.rows["aufc"] == 1
    line = summary.claim_line()
    assert "of 2 (run, metric) cells" in line and "2 cells where every method ties" in line
    text = rep.files["summary_md"].read_text()
    assert "every method ties" in text
    assert json.loads(rep.files["json"].read_text())["summary"]["all_tie_rows"]["auac"] == 1


@pytest.mark.slow  # a whole report with figures
def test_qualitative_grid_missing_says_why(two_runs, tmp_path):
    rep = build_report([two_runs[1]], tmp_path / "p", resamples=0, max_images=4)
    note = rep.qualitative_notes[rep.results[0].name]
    assert "every prediction is right" in note
    assert "every prediction is right" in rep.files["html"].read_text()


@pytest.mark.slow  # two whole reports with every figure (~30 s on a shared machine)
@pytest.mark.parametrize("runs", [1, 12])
def test_every_figure_kind_fits_its_canvas(tmp_path, monkeypatch, runs):
    """Every figure the score report draws (curves, reliability diagrams, scatter, qualitative tiles), for 1
    and 12 runs: no text beyond the canvas (each artist's tight bounding box within the figure's)."""
    import shutil

    import gradtrust.reporting.figures as F

    base = make_run(tmp_path / "base", n=901)  # every test digit: wrong predictions with a high softmax exist
    folders = []
    for k in range(runs):
        folder = tmp_path / f"run_{k:02d}_with_a_longer_name"
        shutil.copytree(base, folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["dataset"]["corruption"] = f"variant_{k}" if k else None
        (folder / "manifest.json").write_text(json.dumps(manifest))
        folders.append(folder)
    drawn: dict[str, list[str]] = {}
    original = F.save_png

    def check(fig, path):
        drawn[path.name if path.parent.name == "figures" else path.parent.name] = artists_outside(fig)
        return original(fig, path)

    monkeypatch.setattr(F, "save_png", check)
    rep = build_report(folders, tmp_path / "report", resamples=0, max_images=4)
    assert not rep.problems, rep.problems
    assert not rep.qualitative_notes, rep.qualitative_notes
    assert {"accuracy_curves.png", "f1_curves.png", "reliability.png", "scatter", "qualitative"} <= set(drawn)
    assert {name: outside for name, outside in drawn.items() if outside} == {}


def test_curves_legend_is_mappable_and_each_panel_names_its_best(two_runs, tmp_path):
    """~13 methods in one legend: every entry a distinct (colour, line style) pair, GradTrust first; each panel
    names its best method and draws it thick."""
    from matplotlib.colors import to_rgba

    rep = build_report([two_runs[0]], tmp_path / "one", resamples=0, figures=False)
    fig = draw_curves(rep.results, "accuracy")
    handles = fig.legends[0].legend_handles
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[0] == "GradTrust"
    styles = [(to_rgba(h.get_color()), h.get_linestyle()) for h in handles]
    assert len(set(styles)) == len(styles), labels
    ax = fig.axes[0]
    result = rep.results[0]
    best = max(METHODS, key=lambda m: result.value(m, "auac"))
    text = [t.get_text() for t in ax.texts if t.get_text().startswith("best here:")]
    assert text and gradtrust.catalogue.display_name(best) in text[0]
    line = next(ln for ln in ax.lines if ln.get_label() == gradtrust.catalogue.display_name(best))
    assert line.get_linewidth() >= 2.4


@pytest.mark.parametrize("columns", [["softmax"], ["softmax", "energy", "gradtrust", "gradnorm"]])
def test_decision_figures_fit_their_canvas(tmp_path, monkeypatch, columns):
    """The decisions section's figures with a long run name (one narrow histogram panel, several panels, the
    risk–coverage curve): no text beyond the canvas."""
    import pandas as pd

    import gradtrust.reporting.decisions as D

    outside: list[list[str]] = []
    original = D.save_png

    def check(fig, path):
        outside.append(artists_outside(fig))
        return original(fig, path)

    monkeypatch.setattr(D, "save_png", check)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({name: rng.random(50) for name in columns})
    gate = {"score": columns[0], "threshold": 0.5, "risk_bound": 0.05, "target_risk": 0.05, "delta": 0.05}
    long_name = "digits:digits_cnn · incoming_production_images_of_tuesday: 50 unlabelled samples"
    D.score_distribution_figure(frame, columns, gate, long_name, tmp_path / "dist.png")
    scores, correct = rng.random(200), rng.random(200) < 0.8
    realised = {"coverage": 0.6, "risk": 0.1, "coverage_ci": (0.5, 0.7), "risk_ci": (0.05, 0.15)}
    D.risk_coverage_figure(scores, correct, gate, realised, long_name + " " + long_name, tmp_path / "rc.png")
    assert outside == [[], []]
