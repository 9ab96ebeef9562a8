"""``gradtrust gradcon fit/score`` and the report's anomaly section, in process (CliRunner), on a tiny image
folder written here. Numbers are checked against scikit-learn and a brute-force FPR@95."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from sklearn.metrics import roc_auc_score

from gradtrust.cli import main
from gradtrust.gradcon import GradCON
from gradtrust.gradcon.benchmark import _markdown
from gradtrust.gradcon.data import load_labelled


def _write_folder(root: Path, per_class: dict[str, int], size: int = 8, seed: int = 0,
                  odd_size: tuple[str, int] | None = None) -> Path:
    """Grey PNGs: class 'a' bright blobs, class 'b' dark noise, class 'c' stripes."""
    rng = np.random.default_rng(seed)
    for name, count in per_class.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            s = odd_size[1] if odd_size and odd_size[0] == name and i == 0 else size
            if name == "a":
                img = np.clip(200 + rng.normal(0, 20, (s, s)), 0, 255)
            elif name == "b":
                img = np.clip(rng.normal(40, 20, (s, s)), 0, 255)
            else:
                img = np.tile((np.arange(s) % 2) * 255.0, (s, 1))
            Image.fromarray(img.astype(np.uint8), mode="L").save(root / name / f"{i:02d}.png")
    return root


def _fpr95_brute(score: np.ndarray, inlier: np.ndarray) -> float:
    for t in np.sort(np.unique(score))[::-1]:
        if (score[inlier] >= t).mean() >= 0.95:
            return float((score[~inlier] >= t).mean())
    raise AssertionError


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gradcon_cli")
    data = _write_folder(root / "data", {"a": 6, "b": 5, "c": 4})
    runner = CliRunner()
    fit = runner.invoke(main, ["gradcon", "fit", "--data", str(data), "--inlier", "a", "--out", str(root / "model"),
                               "--epochs", "2", "--batch-size", "4", "--grayscale", "--no-progress"])
    assert fit.exit_code == 0, fit.output
    score = runner.invoke(main, ["gradcon", "score", "--model", str(root / "model"), "--data", str(data),
                                 "--out", str(root / "run"), "--resamples", "50", "--no-progress"])
    assert score.exit_code == 0, score.output
    assert "AUROC" in score.output
    return {"root": root, "data": data, "model": root / "model", "run": root / "run"}


def test_score_run_folder_matches_the_detector_and_sklearn(scored):
    frame = pd.read_parquet(scored["run"] / "anomaly_scores.parquet")
    manifest = json.loads((scored["run"] / "manifest.json").read_text())
    assert manifest["kind"] == "gradcon" and manifest["inlier"] == {"label": 0, "name": "a"}
    assert manifest["counts"]["inliers"] == 6 and manifest["counts"]["anomalies"] == 9
    assert list(frame["inlier"]) == [True] * 6 + [False] * 9
    det = GradCON.load(scored["model"])
    images = load_labelled(str(scored["data"]), grayscale=True).images
    assert images.shape == (15, 1, 8, 8)
    np.testing.assert_allclose(frame["score"], det.score(images), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(frame["score"], -frame["mse"] + 0.12 * frame["gradient_term"], atol=1e-12)
    inlier = frame["inlier"].to_numpy()
    assert manifest["summary"]["auroc"] == pytest.approx(roc_auc_score(inlier, frame["score"]), abs=1e-12)
    assert manifest["summary"]["fpr_at_95tpr"] == pytest.approx(_fpr95_brute(frame["score"].to_numpy(), inlier))
    with np.load(scored["run"] / "reconstructions.npz") as rec:
        assert rec["input"].shape == (14, 1, 28, 28) and rec["reconstruction"].shape == (14, 1, 28, 28)
        order = np.argsort(frame["score"].to_numpy(), kind="stable")
        np.testing.assert_array_equal(rec["position"][:7], order[:7])  # most anomalous first


def test_report_shows_the_anomaly_section_and_keeps_misclassification_tables(scored, tmp_path):
    # a minimal misclassification run beside it
    rng = np.random.default_rng(0)
    cls = tmp_path / "cls_run"
    cls.mkdir()
    label = rng.integers(0, 3, 40)
    pred = np.where(rng.random(40) < 0.7, label, (label + 1) % 3)
    pd.DataFrame({"index": np.arange(40), "path": [f"x{i}" for i in range(40)], "label": label, "prediction": pred,
                  "correct": label == pred, "softmax": rng.random(40)}).to_parquet(cls / "scores.parquet")
    out = tmp_path / "report"
    res = CliRunner().invoke(main, ["report", str(scored["run"]), str(cls), "--out", str(out), "--resamples", "20",
                                    "--print-table", "--no-figures"])
    assert res.exit_code == 0, res.output
    assert "1 GradCON anomaly run(s)" in res.output
    anomaly = (out / "anomaly.md").read_text()
    frame = pd.read_parquet(scored["run"] / "anomaly_scores.parquet")
    expected = 100 * roc_auc_score(frame["inlier"], frame["score"])
    assert f"| {expected:.2f} [" in anomaly
    table = (out / "table.md").read_text()
    assert "cls_run" in table and "GradCON" not in table  # the anomaly run stays out of the paper's table
    page = (out / "index.html").read_text()
    assert 'id="anomaly"' in page and 'id="table"' in page
    only = CliRunner().invoke(main, ["report", str(scored["run"]), "--out", str(tmp_path / "r2"), "--resamples", "20"])
    assert only.exit_code == 0, only.output
    assert not (tmp_path / "r2" / "table.md").exists() and (tmp_path / "r2" / "anomaly.md").exists()
    figures = sorted((tmp_path / "r2" / "figures" / "anomaly").iterdir())
    assert [p.name.rsplit("_", 1)[1] for p in figures] == ["hist.png", "recon.png"]
    assert all(p.stat().st_size > 5000 for p in figures)
    assert (tmp_path / "r2" / "index.html").read_text().count("data:image/png;base64,") == 2


def test_cli_errors_are_clear(scored, tmp_path):
    runner = CliRunner()
    empty_class = _write_folder(tmp_path / "d1", {"a": 3, "b": 3})
    (empty_class / "z").mkdir()
    res = runner.invoke(main, ["gradcon", "fit", "--data", str(empty_class), "--inlier", "z", "--out",
                               str(tmp_path / "m"), "--no-progress"])
    assert res.exit_code == 2 and "'z' has no images" in res.output and "'a': 3" in res.output
    res = runner.invoke(main, ["gradcon", "fit", "--data", str(empty_class), "--inlier", "q", "--out",
                               str(tmp_path / "m"), "--no-progress"])
    assert res.exit_code == 2 and "unknown inlier class 'q'" in res.output
    mixed = _write_folder(tmp_path / "d2", {"a": 3, "b": 3}, odd_size=("b", 12))
    res = runner.invoke(main, ["gradcon", "fit", "--data", str(mixed), "--inlier", "a", "--out", str(tmp_path / "m"),
                               "--no-progress"])
    assert res.exit_code == 2 and "mixed sizes" in res.output and "(3, 12, 12)" in res.output
    res = runner.invoke(main, ["gradcon", "score", "--model", str(tmp_path / "nope"), "--data", str(mixed),
                               "--out", str(tmp_path / "r"), "--no-progress"])
    assert res.exit_code == 2 and "not a saved GradCON model" in res.output
    res = runner.invoke(main, ["gradcon", "score", "--model", str(scored["model"]), "--data", str(mixed),
                               "--out", str(tmp_path / "r"), "--no-progress"])
    assert res.exit_code == 2 and "mixed sizes" in res.output
    rgb = runner.invoke(main, ["gradcon", "score", "--model", str(scored["model"]), "--data", str(scored["data"]),
                               "--out", str(tmp_path / "r"), "--rgb", "--no-progress"])
    assert rgb.exit_code == 2 and "1-channel" in rgb.output


def test_benchmark_markdown_cells():
    ci = (0.9, 0.95)
    row = {"class": "mean", "n_test_inliers": None, "n_test": 10, "auroc_autoencoder": 0.925,
           "auroc_autoencoder_ci": ci, "auroc_gradcon": 0.5, "auroc_gradcon_ci": (float("nan"),) * 2,
           "delta": -0.425, "delta_ci": (-0.5, -0.4), "auroc_gradcon_gamma0": float("nan"),
           "auroc_gradcon_gamma0_ci": ci}
    text = _markdown([row], {"confidence": 0.95, "resamples": 10, "seed": 0, "epochs": 1, "beta": 0.03,
                             "gamma": 0.12})
    assert "| **mean** | — | 92.50 [90.00, 95.00] | 50.00 | -42.50 [-50.00, -40.00] | n/a |" in text
    assert torch.get_num_threads() >= 1


@pytest.mark.slow
def test_benchmark_command_end_to_end(tmp_path):
    """`gradtrust gradcon benchmark` in a subprocess on two classes, 2 epochs: the table's cells are
    sklearn's AUROC of the stored runs, and the report exists."""
    import subprocess
    import sys

    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "gradtrust", "gradcon", "benchmark", "--out", str(out),
                           "--classes", "0,7", "--epochs", "2", "--resamples", "50", "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out / "table.csv")
    assert list(table["class"].astype(str)) == ["0", "7", "mean"]
    for c in (0, 7):
        frames = {m: pd.read_parquet(out / "runs" / m / f"class_{c}" / "anomaly_scores.parquet")
                  for m in ("autoencoder", "gradcon")}
        row = table[table["class"].astype(str) == str(c)].iloc[0]
        for m, f in frames.items():
            assert row[f"auroc_{m}"] == pytest.approx(roc_auc_score(f["inlier"], f["score"]), abs=1e-12)
        assert row["auroc_gradcon_gamma0"] == pytest.approx(roc_auc_score(frames["gradcon"]["inlier"],
                                                                          -frames["gradcon"]["mse"]), abs=1e-12)
        assert frames["gradcon"]["inlier"].sum() == (frames["gradcon"]["label"] == c).sum() > 0
    mean = table[table["class"] == "mean"].iloc[0]
    assert mean["auroc_gradcon"] == pytest.approx(table["auroc_gradcon"][:2].mean(), abs=1e-12)
    assert mean["auroc_gradcon_ci_low"] <= mean["auroc_gradcon"] <= mean["auroc_gradcon_ci_high"]
    assert "| **mean** |" in proc.stdout and (out / "report" / "index.html").is_file()
    assert (out / "report" / "anomaly.md").read_text().count("inlier 7") == 2
