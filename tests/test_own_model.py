"""Bringing your own model (issue 12): preprocessing options, factories, class-name files, the opt-in for
pickled model files, TorchScript gradient scores, tuple outputs and the clear errors of bad input.

Every model here is a tiny random network written by the test; every image is synthetic."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision.models as tvm
from click.testing import CliRunner
from PIL import Image
from torch import nn

import gradtrust
from gradtrust.cli import main
from gradtrust.data.samples import Sample, collate_samples
from gradtrust.errors import DataError, InputError, ModelError, UnknownNameError
from gradtrust.models import Preprocessing, SelectOutput, load_model

CHEAP = "softmax,margin,gradtrust,gradtrust_topk,gradnorm"


def tiny_cnn(num_classes: int = 2) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes)).eval()


def script(module: nn.Module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(module)


@pytest.fixture
def images(tmp_path):
    """Two class folders, three images each, of three different sizes."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i, (h, w) in enumerate([(20, 24), (32, 16), (18, 18)]):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def run_cli(*args: str):
    return CliRunner().invoke(main, ["score", *args, "--no-progress"], catch_exceptions=False)


def error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.output
    return lines[0]


# ------------------------------------------------------------------------------- preprocessing


def test_borrowed_preprocessing_equals_torchvision_transforms():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 260, 3), dtype=np.uint8))
    loaded = load_model(tiny_cnn(), preprocessing="torchvision:resnet18")
    expected = tvm.ResNet18_Weights.DEFAULT.transforms()(image)  # torchvision's own pipeline
    assert torch.allclose(loaded.transform(image), expected, atol=1e-6)
    assert loaded.input_kind == "image" and loaded.meta["preprocessing"]["crop"] == [224]
    assert loaded.meta["normalization_std"] == pytest.approx([0.229, 0.224, 0.225])


def test_preprocessing_options_against_a_direct_computation():
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (30, 50, 3), dtype=np.uint8))
    loaded = load_model(tiny_cnn(), preprocessing={"input_size": 16, "mean": "0.5,0.5,0.5", "std": [0.25] * 3,
                                                    "interpolation": "nearest"})
    out = loaded.transform(image)
    direct = image.resize((16, 16), Image.NEAREST)  # whole image to S×S, nearest neighbour
    expected = (torch.from_numpy(np.array(direct)).permute(2, 0, 1).float() / 255 - 0.5) / 0.25
    assert out.shape == (3, 16, 16) and torch.allclose(out, expected, atol=1e-5)
    # An override on top of a borrowed preprocessing keeps the rest.
    pre = Preprocessing.from_options(input_size=64, base=Preprocessing(resize=(72,), crop=(64,)))
    assert pre.resize == (72,) and pre.crop == (64,)
    with pytest.raises(ModelError, match="both mean and std"):
        load_model(tiny_cnn(), preprocessing={"mean": "0.5"})
    with pytest.raises(UnknownNameError, match="interpolation"):
        load_model(tiny_cnn(), preprocessing={"input_size": 8, "interpolation": "cubic-ish"})


def test_cli_model_file_on_mixed_sizes_warns_then_errors_clearly(tmp_path, images):
    path = tmp_path / "model.pt"
    script(tiny_cnn()).save(str(path))
    result = run_cli("--model", str(path), "--data", str(images), "--out", str(tmp_path / "a"), "--methods", CHEAP)
    assert "has no preprocessing" in result.output and "--input-size" in result.output
    line = error_line(result)
    assert "different sizes" in line and "--input-size" in line and "stack expects" not in line


