"""``gradtrust score``: the digits default end to end, options, errors (one ``Error:`` line, exit 2), refusal
of a changed run in an existing output folder, ``--force``, and ``python -m gradtrust score``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from click.testing import CliRunner

from gradtrust.cli import main
from gradtrust.cli.score import parse_option_pairs
from gradtrust.errors import InputError, UnknownNameError
from gradtrust.models import available_digits_models
from gradtrust.models.digits import digits_accuracy_table

CHEAP = "softmax,entropy,margin,gradtrust,gradtrust_topk,gradnorm,odin"


def run_cli(*args: str):
    return CliRunner().invoke(main, ["score", *args], catch_exceptions=False)


def subprocess_env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


def assert_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(error_lines) == 1, result.output
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]


def test_digits_default_every_network(tmp_path):
    out = tmp_path / "digits"
    result = run_cli("--out", str(out), "--methods", CHEAP, "--batch-size", "128", "--no-progress")
    assert result.exit_code == 0, result.output
    recorded = digits_accuracy_table()["models"]
    for name in available_digits_models():
        folder = out / name
        assert {p.name for p in folder.iterdir()} == {"chunks", "run.json", "scores.parquet", "logits.parquet",
                                                          "manifest.json"}
        frame = pd.read_parquet(folder / "scores.parquet")
        assert len(frame) == 901
        assert list(frame.columns[:5]) == ["index", "path", "label", "prediction", "correct"]
        assert list(frame.columns[5:]) == CHEAP.split(",")
        assert frame["index"].tolist() == list(range(901))
        assert str(frame["index"].dtype) == "int64" and str(frame["label"].dtype) == "int64"
        assert str(frame["prediction"].dtype) == "int64" and str(frame["correct"].dtype) == "bool"
        assert all(str(frame[m].dtype) == "float64" for m in CHEAP.split(","))
        assert (frame["correct"] == (frame["label"] == frame["prediction"])).all()
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["model"]["spec"] == f"digits:{name}"
        assert manifest["model"]["weights"] == "bundled" and len(manifest["weights_sha256"]) == 64
        assert manifest["dataset"]["kind"] == "digits" and manifest["dataset"]["samples"] == 901
        assert manifest["counts"] == {"samples": 901, "scored": 901, "failed": 0, "labelled": 901,
                                      "correct": int(frame["correct"].sum()), "no_prediction": 0}
        assert manifest["accuracy"] == pytest.approx(frame["correct"].mean())
        assert set(manifest["methods"]) == set(CHEAP.split(","))
        assert manifest["methods"]["odin"] == {"odin_temperature": 100.0, "odin_epsilon": 0.0014,
                                                 "odin_epsilon_space": "input", "odin_input_std": None}
        assert manifest["score_info"]["final_layer"]
        for key in ("torch", "torchvision", "numpy", "pandas", "gradtrust", "python"):
            assert manifest["versions"][key]
        assert manifest["failures"] == []
        assert manifest["execution"]["device"] == "cpu" and manifest["execution"]["elapsed_s"] >= 0
        assert manifest["accuracy"] == pytest.approx(recorded[name]["test_accuracy"]["clean"], abs=1e-4)
        assert f"digits:{name}" in result.output
    assert "accuracy" in result.output and "scores.parquet" in result.output


@pytest.mark.slow
def test_python_m_gradtrust_score_subprocess_all_methods(tmp_path):
    out = tmp_path / "cnn-noise"
    proc = subprocess.run(
        [sys.executable, "-m", "gradtrust", "score", "--model", "digits:digits_cnn", "--data",
         "digits:test:gaussian_noise:2", "--out", str(out), "--batch-size", "128", "--no-progress"],
        capture_output=True, text=True, env=subprocess_env(), timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "scored 901 of 901" in proc.stdout
    frame = pd.read_parquet(out / "scores.parquet")
    manifest = json.loads((out / "manifest.json").read_text())
    import gradtrust

    assert list(frame.columns[5:]) == gradtrust.available_methods()  # digits_cnn has dropout: every method
    assert manifest["methods"]["mc_dropout"] == {"mc_samples": 10, "seed": 0}
    assert manifest["skipped"] == {}
    assert manifest["dataset"]["corruption"] == "gaussian_noise" and manifest["dataset"]["severity"] == 2
    assert manifest["methods_requested"] == "all"
    recorded = digits_accuracy_table()["models"]["digits_cnn"]["test_accuracy"]["gaussian_noise/2"]
    assert manifest["accuracy"] == pytest.approx(recorded, abs=1e-4)  # corrupted: the network makes mistakes


def test_help_lists_methods_and_examples():
    result = CliRunner().invoke(main, ["score", "--help"])
    assert result.exit_code == 0
    for text in ("--model", "--option", "--force", "gradtrust_topk", "mc_dropout", "Examples:", "torchrun",
                 "odin_temperature"):
        assert text in result.output


def test_parse_option_pairs_converts_types():
    assert parse_option_pairs(["odin_temperature=50", "mc_samples=3", "topk=none", "layer=fc",
                               "pnorm-p=3"]) == {"odin_temperature": 50.0, "mc_samples": 3, "topk": None,
                                                  "layer": "fc", "pnorm_p": 3.0}
    assert parse_option_pairs(["topk=4"]) == {"topk": 4}
    with pytest.raises(UnknownNameError, match="odin_temperature"):
        parse_option_pairs(["odin_temprature=3"])
    with pytest.raises(InputError, match="integer"):
        parse_option_pairs(["mc_samples=2.5"])
    with pytest.raises(InputError, match="KEY=VALUE"):
        parse_option_pairs(["mc_samples"])


@pytest.mark.parametrize("args, fragments", [
    (["--option", "bogus=1"], ["unknown scoring option 'bogus'", "odin_temperature"]),
    (["--option", "odin_temperature=abc"], ["must be a number"]),
    (["--option", "odin_temperature=-1"], ["odin_temperature must be > 0"]),
    (["--methods", "softmx"], ["unknown trust-score method", "softmax"]),
    (["--model", "digits:digits_cnn", "--data", "/nonexistent/folder"], ["does not exist"]),
    (["--model", "torchvision:resnet18", "--data", "digits"], ["the built-in digits are 1×8×8 tensors"]),
    (["--data", "."], ["--model is required"]),
    (["--model", "digits:nope"], ["unknown digits model"]),
    (["--model", "digits:digits_cnn", "--labels", "/nonexistent.csv"], ["labels file", "does not exist"]),
])
def test_errors_are_one_line_exit_2(tmp_path, args, fragments):
    result = run_cli(*args, "--out", str(tmp_path / "out"), "--no-progress")
    assert_error(result, *fragments)
    assert not (tmp_path / "out" / "run.json").exists()


def test_out_is_required_with_a_model():
    assert_error(run_cli("--model", "digits:digits_cnn"), "--out is required")


def test_explicit_method_that_cannot_apply_fails_before_writing(tmp_path):
    out = tmp_path / "linear"
    result = run_cli("--model", "digits:digits_linear", "--out", str(out), "--methods", "softmax,mc_dropout",
                     "--no-progress")
    assert_error(result, "mc_dropout", "no dropout")
    assert not (out / "run.json").exists() and not (out / "chunks").exists()


def test_changed_run_is_refused_and_force_discards(tmp_path):
    out = tmp_path / "run"
    base = ["--model", "digits:digits_linear", "--data", "digits", "--out", str(out), "--no-progress",
            "--batch-size", "100", "--chunk-size", "300"]
    first = run_cli(*base, "--methods", "softmax,gradtrust")
    assert first.exit_code == 0, first.output
    before = pd.read_parquet(out / "scores.parquet")

    changed_methods = run_cli(*base, "--methods", "softmax")
    assert_error(changed_methods, "other settings", "methods.requested", "--force", "--out")
    changed_option = run_cli(*base, "--methods", "softmax,gradtrust", "--option", "odin_temperature=50")
    assert_error(changed_option, "options.odin_temperature: 100.0 → 50.0")
    changed_model = run_cli(*base[:1], "digits:digits_tiny", *base[2:], "--methods", "softmax,gradtrust")
    assert_error(changed_model, "model.spec", "digits_tiny")
    changed_weights = run_cli(*base, "--methods", "softmax,gradtrust", "--weights", "random")
    assert_error(changed_weights, "model.")
    changed_data = run_cli(*base[:3], "digits:test:blur", *base[4:], "--methods", "softmax,gradtrust")
    assert_error(changed_data, "dataset.")
    changed_chunks = run_cli(*base[:-1], "200", "--methods", "softmax,gradtrust")
    assert_error(changed_chunks, "layout.chunk_size")
    pd.testing.assert_frame_equal(pd.read_parquet(out / "scores.parquet"), before)  # untouched

    again = run_cli(*base, "--methods", "softmax,gradtrust")  # same command: every chunk is resumed
    assert again.exit_code == 0, again.output
    assert "resumed 4 complete chunks" in again.output
    pd.testing.assert_frame_equal(pd.read_parquet(out / "scores.parquet"), before, check_exact=True)

    forced = run_cli(*base, "--methods", "softmax", "--force")
    assert forced.exit_code == 0, forced.output
    assert "resumed" not in forced.output
    after = pd.read_parquet(out / "scores.parquet")
    assert list(after.columns[5:]) == ["softmax"]
    run = json.loads((out / "run.json").read_text())
    assert run["identity"]["methods"]["requested"] == ["softmax"]
    assert len(list((out / "chunks").iterdir())) == 4
