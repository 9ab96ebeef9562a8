"""``gradtrust report``: the tables against gradtrust.evaluation, ordering, bold, figures, HTML, bad input."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import gradtrust
from gradtrust.cli.report import report_command
from gradtrust.data.digits import DigitsDataset
from gradtrust.evaluation import (
    auac,
    aufc,
    augrc,
    aurc,
    auroc,
    bootstrap_ci,
    fpr_at_95tpr,
    oracle_reference,
)
from gradtrust.models import load_model
from gradtrust.reporting import build_report, load_run
from gradtrust.reporting.figures import quadrant_counts, select_qualitative
from gradtrust.reporting.tables import SELECTIVE_METRICS, selective_cis, top_two

RESAMPLES = 100
METHODS_NO_DROPOUT = ["softmax", "entropy", "max_logit", "margin", "odin", "gradnorm", "gradtrust",
                      "gradtrust_topk", "logit_margin", "energy", "doctor", "maxlogit_pnorm"]


# ------------------------------------------------------------------------------------------ fixtures


def make_run(out: Path, model: str, corruption: str | None = None, methods=None, *, manifest=True,
             dataset_extra: dict | None = None, n: int | None = None) -> Path:
    """A run folder as the runner writes it, scored with gradtrust.score on the bundled digits data."""
    loaded = load_model(f"digits:{model}", "DEFAULT")
    ds = DigitsDataset("test", corruption=corruption)
    x, y = ds.tensors()
    if n is not None:
        x, y = x[:n], y[:n]
    result = gradtrust.score(loaded, x, methods)
    df = result.to_dataframe()
    m = len(df)
    df.insert(0, "index", np.arange(m, dtype=np.int64))
    df.insert(1, "path", [f"digits/test/{corruption or 'clean'}/{i:04d}" for i in range(m)])
    df.insert(2, "label", y.numpy().astype(np.int64))
    df.insert(4, "correct", df["label"].to_numpy() == df["prediction"].to_numpy())
    out.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out / "scores.parquet", index=False)
    if manifest:
        dataset = {"kind": "digits", **ds.spec, "spec": f"digits:test:{corruption or 'clean'}"}
        dataset.pop("dataset")
        dataset.update(dataset_extra or {})
        (out / "manifest.json").write_text(json.dumps({
            "model": loaded.describe(), "dataset": dataset, "methods": result.parameters,
            "skipped": result.skipped, "counts": {"samples": m, "scored": m, "failed": 0},
        }), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "tiny_clean": make_run(root / "tiny_clean", "digits_tiny", None, METHODS_NO_DROPOUT),
        "tiny_noise": make_run(root / "tiny_noise", "digits_tiny", "gaussian_noise", METHODS_NO_DROPOUT),
        "mlp_clean": make_run(root / "mlp_clean", "digits_mlp", None, METHODS_NO_DROPOUT + ["mc_dropout"]),
    }


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return build_report(list(runs.values()), out, resamples=RESAMPLES, seed=3, max_images=8)


def frame_of(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path / "scores.parquet")


def md_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| ---") and not line.startswith("| run "):
            rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return rows


# -------------------------------------------------------------------------------------- the table


def test_table_csv_matches_direct_evaluation(report, runs):
    table = pd.read_csv(report.files["table_csv"])
    assert len(table) == 3
    by_source = {Path(s).name: row for s, (_, row) in zip(table["source"], table.iterrows(), strict=False)}
    for _key, path in runs.items():
        df = frame_of(path)
        row = by_source[path.name]
        c = df["label"].to_numpy() == df["prediction"].to_numpy()
        assert row["n"] == len(df)
        assert row["accuracy_pct"] == pytest.approx(100 * c.mean())
        assert row["random_auac"] == pytest.approx(100 * c.mean())
        a = c.mean()
        assert row["oracle_auac"] == pytest.approx(100 * (a - a * math.log(a)))
        assert row["oracle_auac"] == pytest.approx(oracle_reference(c)["auac"])
        for method in METHODS_NO_DROPOUT:
            s = df[method].to_numpy()
            assert row[f"{method}_auac"] == pytest.approx(auac(s, c), abs=1e-9)
            assert row[f"{method}_aufc"] == pytest.approx(aufc(s, df["label"], df["prediction"]), abs=1e-9)


def test_rows_ordered_by_accuracy_ascending(report):
    table = pd.read_csv(report.files["table_csv"])
    acc = table["accuracy_pct"].to_list()
    assert acc == sorted(acc)
    md = md_rows(report.files["table_md"].read_text())
    assert [r[0] for r in md] == table["run"].to_list()
    assert [float(r[1]) for r in md] == pytest.approx(acc, abs=0.006)
    # The noisy tiny network is the least accurate: first row.
    assert "gaussian_noise" in md[0][0]


def test_bold_marks_top_two_of_each_row_per_metric(report):
    table = pd.read_csv(report.files["table_csv"])
    text = report.files["table_md"].read_text()
    header = next(line for line in text.splitlines() if line.startswith("| run "))
    names = [c.strip() for c in header.strip().strip("|").split(" | ")]
    checked = 0
    for (_, row), cells in zip(table.iterrows(), md_rows(text), strict=False):
        for k, metric in enumerate(("auac", "aufc")):
            values = {m: row[f"{m}_{metric}"] for m in METHODS_NO_DROPOUT}
            expected = sorted(values, key=lambda m: -values[m])[:2]
            best, _ = top_two(values)
            assert set(expected) <= best  # no ties in this data beyond the top two
            for m in METHODS_NO_DROPOUT:
                from gradtrust.reporting.tables import display_name

                cell = cells[names.index(display_name(m))]
                part = cell.split(" / ")[k]
                assert part.startswith("**") == (m in best), (row["run"], m, metric, cell)
                checked += 1
    assert checked == 3 * 2 * len(METHODS_NO_DROPOUT)


def test_top_two_rules():
    assert top_two({"a": 3.0, "b": 2.0, "c": 1.0}) == ({"a", "b"}, False)
    assert top_two({"a": 3.0, "b": 3.0, "c": 3.0}) == (set(), True)  # all tied: nothing bold
    assert top_two({"a": 3.0, "b": 2.0, "c": 2.0, "d": 1.0})[0] == {"a", "b", "c"}  # tie for 2nd
    assert top_two({"a": 1.0, "b": 2.0, "c": 3.0}, higher=False)[0] == {"a", "b"}
    assert top_two({"a": float("nan"), "b": 1.0, "c": 0.5})[0] == {"b", "c"}


def test_method_missing_from_some_runs_gives_empty_cells(report):
    table = pd.read_csv(report.files["table_csv"])
    tiny = table[table["model"] == "digits:digits_tiny"]
    mlp = table[table["model"] == "digits:digits_mlp"]
    assert tiny["mc_dropout_auac"].isna().all()
    assert mlp["mc_dropout_auac"].notna().all()
    text = report.files["table_md"].read_text()
    header = next(line for line in text.splitlines() if line.startswith("| run "))
    col = [c.strip() for c in header.strip().strip("|").split(" | ")].index("MCD")
    for cells in md_rows(text):
        assert (cells[col] == "") == ("digits_tiny" in cells[0])
    assert "no column for MCD" in text


def test_empty_cells_give_the_reason_the_scorer_recorded(runs, tmp_path):
    """A default method the scorer skipped (MC dropout on a network without dropout) is explained."""
    run = make_run(tmp_path / "tiny_all", "digits_tiny")  # every method that applies: mc_dropout is skipped
    text = build_report([run, runs["mlp_clean"]], tmp_path / "report", resamples=0, figures=False).files["table_md"].read_text()
    assert "no column for MCD (empty cells): the model has no dropout layer" in text


def test_selective_csv_matches_direct_evaluation_and_bootstrap(report, runs):
    sel = pd.read_csv(report.files["selective_csv"])
    path = runs["tiny_noise"]
    df = frame_of(path)
    c = df["correct"].to_numpy()
    run_name = load_run(path).name
    for method in ("softmax", "gradtrust", "energy"):
        row = sel[(sel["run"] == run_name) & (sel["method"] == method)].iloc[0]
        s = df[method].to_numpy()
        for metric, fn in (("aurc", aurc), ("augrc", augrc), ("auroc", auroc), ("fpr_at_95tpr", fpr_at_95tpr)):
            assert row[f"{metric}_pct"] == pytest.approx(100 * fn(s, c), abs=1e-10)
            lo, hi = bootstrap_ci(metric, s, c, n_resamples=RESAMPLES, seed=3)
            assert (row[f"{metric}_low_pct"], row[f"{metric}_high_pct"]) == pytest.approx((100 * lo, 100 * hi),
                                                                                            abs=1e-10)
        assert row["auac_pct"] == pytest.approx(auac(s, c), abs=1e-10)  # one scale: percent, in every column
    assert all(c.endswith("_pct") for c in sel.columns if c.split("_")[0] in {"auac", "aufc", "aurc", "eaurc",
                                                                             "augrc", "auroc", "fpr", "accuracy"})
    refs = sel[(sel["run"] == run_name) & sel["method"].str.endswith("_reference")]
    assert set(refs["method"]) == {"random_reference", "oracle_reference"}
    text = report.files["selective_md"].read_text()
    assert "×100" in text and "100 resamples, seed 3" in text


def test_selective_cis_equal_public_bootstrap_ci():
    rng = np.random.default_rng(1)
    s = np.round(rng.normal(size=300), 1)
    c = rng.random(300) < 0.7
    got = selective_cis(s, c, SELECTIVE_METRICS, resamples=150, confidence=0.9, seed=5)
    for m in SELECTIVE_METRICS:
        assert got[m] == pytest.approx(bootstrap_ci(m, s, c, n_resamples=150, confidence=0.9, seed=5))
        # the loop path shares no code with the vectorised one: the fast path cannot hide behind a fallback
        assert got[m] == pytest.approx(bootstrap_ci(m, s, c, n_resamples=150, confidence=0.9, seed=5,
                                                    vectorised=False))


def test_summary_counts_gradtrust_top_two(report):
    s = report.summary
    table = pd.read_csv(report.files["table_csv"])
    for metric in ("auac", "aufc"):
        expected = 0
        for _, row in table.iterrows():
            methods = [m for m in METHODS_NO_DROPOUT + ["mc_dropout"] if not math.isnan(row[f"{m}_{metric}"])]
            better = sum(row[f"{m}_{metric}"] > row[f"gradtrust_{metric}"] for m in methods)
            expected += better < 2
        assert s.top2[metric] == expected
        assert s.rows[metric] == 3
        for _, row in table.iterrows():
            methods = [m for m in METHODS_NO_DROPOUT + ["mc_dropout"] if not math.isnan(row[f"{m}_{metric}"])]
            best = max(methods, key=lambda m: row[f"{m}_{metric}"])
            assert best in s.winners[(row["run"], metric)]
    text = report.files["summary_md"].read_text()
    assert f"top-2 in {s.top2['auac'] + s.top2['aufc']} of 6" in text
    assert "37 of 38" in text
    data = json.loads(report.files["json"].read_text())
    assert data["summary"]["top2"] == s.top2


# ---------------------------------------------------------------------------------------- figures


def _is_png(path: Path) -> tuple[int, int]:
    from PIL import Image

    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_figures_are_valid_pngs(report):
    figs = report.figures
    assert {"accuracy_curves", "f1_curves"} <= set(figs)
    for r in report.results:
        assert f"scatter/{r.name}" in figs
    assert any(k.startswith("qualitative/") for k in figs)
    for path in figs.values():
        w, h = _is_png(path)
        assert w > 100 and h > 100


def test_scatter_quadrants_count_every_sample(report):
    for r in report.results:
        q = report.quadrants[r.name]
        cells = [q[k] for k in ("low_gradtrust_high_softmax", "high_gradtrust_high_softmax",
                                "low_gradtrust_low_softmax", "high_gradtrust_low_softmax")]
        assert sum(t for _, t in cells) == r.run.n
        assert sum(w for w, _ in cells) == r.run.n_wrong
    q = quadrant_counts(np.array([1.0, 2, 3, 4]), np.array([4.0, 3, 2, 1]), np.array([False, True, True, False]))
    assert q.low_x_high_y == (1, 2) and q.high_x_low_y == (1, 2)


def test_qualitative_selection_is_confident_mistakes_in_ascending_gradtrust(runs):
    run = load_run(runs["tiny_noise"])
    rows, threshold = select_qualitative(run, quantile=0.75, max_images=10)
    sm, gt, c = run.scores("softmax"), run.scores("gradtrust"), run.correct
    assert threshold == pytest.approx(np.quantile(sm, 0.75))
    assert len(rows) > 0
    assert not c[rows].any() and (sm[rows] >= threshold).all()
    assert np.all(np.diff(gt[rows]) >= 0)
    everyone = np.flatnonzero(~c & (sm >= threshold))
    assert gt[rows].max() <= np.sort(gt[everyone])[len(rows) - 1] + 1e-12


def test_digits_images_are_rebuilt_from_their_paths(runs):
    from gradtrust.reporting.figures import load_sample_image

    run = load_run(runs["tiny_noise"])
    img = load_sample_image(run, "digits/test/gaussian_noise/0005")
    ref = DigitsDataset("test", "gaussian_noise")[5].input.numpy().reshape(8, 8)
    assert img.shape == (8, 8)
    np.testing.assert_array_equal(255 - img, np.rint(np.clip(ref, 0, 1) * 255).astype(np.uint8))
    assert load_sample_image(run, "/nonexistent/file.jpg") is None


def test_qualitative_grid_from_image_files(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    n = 40
    paths = []
    for i in range(n):
        p = tmp_path / "imgs" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    label = rng.integers(0, 3, n)
    pred = np.where(rng.random(n) < 0.5, label, (label + 1) % 3)
    df = pd.DataFrame({"index": np.arange(n), "path": paths, "label": label, "prediction": pred,
                       "correct": label == pred, "softmax": rng.random(n), "gradtrust": rng.random(n)})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    df.to_parquet(run_dir / "scores.parquet")
    (run_dir / "manifest.json").write_text(json.dumps({"model": {"spec": "toy", "class_names": ["cat", "dog", "eel"]},
                                                        "dataset": {"kind": "ImageFolderDataset", "root": str(tmp_path)}}))
    rep = build_report([run_dir], tmp_path / "out", resamples=0)
    key = next(k for k in rep.figures if k.startswith("qualitative/"))
    _is_png(rep.figures[key])
    assert load_run(run_dir).class_name(2) == "eel"


# ------------------------------------------------------------------------------------------- HTML


def test_html_is_self_contained_with_tables_images_and_manifests(report):
    html = report.files["html"].read_text(encoding="utf-8")
    assert html.count("<table") >= 2 + len(report.results)
    assert "AUAC / AUFC" in html and "<strong>" in html
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == len(report.figures)
    from PIL import Image

    for b64 in images[:3]:
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            assert im.format == "PNG"
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<script" not in html
    for r in report.results:
        assert r.name.replace("·", "&middot;") in html or r.name in html
    assert "<details>" in html and '"weights_sha256"' in html.replace("&quot;", '"')


# -------------------------------------------------------------------------------------- bad input


def test_different_datasets_are_warned_and_split(runs, tmp_path):
    other = tmp_path / "train_run"
    make_run(other, "digits_tiny", None, ["softmax", "gradtrust"], n=300, dataset_extra={"split": "train"})
    rep = build_report([runs["tiny_clean"], runs["tiny_noise"], other], tmp_path / "out", resamples=0,
                       figures=False)
    assert len(rep.groups) == 2
    assert rep.warnings and "2 different datasets" in rep.warnings[0]
    md = rep.files["table_md"].read_text()
    assert "**Warning:**" in md and md.count("## Dataset:") == 2
    html = rep.files["html"].read_text()
    assert 'class="warning"' in html and "different datasets" in html
    table = pd.read_csv(rep.files["table_csv"])
    assert table["dataset"].nunique() == 2
    # Clean and corrupted copies of one split are one dataset (conditions of it), not a mismatch.
    same = build_report([runs["tiny_clean"], runs["tiny_noise"]], tmp_path / "out2", resamples=0, figures=False)
    assert len(same.groups) == 1 and not same.warnings


def test_run_without_wrong_predictions(runs, tmp_path):
    df = frame_of(runs["tiny_clean"])
    df["prediction"] = df["label"]
    df["correct"] = True
    perfect = tmp_path / "perfect"
    perfect.mkdir()
    df.to_parquet(perfect / "scores.parquet")
    shutil.copy(runs["tiny_clean"] / "manifest.json", perfect / "manifest.json")
    rep = build_report([perfect, runs["tiny_noise"]], tmp_path / "out", resamples=20)
    assert rep.ok and not rep.problems
    table = pd.read_csv(rep.files["table_csv"])
    row = table[table["accuracy_pct"] == 100].iloc[0]
    assert row["softmax_auac"] == pytest.approx(100) and row["oracle_auac"] == pytest.approx(100)
    sel = rep.files["selective_md"].read_text()
    assert "n/a" in sel and "no wrong predictions" in sel
    selc = pd.read_csv(rep.files["selective_csv"])
    r = selc[(selc["accuracy_pct"] == 100.0) & (selc["method"] == "softmax")].iloc[0]
    assert math.isnan(r["auroc_pct"]) and math.isnan(r["fpr_at_95tpr_pct"]) and r["aurc_pct"] == 0
    assert "no wrong predictions" in r["undefined"]
    md = rep.files["table_md"].read_text()
    assert "every method has the same AUAC; nothing bold" in md
    assert rep.files["html"].is_file() and "accuracy_curves" in rep.figures


def test_all_nan_method_shows_na_with_reason(runs, tmp_path):
    df = frame_of(runs["tiny_noise"])
    df["purview_initial"] = np.nan
    df["nan_reason_purview_initial"] = "the model has too few parameter tensors"
    df.loc[:9, "energy"] = np.nan
    d = tmp_path / "nan_run"
    d.mkdir()
    df.to_parquet(d / "scores.parquet")
    shutil.copy(runs["tiny_noise"] / "manifest.json", d / "manifest.json")
    rep = build_report([d], tmp_path / "out", resamples=0, figures=False)
    md = rep.files["table_md"].read_text()
    assert "n/a / n/a" in md
    assert "AUAC and AUFC n/a: all scores undefined: the model has too few parameter tensors" in md
    assert "Energy: 10 of 901 scores undefined (NaN)" in " ".join(rep.results[0].notes)


def test_unreadable_and_foreign_files_are_named_and_skipped(runs, tmp_path):
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"this is not parquet at all")
    foreign = tmp_path / "foreign.parquet"
    pd.DataFrame({"a": [1, 2], "b": [0.1, 0.2]}).to_parquet(foreign)
    no_scores = tmp_path / "no_scores.parquet"
    pd.DataFrame({"label": [1, 2], "prediction": [1, 1]}).to_parquet(no_scores)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    missing = tmp_path / "missing"
    rep = build_report([garbage, foreign, no_scores, empty_dir, missing, runs["tiny_clean"]], tmp_path / "out",
                       resamples=0, figures=False)
    assert rep.ok and len(rep.results) == 1
    by_source = {Path(p.source).name: p.message for p in rep.problems}
    assert "cannot be read as a parquet file" in by_source["garbage.parquet"]
    assert "lacks the column(s) label, prediction" in by_source["foreign.parquet"]
    assert "no score column" in by_source["no_scores.parquet"]
    assert "without a scores.parquet" in by_source["empty"]
    assert "does not exist" in by_source["missing"]
    html = rep.files["html"].read_text()
    assert "garbage.parquet" in html and 'class="problem"' in html
    assert rep.files["table_md"].is_file()


def test_parquet_file_without_manifest_still_reports(runs, tmp_path):
    f = tmp_path / "bare.parquet"
    shutil.copy(runs["tiny_clean"] / "scores.parquet", f)
    run = load_run(f)
    assert run.manifest == {} and run.model == "bare"
    assert any("no manifest.json" in n for n in run.notes)
    rep = build_report([f], tmp_path / "out", resamples=0, figures=False)
    assert rep.ok and rep.results[0].run.class_name(3) == "3"


def test_cli_report_exit_codes(runs, tmp_path):
    from click.testing import CliRunner

    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"nope")
    cli = CliRunner()
    ok = cli.invoke(report_command, [str(garbage), str(runs["tiny_clean"]), "--out", str(tmp_path / "a"),
                                     "--resamples", "0", "--no-figures", "--print-table"])
    assert ok.exit_code == 0, ok.output
    assert "garbage.parquet" in ok.output and "cannot be read as a parquet file" in ok.output
    assert "| run |" in ok.output and "index.html" in ok.output
    bad = cli.invoke(report_command, [str(garbage), "--out", str(tmp_path / "b"), "--no-figures"])
    assert bad.exit_code == 1
    assert "garbage.parquet" in bad.output and "none of the 1 input(s) could be read" in bad.output
    assert (tmp_path / "b" / "index.html").is_file()


def test_folder_of_runs_is_searched(runs, tmp_path):
    rep = build_report([runs["tiny_clean"].parent], tmp_path / "out", resamples=0, figures=False)
    assert len(rep.results) == 3


def test_selective_page_warns_when_the_best_two_are_within_their_intervals(report, runs, tmp_path):
    """A ranking on few samples says when its top two cannot be told apart (their CIs overlap), and says
    nothing where they can."""
    from gradtrust.reporting.tables import indistinguishable_leaders

    small = make_run(tmp_path / "small", "digits_tiny", "gaussian_noise", ["softmax", "energy", "margin"], n=39)
    rep = build_report([small], tmp_path / "out", resamples=50, seed=0, figures=False)
    result = rep.groups[0].results[0]
    close = indistinguishable_leaders(result, ["softmax", "energy", "margin"])
    assert close  # three forward-pass scores on 39 samples: not separable
    for metric, (first, second) in close.items():
        a, b = (result.methods[m].values for m in (first, second))
        assert max(a[f"{metric}_low"], b[f"{metric}_low"]) <= min(a[f"{metric}_high"], b[f"{metric}_high"])
    assert "Warning: the best two methods are within each other's intervals" in rep.files["selective_md"].read_text()
    page = rep.files["html"].read_text()
    assert '<li class="warn">Warning: the best two' in page
    assert "td:first-child { position: sticky; left: 0;" in page  # wide tables keep the run column in view
    # the same run with its intervals narrowed to the points: distinguishable, so no warning
    for mr in result.methods.values():
        for metric in ("aurc", "augrc", "auroc", "fpr_at_95tpr"):
            mr.values[f"{metric}_low"] = mr.values[f"{metric}_high"] = mr.values[metric]
    for metric, pair in indistinguishable_leaders(result, list(result.methods)).items():
        assert len({result.methods[m].values[metric] for m in pair}) == 1  # only exact ties remain