def test_cli_preprocessing_class_names_and_manifest(tmp_path, images):
    path = tmp_path / "model.pt"
    module = tiny_cnn()
    script(module).save(str(path))
    names = tmp_path / "names.txt"
    names.write_text("dog\ncat\n")  # output 0 is "dog": the reverse of the sorted folder order
    out = tmp_path / "run"
    result = run_cli("--model", str(path), "--data", str(images), "--out", str(out), "--methods", "all",
                     "--input-size", "16", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25",
                     "--class-names", str(names))
    assert result.exit_code == 0, result.output
    assert "has no preprocessing" not in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    pre = manifest["model"]["meta"]["preprocessing"]
    assert pre["resize"] == [16, 16] and pre["mean"] == [0.5] * 3 and pre["std"] == [0.25] * 3
    assert manifest["class_map"] == [1, 0]  # cat -> output 1, dog -> output 0, by name
    frame = pd.read_parquet(out / "scores.parquet")
    assert (frame.loc[frame["path"].str.contains("/cat/"), "label"] == 1).all()
    # the scores are those of the Python model on the same preprocessed images
    loaded = load_model(module, preprocessing={"input_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3})
    x = torch.stack([loaded.transform(Image.open(p).convert("RGB")) for p in frame["path"]])
    expected = gradtrust.score(module, x, "softmax,gradtrust")
    assert np.allclose(frame["softmax"], expected["softmax"].numpy(), atol=1e-6)
    # TorchScript Sequential: the closed-form gradient scores apply (issue 12, item 8)
    assert np.allclose(frame["gradtrust"], expected["gradtrust"].numpy(), rtol=1e-5, atol=1e-7)
    # skipped methods and their reasons are printed at the end of the run
    assert "skipped:  mc_dropout: the model has no dropout layer" in result.output


def test_class_names_file_errors(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\n")
    with pytest.raises(ModelError, match="3 class names .* 2 outputs"):
        load_model(tiny_cnn(), class_names=names)
    names.write_text("a\na\n")
    with pytest.raises(ModelError, match="repeat a"):
        load_model(tiny_cnn(), class_names=names)


# ------------------------------------------------------------------------------- factories


def test_factory_spec_with_weights(tmp_path, monkeypatch):
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(textwrap.dedent("""
        from torch import nn

        def build(num_classes=3):
            return nn.Sequential(nn.Flatten(), nn.Linear(12, num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mypkg", raising=False)
    monkeypatch.delitem(sys.modules, "mypkg.nets", raising=False)
    torch.manual_seed(3)
    trained = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    weights = tmp_path / "w.pth"
    torch.save(trained.state_dict(), weights)
    loaded = load_model("mypkg.nets:build", weights=str(weights), num_classes=5)
    x = torch.rand(4, 3, 2, 2)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), trained(x))
    assert loaded.meta["family"] == "factory" and loaded.num_classes == 5
    with pytest.raises(ModelError, match="has no 'nope'"):
        load_model("mypkg.nets:nope")


# ------------------------------------------------------------------------------- safety


class _Marker:
    """Unpickling this object creates a marker file: what a malicious model file would do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_model_file_runs_no_code_without_opt_in(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Marker(str(marker))}, evil)
    with pytest.raises(ModelError, match="--trust-model-file"):
        load_model(str(evil))
    assert not marker.exists()
    result = run_cli("--model", str(evil), "--data", str(tmp_path), "--out", str(tmp_path / "o"))
    assert "--trust-model-file" in error_line(result) and not marker.exists()
    # with the opt-in the file is unpickled (and the code runs): the flag is what stands in between
    with pytest.raises(ModelError):
        load_model(str(evil), trust_model_file=True)
    assert marker.exists()


# ------------------------------------------------------------------------------- smaller ones


def test_random_bytes_weights_and_meta_device(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(20):  # random bytes: many hit torch.load's "pop from empty list" before the fix
        path = tmp_path / f"r{i}.pth"
        path.write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
        with pytest.raises(ModelError, match="not a PyTorch"):
            load_model("digits:digits_linear", weights=str(path))
    with pytest.raises(ModelError, match="meta device"):
        load_model("digits:digits_linear", device="meta")
    result = CliRunner().invoke(main, ["score", "--model", "digits:digits_linear", "--device", "meta", "--out",
                                       str(tmp_path / "m"), "--no-progress"], catch_exceptions=False)
    assert "meta device" in error_line(result)


def test_single_image_without_batch_dimension():
    model = tvm.resnet18(num_classes=3).eval()
    with pytest.raises(InputError, match=r"no batch dimension.*unsqueeze\(0\)"):
        gradtrust.score(model, torch.rand(3, 32, 32), "softmax")


class _TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x), x


def test_tuple_output_needs_output_index():
    x = torch.rand(5, 4)
    with pytest.raises(ModelError, match="output_index=0"):
        gradtrust.score(_TwoOutputs(), x, "softmax")
    loaded = load_model(_TwoOutputs(), output_index=0)
    assert isinstance(loaded.module, SelectOutput)
    result = gradtrust.score(loaded, x, "softmax,gradtrust")
    reference = gradtrust.score(loaded.module.model.fc, x, "softmax,gradtrust")  # the same logits, same layer
    assert torch.allclose(result["softmax"], reference["softmax"])
    assert torch.allclose(result["gradtrust"], reference["gradtrust"])


def test_torchscript_non_sequential_says_why_and_layer_error(tmp_path):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(torch.tanh(x))

    scripted = script(Net())
    result = gradtrust.score(scripted, torch.rand(2, 4))
    assert "TorchScript" in result.skipped["gradtrust"] and "hook" in result.skipped["gradtrust"]
    with pytest.raises(ModelError, match="TorchScript interpreter"):
        gradtrust.score(scripted, torch.rand(2, 4), "gradtrust", layer="fc")


def test_collate_of_different_sizes_is_a_data_error():
    samples = [Sample(torch.zeros(3, 4, 4), 0, 0, "a.png"), Sample(torch.zeros(3, 5, 4), 0, 1, "b.png")]
    with pytest.raises(DataError, match="a.png is \\(3, 4, 4\\) but b.png is \\(3, 5, 4\\)"):
        collate_samples(samples)


def test_output_index_cli(tmp_path):
    assert os.path.exists(tmp_path)
    result = run_cli("--output-index", "0", "--out", str(tmp_path / "x"))
    assert "need --model" in error_line(result)


def test_decompression_bomb_warning_is_recorded_not_printed(tmp_path, images, monkeypatch):
    from gradtrust.data.images import ImageFolderDataset
    from gradtrust.runs.score import score_dataset

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)  # PIL warns above 200 px (and refuses above 400)
    loaded = load_model(tiny_cnn(), preprocessing={"input_size": 8})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = score_dataset(loaded, ImageFolderDataset(images, loaded.transform), tmp_path / "run",
                                methods="softmax", progress=False)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    manifest = json.loads(summary.manifest_path.read_text())
    noted = {os.path.basename(n["path"]) for n in manifest["sample_notes"]}
    # 20×24 = 480 px and 32×16 = 512 px exceed 2 × 200: refused (failures); 18×18 = 324 px: a warning
    assert noted == {"2.png"} and "DecompressionBombWarning" in manifest["sample_notes"][0]["note"]
    assert len(manifest["failures"]) == 4


def test_topk_clamping_is_stated(tmp_path, images, capsys):
    from gradtrust.cli.score import _echo_notes
    from gradtrust.data.images import ImageFolderDataset
    from gradtrust.runs.score import score_dataset

    loaded = load_model(tiny_cnn(), preprocessing={"input_size": 8})  # 2 classes: at most 1 counterfactual
    summary = score_dataset(loaded, ImageFolderDataset(images, loaded.transform), tmp_path / "t",
                            methods="gradtrust_topk", options={"topk": 5000}, progress=False)
    manifest = json.loads(summary.manifest_path.read_text())
    assert manifest["methods"]["gradtrust_topk"]["topk"] == 1 and manifest["options"]["topk"] == 5000
    assert manifest["notes"] == ["gradtrust_topk: topk=5000 was clamped to 1 (at most C − 1 counterfactual classes)"]
    _echo_notes(summary.manifest_path)  # what `gradtrust score` prints after the run
    assert "note:     gradtrust_topk: topk=5000 was clamped to 1" in capsys.readouterr().out


@pytest.mark.slow  # `gradtrust models` imports timm to count its models
def test_methods_descriptions_are_whole_sentences_and_models_mentions_timm():
    from gradtrust.scores import available_methods, get_method

    methods = " ".join(CliRunner().invoke(main, ["methods"], catch_exceptions=False).output.split())
    for name in available_methods():
        doc = " ".join(line.strip() for line in (get_method(name).fn.__doc__ or "").strip().split("\n\n")[0]
                       .splitlines())
        if doc:  # the whole first paragraph of the docstring, not its first line
            assert " ".join(doc.replace("``", "").split()) in methods, name
    assert "default k = min(10, C − 1)" in methods
    models = CliRunner().invoke(main, ["models"], catch_exceptions=False)
    assert "gradtrust models --family timm" in models.output and "hf:<folder>" in models.output


def test_odin_epsilon_in_pixel_units_does_not_depend_on_where_the_normalisation_sits(tmp_path):
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])

    class Normalize(nn.Module):
        def forward(self, x):
            return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)

    net = tiny_cnn(3)
    inside = nn.Sequential(Normalize(), net).eval()  # takes [0, 1] pixels
    pixels = torch.rand(6, 3, 10, 10, generator=torch.Generator().manual_seed(4))
    normalized = Normalize()(pixels)
    eps = 0.01
    reference = gradtrust.score(inside, pixels, "odin", odin_epsilon=eps)["odin"]  # ε on pixels
    pixel = gradtrust.score(net, normalized, "odin", odin_epsilon=eps, odin_epsilon_space="pixel",
                            odin_input_std="0.2,0.25,0.3")["odin"]
    as_input = gradtrust.score(net, normalized, "odin", odin_epsilon=eps)["odin"]  # the default: input units
    assert torch.allclose(pixel, reference, atol=1e-6)
    assert not torch.allclose(as_input, reference, atol=1e-6)
    with pytest.raises(ValueError, match="needs odin_input_std"):
        gradtrust.score(net, normalized, "odin", odin_epsilon_space="pixel")
    # gradtrust score fills the std from the model's preprocessing and records it with the default space
    from gradtrust.cli.score import _odin_pixel_options

    loaded = load_model(tiny_cnn(), preprocessing="torchvision:resnet18")
    filled = _odin_pixel_options({"odin_epsilon_space": "pixel"}, loaded)
    assert [float(s) for s in filled["odin_input_std"].split(",")] == pytest.approx([0.229, 0.224, 0.225])
    with pytest.raises(InputError, match="--std"):
        _odin_pixel_options({"odin_epsilon_space": "pixel"}, load_model(tiny_cnn()))
