"""From scores to decisions on the command line: unlabelled data (one image, a flat folder, a glob, a .txt list),
`gradtrust gate fit` / `apply`, `gradtrust score --gate`, and the report's decisions section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from gradtrust.cli import main
from gradtrust.data import DigitsDataset, digits_image
from gradtrust.data.open import open_dataset
from gradtrust.errors import DataError
from gradtrust.models import load_model
from gradtrust.schema import read_results
from gradtrust.selective import Gate

METHODS = "softmax,gradtrust,energy"


def _run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A labelled calibration run on digits:test, a gate fitted on it, and 12 test digits saved as PNG files."""
    root = tmp_path_factory.mktemp("decisions")
    _run(
        "score",
        "--model",
        "digits:digits_cnn",
        "--data",
        "digits:test",
        "--methods",
        METHODS,
        "--out",
        str(root / "cal"),
        "--no-progress",
        "--device",
        "cpu",
    )
    _run("gate", "fit", str(root / "cal"), "--score", "softmax", "--risk", "0.03", "--out", str(root / "gate.json"))
    images = root / "images"
    images.mkdir()
    data = DigitsDataset(split="test")
    for i in range(12):
        Image.fromarray(digits_image(data[i].input)).save(images / f"digit_{i:02d}.png")
    (root / "list.txt").write_text("# two of them\nimages/digit_03.png\n\nimages/digit_07.png\n")
    return root


def test_gate_fit_writes_a_gate_whose_numbers_match_the_run(workspace):
    gate = Gate.load(workspace / "gate.json")
    frame = read_results(workspace / "cal")
    correct = frame["correct"].to_numpy(dtype=bool)
    accepted = frame["softmax"].to_numpy() >= gate.threshold
    assert gate.score == "softmax" and gate.method == "sgr" and gate.risk_bound <= 0.03
    assert gate.accepted == accepted.sum() and gate.errors == (accepted & ~correct).sum()
    assert gate.n == len(frame) and 0.5 < gate.coverage < 1.0


@pytest.mark.parametrize("form", ["folder", "image", "glob", "list"])
def test_unlabelled_data_scores_with_null_correctness_and_gets_an_accept_column(workspace, form):
    data = {
        "folder": workspace / "images",
        "image": workspace / "images" / "digit_05.png",
        "glob": f"{workspace}/images/digit_0*.png",
        "list": workspace / "list.txt",
    }[form]
    expected = {"folder": 12, "image": 1, "glob": 10, "list": 2}[form]
    out = workspace / f"unlabelled-{form}"
    args = [
        "score",
        "--model",
        "digits:digits_cnn",
        "--data",
        str(data),
        "--methods",
        METHODS,
        "--gate",
        str(workspace / "gate.json"),
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
    ]
    text = _run(*args)
    assert "accuracy n/a (no labels)" in text and "gate:" in text
    frame = read_results(out)
    assert len(frame) == expected and (frame["label"] == -1).all()
    assert str(frame["correct"].dtype) == "boolean" and frame["correct"].isna().all()
    decisions = pd.read_parquet(out / "decisions.parquet")
    gate = Gate.load(workspace / "gate.json")
    np.testing.assert_array_equal(decisions["accept"].to_numpy(), gate.accept(frame["softmax"].to_numpy()))
    summary = json.loads((out / "decisions.json").read_text())
    assert summary["realised"] is None and summary["labelled"] == 0 and "distribution shift" in summary["note"]
    if form == "folder":  # the PNGs are the test digits: the network reads them back as it reads the tensors
        labels = np.array([DigitsDataset(split="test")[i].label for i in range(12)])
        assert (frame["prediction"].to_numpy() == labels).mean() >= 0.9
        before = (out / "scores.parquet").read_bytes()
        _run(*args)  # the same command again: resumed, the same bytes
        assert (out / "scores.parquet").read_bytes() == before
        refused = CliRunner().invoke(main, ["gate", "fit", str(out), "--risk", "0.05", "--out", str(out / "g.json")])
        assert refused.exit_code == 2 and "no labelled row" in refused.stderr


