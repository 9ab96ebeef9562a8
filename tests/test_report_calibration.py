"""The runner stores the logits (logits.parquet) and the report's calibration section reads them; runs
without logits still report ECE from their softmax column, and the existing tables do not change."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from gradtrust.data.open import open_dataset
from gradtrust.evaluation import calibration as cal
from gradtrust.models import load_model
from gradtrust.reporting import build_report
from gradtrust.reporting.calibration import calibration_row, run_logits
from gradtrust.reporting.runs import load_run
from gradtrust.runs import LOGITS_FILE, score_dataset


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    model = load_model("digits:digits_linear", "DEFAULT")
    data = open_dataset("digits:test:blur:1", model)
    out = tmp_path_factory.mktemp("run") / "linear"
    score_dataset(model, data, out, methods="softmax", batch_size=256, chunk_size=512, progress=False)
    return model, data, out


def test_logits_file_holds_the_model_logits_in_row_order(scored):
    model, data, out = scored
    logits = pd.read_parquet(out / LOGITS_FILE)
    scores = pd.read_parquet(out / "scores.parquet")
    assert logits["index"].tolist() == scores["index"].tolist()
    stored = np.stack(logits["logits"].to_numpy())
    inputs = torch.stack([data[i].input for i in range(len(data))])
    with torch.no_grad():
        want = model.module(inputs).numpy()
    np.testing.assert_allclose(stored, want, rtol=1e-5, atol=1e-5)
    assert (stored.argmax(1) == scores["prediction"].to_numpy()).all()
    np.testing.assert_allclose(cal.softmax(stored).max(1), scores["softmax"], rtol=1e-5)


def test_report_calibration_section_and_old_runs(scored, tmp_path):
    _, _, out = scored
    run = load_run(out)
    row = calibration_row(run, resamples=20, seed=0)
    logits = run_logits(run)
    assert logits is not None
    probs = cal.softmax(logits)
    conf, correct = cal.top_label(probs, run.labels)
    assert row.values["ece"] == pytest.approx(cal.expected_calibration_error(conf, correct))
    assert row.values["brier"] == pytest.approx(cal.brier_score(probs, run.labels))
    assert row.values["nll"] == pytest.approx(cal.negative_log_likelihood(logits, run.labels))
    low, high = row.intervals["nll"]
    assert low <= row.values["nll"] <= high
    for key in ("ece", "adaptive_ece", "classwise_ece"):  # bias-corrected, inside their (basic) intervals
        low, high = row.intervals[key]
        assert low <= row.corrected[key] <= high
    assert row.temperatures is not None and all(t > 0 for t in row.temperatures)

    new = build_report([out], tmp_path / "new", resamples=20, figures=False)
    text = (tmp_path / "new" / "calibration.md").read_text()
    assert f"{100 * row.values['ece']:.2f}" in text and "n/a" not in text.split("\n| ---")[1].split("\n")[1]
    assert "calibration" in (tmp_path / "new" / "index.html").read_text()
    assert "bias-corrected estimate" in text and "BCa" in text  # the page says which intervals it shows

    # the same run without logits (as written before they were stored): same tables, ECE from softmax
    old = tmp_path / "old"
    old.mkdir()
    for name in ("scores.parquet", "manifest.json"):
        (old / name).write_bytes((out / name).read_bytes())
    old_report = build_report([old], tmp_path / "old_report", resamples=20, figures=False)
    for name in ("table.md", "selective.md", "summary.md"):
        assert (tmp_path / "old_report" / name).read_bytes() == (tmp_path / "new" / name).read_bytes()
    old_row = old_report.calibration[0]
    assert old_row.values["ece"] == pytest.approx(row.values["ece"], abs=1e-6)  # float32 softmax vs float64
    assert "classwise_ece" not in old_row.values and "no logits.parquet" in old_row.notes[0]
    assert "no logits.parquet" in (tmp_path / "old_report" / "calibration.md").read_text()
    assert new.ok and old_report.ok


def test_logits_file_skipped_when_a_resumed_chunk_has_none(scored, tmp_path):
    from gradtrust.runs import chunks as ch
    from gradtrust.runs.score import write_logits

    _, _, out = scored
    layout = ch.ChunkLayout(901, 512, 256)
    metas = [ch.read_chunk_meta(layout.path(out, k)) for k in range(layout.num_chunks)]
    assert all(m["logits"] == 10 for m in metas)
    copy = tmp_path / "copy"
    (copy / "chunks").mkdir(parents=True)
    for k in range(layout.num_chunks):
        layout.path(copy, k).write_bytes(layout.path(out, k).read_bytes())
    assert write_logits(copy, layout, metas) and (copy / LOGITS_FILE).is_file()
    old = [dict(m) for m in metas]
    del old[1]["logits"]  # a chunk written before logits were stored
    assert not write_logits(copy, layout, old) and not (copy / LOGITS_FILE).exists()
