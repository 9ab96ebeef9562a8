"""``gradtrust introspect fit`` / ``score`` / ``benchmark`` in process (CliRunner)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch
from click.testing import CliRunner

from gradtrust.cli import main
from gradtrust.data.digits import DigitsDataset
from gradtrust.introspection import Introspective
from gradtrust.models import load_model


def _invoke(*args: str):
    return CliRunner().invoke(main, ["introspect", *args], catch_exceptions=False)


def test_fit_then_score_holds_both_predictions(tmp_path):
    fit = _invoke("fit", "--model", "digits:digits_linear", "--train", "digits:train", "--out", str(tmp_path / "h"),
                  "--epochs", "2", "--hidden", "8", "--no-progress")
    assert fit.exit_code == 0, fit.output
    config = json.loads((tmp_path / "h" / "estimator.json").read_text())
    assert config["metadata"]["model"]["spec"] == "digits:digits_linear"
    assert config["state"]["info"]["train_samples"] == 896
    run = tmp_path / "run"
    score = _invoke("score", "--introspective", str(tmp_path / "h"), "--data", "digits:test:blur:1", "--out", str(run),
                    "--methods", "softmax,gradtrust", "--batch-size", "512", "--no-progress")
    assert score.exit_code == 0, score.output
    table = pd.read_parquet(run / "introspection.parquet")
    model = load_model("digits:digits_linear", "DEFAULT")
    x, y = DigitsDataset("test", corruption="blur", severity=1).tensors()
    want = Introspective.load(tmp_path / "h").predict(model, x)
    assert table["index"].tolist() == list(range(901)) and table["label"].tolist() == y.tolist()
    assert table["introspective_prediction"].tolist() == want.prediction.tolist()
    assert table["prediction"].tolist() == want.feed_forward_prediction.tolist()
    np.testing.assert_allclose(np.stack(table["introspective_logits"].to_numpy()), want.logits.numpy(), rtol=1e-4,
                               atol=1e-5)
    # the introspective run's trust scores are computed on H's logits
    scores = pd.read_parquet(run / "introspective" / "scores.parquet")
    np.testing.assert_allclose(scores["softmax"], want.logits.double().softmax(1).max(1).values.numpy(), rtol=1e-5)
    assert "introspective:digits:digits_linear" in (run / "introspective" / "manifest.json").read_text()


def test_score_refuses_other_weights_and_missing_folders(tmp_path):
    model = load_model("digits:digits_linear", "DEFAULT")
    x, y = DigitsDataset("train").tensors()
    intro = Introspective(epochs=1, hidden=4).fit(model, x[:100], y[:100])
    intro.save(tmp_path / "h", {"model": {"spec": "digits:digits_linear", "weights": "DEFAULT",
                                          "weights_sha256": "0" * 64, "num_classes": 10}})
    out = _invoke("score", "--introspective", str(tmp_path / "h"), "--data", "digits:test", "--out",
                  str(tmp_path / "r"), "--no-progress")
    assert out.exit_code == 2 and "differ from those H was fitted on" in out.output
    (tmp_path / "empty").mkdir()
    out = _invoke("score", "--introspective", str(tmp_path / "empty"), "--data", "digits:test", "--out",
                  str(tmp_path / "r"))
    assert out.exit_code == 2 and "no fitted introspective network" in out.output


def test_benchmark_one_network(tmp_path):
    torch.manual_seed(0)
    out = _invoke("benchmark", "--models", "digits:digits_linear", "--epochs", "2", "--hidden", "8", "--resamples",
                  "20", "--out", str(tmp_path / "b"))
    assert out.exit_code == 0, out.output
    frame = pd.read_csv(tmp_path / "b" / "table.csv")
    assert frame["condition"].tolist() == ["clean", "gaussian_noise/1", "blur/1", "contrast/1"]
    clean = frame.iloc[0]
    assert abs(clean["accuracy_ff"] - 0.911) < 1e-3  # the bundled network's clean accuracy (digits_accuracy.json)
    assert clean["accuracy_ff_low"] <= clean["accuracy_ff"] <= clean["accuracy_ff_high"]
    assert abs(clean["delta_accuracy"] - (clean["accuracy_intro"] - clean["accuracy_ff"])) < 1e-12
    assert "| digits:digits_linear | clean |" in out.output and "accuracy_control" in frame.columns


def test_fit_resumes_from_feature_chunks(tmp_path):
    args = ["fit", "--model", "digits:digits_linear", "--train", "digits:train", "--out", str(tmp_path / "h"),
            "--epochs", "2", "--hidden", "8", "--chunk-size", "300", "--no-progress"]
    assert _invoke(*args).exit_code == 0
    chunks = sorted((tmp_path / "h" / "features" / "chunks").glob("chunk-*.parquet"))
    assert [c.name for c in chunks] == ["chunk-000000000.parquet", "chunk-000000300.parquet", "chunk-000000600.parquet"]
    first = (tmp_path / "h" / "weights.safetensors").read_bytes()
    chunks[1].unlink()  # as if the fit had been killed while computing the second chunk
    again = _invoke(*args)
    assert again.exit_code == 0 and "resumed: 2 chunk(s)" in again.output
    assert (tmp_path / "h" / "weights.safetensors").read_bytes() == first
    # another training setting of the cache (chunk size) starts the features afresh
    other = _invoke(*args[:-3], "--chunk-size", "500", "--no-progress")
    assert other.exit_code == 0 and "resumed" not in other.output
    assert len(list((tmp_path / "h" / "features" / "chunks").glob("chunk-*.parquet"))) == 2


def test_fit_refuses_a_train_set_with_other_classes(tmp_path):
    from PIL import Image

    for name in ("cat", "dog", "eel"):
        (tmp_path / "train" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / name / "0.png")
    out = _invoke("fit", "--model", "torchvision:resnet18", "--weights", "random", "--num-classes", "5", "--train",
                  str(tmp_path / "train"), "--out", str(tmp_path / "h"), "--no-progress")
    assert out.exit_code == 2 and "classes do not match the model's outputs" in out.output
    assert not (tmp_path / "h" / "weights.safetensors").exists()