def test_gate_apply_reports_realised_coverage_and_risk_on_labelled_runs(workspace):
    text = _run("gate", "apply", str(workspace / "gate.json"), str(workspace / "cal"))
    assert "selective risk" in text and "distribution shift" in text
    summary = json.loads((workspace / "cal" / "decisions.json").read_text())
    gate = Gate.load(workspace / "gate.json")
    assert summary["realised"]["accepted"] == gate.accepted and summary["realised"]["errors"] == gate.errors
    decisions = pd.read_parquet(workspace / "cal" / "decisions.parquet")
    assert decisions["accept"].sum() == gate.accepted and decisions["correct"].notna().all()


def test_gate_fit_auto_chooses_among_the_run_scores(workspace):
    text = _run(
        "gate",
        "fit",
        str(workspace / "cal"),
        "--score",
        "auto",
        "--risk",
        "0.03",
        "--method",
        "ltt",
        "--out",
        str(workspace / "auto.json"),
    )
    gate = Gate.load(workspace / "auto.json")
    assert gate.score in METHODS.split(",") and gate.selection["how"] == "family" and "chose" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--score", "softmax"], "give a target"),
        (["--score", "nonsense", "--risk", "0.05"], "is not a score column"),
        (["--score", "softmax", "--risk", "0.0001"], "no threshold"),
    ],
)
def test_gate_fit_user_errors_end_with_one_line(workspace, args, message):
    result = CliRunner().invoke(
        main, ["gate", "fit", str(workspace / "cal"), *args, "--out", str(workspace / "x.json")]
    )
    assert result.exit_code == 2 and message in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("Error")]) == 1


def test_unlabelled_forms_that_find_nothing_say_so(tmp_path):
    model = load_model("digits:digits_cnn", "DEFAULT")
    with pytest.raises(DataError, match="matches no image file"):
        open_dataset(str(tmp_path / "*.png"), model)
    (tmp_path / "list.txt").write_text("missing.png\n")
    with pytest.raises(DataError, match="do not exist"):
        open_dataset(str(tmp_path / "list.txt"), model)
    (tmp_path / "notes.csv").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        open_dataset(str(tmp_path / "notes.csv"), model)


def test_report_shows_operating_points_and_unlabelled_distributions_without_label_metrics(workspace):
    _run("gate", "apply", str(workspace / "gate.json"), str(workspace / "cal"))
    unlabelled = workspace / "unlabelled-report"
    _run(
        "score",
        "--model",
        "digits:digits_cnn",
        "--data",
        str(workspace / "images"),
        "--methods",
        METHODS,
        "--gate",
        str(workspace / "gate.json"),
        "--out",
        str(unlabelled),
        "--no-progress",
        "--device",
        "cpu",
    )
    out = workspace / "report"
    _run("report", str(workspace / "cal"), str(unlabelled), "--out", str(out), "--resamples", "20")
    data = json.loads((out / "report.json").read_text())
    decisions = {Path(r["source"]).name: r for r in data["kinds"]["decisions"]}
    assert set(decisions) == {"cal", "unlabelled-report"}
    assert decisions["unlabelled-report"]["labelled"] == 0 and decisions["cal"]["gate"]["score"] == "softmax"
    assert [r["name"] for r in data["runs"]] == [data["kinds"]["score"][0]["name"]]  # the unlabelled run: no metrics
    assert not data["problems"]
    figures = sorted(p.name for p in (out / "figures" / "decisions").glob("*.png"))
    assert len(figures) == 2
    page = (out / "index.html").read_text()
    assert 'id="decisions"' in page and "n/a (no labels)" in page and "distribution shift" in page
    assert "Recommended score for" in (out / "summary.md").read_text()
