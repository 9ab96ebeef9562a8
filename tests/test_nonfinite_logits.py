"""A sample whose logits are not finite has no prediction: prediction −1, ``correct`` False, the reason in
``nan_reason_prediction``, every score NaN, counted as wrong; the report says how many on the page, and
``explain`` gives NaN VOICE statistics with the reason (issue 21)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import gradtrust
from gradtrust.data.open import open_dataset
from gradtrust.explanations.run import explain_dataset
from gradtrust.models import load_model
from gradtrust.reporting import build_report
from gradtrust.runs.score import score_dataset
from runs_helpers import setup

REASON = "non-finite logits"


class NanForBright(nn.Module):
    """Three classes; all-NaN logits for inputs whose mean is above ``threshold``. Its largest logit would be
    class 0 (the bias), so argmax of NaN (0) would be 'right' for class-0 samples."""

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.fc = nn.Linear(16, 3)
        with torch.no_grad():
            self.fc.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(self.body(x))
        bad = x.flatten(1).mean(1) > self.threshold
        return torch.where(bad[:, None], torch.full_like(z, float("nan")), z)


def test_score_api_gives_no_prediction_for_nonfinite_logits():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 8, 8) * 0.4
    x[[1, 4]] += 0.5  # bright: NaN logits
    result = gradtrust.score(NanForBright(), x, ["softmax", "gradtrust"])
    assert result.prediction.tolist() == [0, -1, 0, 0, -1, 0]
    assert result.prediction_reasons == ["", REASON, "", "", REASON, ""]
    assert torch.isnan(result["softmax"][[1, 4]]).all() and not torch.isnan(result["softmax"][[0, 2]]).any()
    frame = result.to_dataframe()
    assert frame["nan_reason_prediction"].tolist() == result.prediction_reasons
    assert gradtrust.score(NanForBright(), x[[0, 2]], ["softmax"]).prediction_reasons == []
    # sliced into micro-batches, the same result
    sliced = gradtrust.score(NanForBright(), x, ["softmax"], micro_batch=4)
    assert sliced.prediction.tolist() == result.prediction.tolist()
    assert sliced.prediction_reasons == result.prediction_reasons


@pytest.fixture
def nan_run(tmp_path, monkeypatch):
    """A score run of :class:`NanForBright` over 8 images of classes 0 and 1; the bright ones have NaN logits."""
    _, _, data = setup(tmp_path, monkeypatch)
    torch.manual_seed(0)
    # the images of runs_helpers have a mean near 0.5: a threshold between their means splits them
    model = load_model(NanForBright(threshold=0.0), num_classes=3, class_names=["0", "1", "2"])
    dataset = open_dataset(str(data), model)
    means = torch.stack([dataset[i].input.mean() for i in range(len(dataset))])
    model.module.threshold = float(means.median())
    out = tmp_path / "run"
    summary = score_dataset(
        model, dataset, out, methods="softmax,gradtrust", batch_size=3, chunk_size=3, progress=False
    )
    return out, summary, means > means.median()


def test_score_run_writes_minus_one_and_counts_them_wrong(nan_run):
    out, summary, bright = nan_run
    frame = pd.read_parquet(out / "scores.parquet")
    assert bright.any() and (~bright).any()
    assert (frame["prediction"].to_numpy() == -1).tolist() == bright.tolist()
    assert not frame["correct"][bright.numpy()].any()
    assert frame["nan_reason_prediction"].tolist() == [REASON if b else "" for b in bright.tolist()]
    assert frame["softmax"][bright.numpy()].isna().all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["no_prediction"] == int(bright.sum())
    assert any("non-finite logits" in note for note in manifest["notes"])
    # accuracy over every labelled sample, the ones without prediction counted wrong
    right = ((frame["label"] == frame["prediction"]) & (frame["prediction"] >= 0)).sum()
    assert summary.accuracy == pytest.approx(right / len(frame))
    assert manifest["counts"]["correct"] == int(right)


def test_report_states_the_count_on_the_page(nan_run, tmp_path):
    out, _, bright = nan_run
    n = int(bright.sum())
    single = build_report([out], tmp_path / "one", resamples=0, figures=False)
    page = (tmp_path / "one" / "index.html").read_text()
    assert f"{n} of {len(bright)} sample(s) have non-finite logits" in page
    assert f"{n} without prediction (non-finite logits)" in page
    assert json.loads(single.files["json"].read_text())["runs"][0]["no_prediction"] == n
    # a second run beside it: the page still says it, for that run
    build_report([out, out.parent / "run"], tmp_path / "two", resamples=0, figures=False)
    assert f"{n} of {len(bright)} sample(s) have non-finite logits" in (tmp_path / "two" / "index.html").read_text()


def test_explain_gives_nan_voice_with_the_reason(nan_run, tmp_path):
    out, _, bright = nan_run
    torch.manual_seed(0)
    model = load_model(NanForBright(threshold=0.0), num_classes=3, class_names=["0", "1", "2"])
    data = json.loads((out / "manifest.json").read_text())["dataset"]["root"]
    dataset = open_dataset(data, model)
    model.module.threshold = float(torch.stack([dataset[i].input.mean() for i in range(len(dataset))]).median())
    summary = explain_dataset(model, dataset, tmp_path / "explain", voice=True, batch_size=4, progress=False)
    frame = pd.read_parquet(summary.explanations_path)
    bad = bright.numpy()
    assert (~frame["valid"]).tolist() == bad.tolist()
    assert frame["voice_snr"][bad].isna().all() and frame["voice_iou"][bad].isna().all()
    assert np.isfinite(frame["voice_snr"][~bad]).all()
    assert frame["nan_reason_voice_snr"].tolist() == [REASON if b else "" for b in bad]
    assert (frame["prediction"][bad] == -1).all() and not frame["correct"][bad].any()
    assert summary.num_no_prediction == int(bad.sum())
