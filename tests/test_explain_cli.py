"""``gradtrust explain`` in process: the stored maps and VOICE statistics are those of the API on the same inputs,
a second run resumes, other settings are refused, a model without a spatial layer fails before writing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import gradtrust
from gradtrust.cli import main
from gradtrust.data.open import open_dataset
from gradtrust.explanations.run import full_resolution, load_maps
from gradtrust.models import load_model


def _cli(*args: str):
    return CliRunner().invoke(main, ["explain", *args], catch_exceptions=False)


@pytest.mark.slow  # explains all 901 digits twice (with VOICE) and writes PNGs: a few seconds
def test_explain_digits_cnn_stores_what_the_api_computes(tmp_path):
    out = tmp_path / "run" / "explanations"  # inside a score run: the report's gallery finds it there
    args = ("--model", "digits:digits_cnn", "--out", str(out), "--voice", "--save-images", "2", "--batch-size", "512",
            "--no-progress")
    result = _cli(*args)
    assert result.exit_code == 0, result.output
    assert "explained 901 of 901" in result.output
    frame = pd.read_parquet(out / "explanations.parquet")
    assert len(frame) == 901 and frame["index"].tolist() == list(range(901))
    assert {"map_gradcam", "map_counterfactual", "map_contrast", "voice_snr", "voice_iou"} <= set(frame.columns)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000.png", "000001.png"]

    model = load_model("digits:digits_cnn", "DEFAULT")
    data = open_dataset("digits", model)
    x = torch.stack([data[i].input for i in range(6)])
    ex = gradtrust.explain(model, x)
    v = gradtrust.voice(model, x)
    import pyarrow.parquet as pq

    table = pq.read_table(out / "explanations.parquet").slice(0, 6)
    for method in ("gradcam", "counterfactual", "contrast"):
        stored = load_maps(table, method)
        assert np.allclose(stored, ex.layer_maps[method].numpy(), atol=1e-5)
        assert np.allclose(full_resolution(stored, (8, 8)), ex[method].numpy(), atol=1e-5)
    assert np.allclose(frame["voice_snr"][:6], v.snr.numpy(), atol=1e-6)
    assert np.allclose(frame["voice_iou"][:6], v.iou.numpy(), atol=1e-6)
    assert frame["contrast"][:6].tolist() == ex.contrast.tolist()
    assert frame["target"][:6].tolist() == frame["prediction"][:6].tolist()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"samples": 901, "explained": 901, "failed": 0, "no_prediction": 0}
    assert manifest["layer"] == "6"

    chunk = next((out / "chunks").iterdir())
    mtime = chunk.stat().st_mtime_ns
    again = _cli(*args)
    assert again.exit_code == 0 and chunk.stat().st_mtime_ns == mtime  # resumed: nothing recomputed
    other = _cli("--model", "digits:digits_cnn", "--out", str(out), "--threshold", "0.3", "--no-progress")
    assert other.exit_code == 2 and "other settings" in other.output


@pytest.mark.parametrize("args, fragment", [
    (("--model", "digits:digits_mlp"), "spatial"),
    (("--model", "digits:digits_cnn", "--layer", "nope"), "not a module"),
    (("--model", "digits:digits_cnn", "--contrast", "zebra"), "neither a class index nor a class name"),
    (("--model", "digits:digits_cnn", "--methods", "saliency"), "unknown explanation"),
])
def test_errors_exit_2_before_writing(tmp_path, args, fragment):
    out = tmp_path / "bad"
    result = _cli(*args, "--out", str(out), "--no-progress")
    assert result.exit_code == 2 and fragment in result.output, result.output
    assert not (out / "explanations.parquet").exists()


@pytest.mark.slow  # scores and explains all 901 digits
def test_report_gallery_shows_most_and_least_trusted(tmp_path):
    from gradtrust.explanations.run import explain_dataset
    from gradtrust.reporting.explanations import gallery_figure
    from gradtrust.reporting.runs import load_run
    from gradtrust.runs import score_dataset

    model = load_model("digits:digits_cnn", "DEFAULT")
    data = open_dataset("digits:test:blur:2", model)
    run_dir = tmp_path / "run"
    score_dataset(model, data, run_dir, methods="softmax,gradtrust", batch_size=512, progress=False)
    explain_dataset(model, data, run_dir / "explanations", voice=True, batch_size=512, progress=False)
    run = load_run(run_dir)
    drawn = gallery_figure(run, tmp_path / "gallery.png")
    assert drawn is not None and (tmp_path / "gallery.png").stat().st_size > 10_000
    trust, correct = run.scores("gradtrust"), run.correct
    rows = drawn["rows"]
    assert rows[0] == int(np.argmax(np.where(correct, trust, -np.inf)))  # most trusted right first
    assert int(np.argmin(np.where(~correct, trust, np.inf))) in rows  # least trusted wrong included
    assert len(rows) == 8 and drawn["trust"] == "gradtrust"
