"""What ended in a raw traceback, a kernel kill or a cut message now ends in one line that says what to do, exit
code 2 (issue 21): an input size no batch can hold, a pickled model given as weights, a model with NaN logits
under ``detect``, a corrupt ``run.json``, a full disk under ``report``, a read-only ``introspect fit`` folder,
and a run-difference message shows each differing value in full."""

from __future__ import annotations

import errno
import json
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from gradtrust.cli import main
from gradtrust.cli.memory import batch_memory, check_batch_memory
from gradtrust.errors import InputError, ModelError
from gradtrust.models import load_model
from runs_helpers import setup


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.fixture
def no_huge_images(monkeypatch):
    """Never let a test allocate a huge image: a resize to more than 10⁸ pixels fails the test instead."""
    real = Image.Image.resize

    def guarded(self, size, *args, **kwargs):
        assert size[0] * size[1] <= 10**8, f"the command tried to allocate a {size} image"
        return real(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", guarded)


def test_batch_memory_is_estimated_before_any_image_is_read():
    # 3 × 100000² pixels: 150 GB for the resized image (8-bit + float32), 2 × 64 × 120 GB for the batch
    assert batch_memory({"resize": [100000, 100000], "crop": None}, 64) == 3 * 10**10 * (5 + 2 * 64 * 4)
    assert batch_memory({"resize": [256], "crop": [224, 224]}, 2) == 3 * (256 * 256 * 5 + 2 * 2 * 224 * 224 * 4)
    assert batch_memory({"resize": None, "crop": None}, 64) is None

    class Model:
        meta = {"preprocessing": {"resize": [1000, 1000], "crop": None}}

    check_batch_memory(Model(), 8, available=10**9)  # 3 × 10⁶ × (5 + 2 × 8 × 4) bytes = 0.2 GB: fits
    with pytest.raises(InputError, match=r"a batch of 64 needs at least 1\.6 GB.*0\.5 GB available.*--batch-size"):
        check_batch_memory(Model(), 64, available=5 * 10**8)


def test_a_huge_input_size_is_refused_with_the_figure(tmp_path, monkeypatch, no_huge_images):
    _, _, data = setup(tmp_path, monkeypatch)
    monkeypatch.setattr("gradtrust.cli.memory.available_memory", lambda: 16 * 10**9)
    line = _one_error_line(
        _invoke(
            "score",
            "--model",
            "torchvision:resnet18",
            "--weights",
            "random",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "--input-size",
            "100000",
            "--device",
            "cpu",
            "--no-progress",
        )
    )
    assert "a batch of 64 needs at least" in line and "16.0 GB available" in line and "--input-size" in line
    assert not (tmp_path / "run").exists()


def test_a_pickled_model_given_as_weights_names_the_opt_in(tmp_path):
    torch.save(torch.nn.Linear(4, 2), tmp_path / "whole.pt")
    with pytest.raises(ModelError, match="--trust-model-file"):
        load_model("torchvision:resnet18", str(tmp_path / "whole.pt"))


def test_detect_on_a_model_with_nan_logits_is_one_line(tmp_path, monkeypatch):
    _, _, data = setup(tmp_path, monkeypatch)
    (tmp_path / "nan_nets.py").write_text(
        textwrap.dedent("""
        import torch
        from torch import nn

        class NaNs(nn.Module):
            def __init__(self, num_classes=2):
                super().__init__()
                self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 8))
                self.fc = nn.Linear(8, num_classes)

            def forward(self, x):
                return self.fc(self.body(x) * float("nan"))

        def build(num_classes=2):
            return NaNs(num_classes)
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "nan_nets", raising=False)
    line = _one_error_line(
        _invoke(
            "detect",
            "--model",
            "nan_nets:build",
            "--data",
            str(data),
            "--challenge",
            "noise:1",
            "--detectors",
            "logistic",
            "--resamples",
            "5",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "d"),
        )
    )
    assert "non-finite logits (NaN or inf)" in line and "known images" in line


def test_a_corrupt_run_json_is_named(tmp_path, monkeypatch):
    spec, weights, data = setup(tmp_path, monkeypatch)
    out = tmp_path / "explain"
    out.mkdir()
    (out / "run.json").write_text("{bad")
    line = _one_error_line(
        _invoke(
            "explain",
            "--model",
            spec,
            "--weights",
            str(weights),
            "--data",
            str(data),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
        )
    )
    assert "run.json cannot be read (JSONDecodeError" in line and "--force" in line


def test_a_run_difference_shows_each_value_in_full(tmp_path, monkeypatch):
    spec, weights, data = setup(tmp_path, monkeypatch)
    args = [
        "score",
        "--model",
        spec,
        "--weights",
        str(weights),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "r"),
        "--methods",
        "softmax",
        "--input-size",
        "8",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert _invoke(*args).exit_code == 0
    line = _one_error_line(_invoke(*args, "--interpolation", "bicubic"))
    assert "model.transform" in line
    assert "interpolation=bilinear)" in line and "interpolation=bicubic)" in line  # both values, whole


def test_report_on_a_full_disk_names_the_file(tmp_path, monkeypatch):
    spec, weights, data = setup(tmp_path, monkeypatch)
    run = tmp_path / "run"
    assert (
        _invoke(
            "score",
            "--model",
            spec,
            "--weights",
            str(weights),
            "--data",
            str(data),
            "--out",
            str(run),
            "--methods",
            "softmax,gradtrust",
            "--device",
            "cpu",
            "--no-progress",
        ).exit_code
        == 0
    )

    def full(report) -> None:  # write() fails part-way: the OSError names no file
        (report.out_dir / "report.json").write_text("{")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("gradtrust.reporting.report._write_json", full)
    line = _one_error_line(
        _invoke("report", str(run), "--out", str(tmp_path / "rep"), "--no-figures", "--resamples", "0")
    )
    assert "No space left on device" in line and str(tmp_path / "rep" / "report.json") in line
    assert not (tmp_path / "rep").exists()


def test_introspect_fit_into_a_read_only_folder_is_one_line(tmp_path, monkeypatch):
    def read_only(path, *args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr("gradtrust.runs.chunks.atomic_write_json", read_only)
    line = _one_error_line(
        _invoke(
            "introspect",
            "fit",
            "--model",
            "digits:digits_linear",
            "--data",
            "digits:train",
            "--out",
            str(tmp_path / "h"),
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--no-progress",
        )
    )
    assert "Read-only file system" in line and str(tmp_path / "h" / "run.json") in line
    assert json.dumps(line)  # one plain line


def test_explain_says_what_it_did_with_save_images(tmp_path, monkeypatch):
    spec, weights, data = setup(tmp_path, monkeypatch)
    args = [
        "explain",
        "--model",
        spec,
        "--weights",
        str(weights),
        "--data",
        str(data),
        "--device",
        "cpu",
        "--no-progress",
    ]
    out = tmp_path / "e"
    first = _invoke(*args, "--out", str(out), "--save-images", "4")
    assert first.exit_code == 0 and "images:       4 in" in first.output, first.output
    # more images asked of the finished run: refused, naming the setting (images come with the explanations)
    line = _one_error_line(_invoke(*args, "--out", str(out), "--save-images", "80"))
    assert "settings.save_images: 4 → 80" in line and "--force" in line
    # more than the dataset holds: it says how many it saved, and why not more
    more = _invoke(*args, "--out", str(tmp_path / "f"), "--save-images", "80")
    assert more.exit_code == 0, more.output
    assert "images:       8 in" in more.output and "--save-images 80 asked for more: the dataset has 8" in more.output


def test_an_old_spelling_warns_only_when_typed(capsys):
    from gradtrust.cli.gradcon import score_command

    params = score_command.make_context("gradcon score", ["--gradcon", "m", "--data", "d", "--out", "o"]).params
    assert str(params["model_dir"]) == "m" and "deprecated" not in capsys.readouterr().err
    params = score_command.make_context("gradcon score", ["--model", "m", "--data", "d", "--out", "o"]).params
    assert str(params["model_dir"]) == "m" and "The option '--model' is deprecated" in capsys.readouterr().err
