"""One command-line convention (issue 20): every shared option is its one definition in every command, one exit
code and one line for user errors, one ``--help`` layout, and ``--input-size`` that keeps the model's
normalisation (scaling its resize) in every command that loads a model, a user's own model over mixed sizes too."""

from __future__ import annotations

import errno
import json
import sys
import textwrap
from pathlib import Path

import click
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torchvision.transforms import functional as F

from gradtrust.cli import COMMANDS, main
from gradtrust.cli.options import DEFINITIONS, SECTIONS, Command, SharedOption, user_error_line
from gradtrust.errors import ModelError
from gradtrust.models import LoadedModel, load_model
from gradtrust.models.preprocessing import Preprocessing, borrow_preprocessing, preprocessing_of


def _walk() -> list[tuple[str, click.Command]]:
    ctx = click.Context(main)
    found: list[tuple[str, click.Command]] = []

    def visit(command: click.Command, path: str) -> None:
        found.append((path, command))
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                visit(command.get_command(ctx, name), f"{path} {name}")

    for name in COMMANDS:
        visit(main.get_command(ctx, name), name)
    return found


ALL = _walk()
BY_PATH = dict(ALL)
SHARED_FLAGS = {flag: name for name, (_, spec) in DEFINITIONS.items() for flag in spec["param_decls"]
                if flag.startswith("--")}
MODEL_COMMANDS = ("score", "explain", "introspect fit", "detect")
#: Where each shared option must be: the commands that take it.
EXPECTED = {
    **{name: MODEL_COMMANDS for name in ("model_spec", "num_classes", "borrow", "input_size", "resize", "crop",
                                         "mean", "std", "interpolation", "class_names")},
    "device": ("score", "explain", "detect", "introspect fit", "introspect score", "gradcon fit", "gradcon score",
               "gradcon benchmark", "benchmark"),
    "resamples": ("detect", "report", "benchmark", "introspect benchmark", "gradcon score", "gradcon benchmark"),
    "seed": ("detect", "report", "benchmark", "introspect fit", "introspect benchmark", "gradcon fit",
             "gradcon benchmark"),
    "out_dir": ("score", "explain", "detect", "report", "benchmark", "introspect fit", "introspect score",
                "introspect benchmark", "gradcon fit", "gradcon score", "gradcon benchmark"),
    "data": ("score", "explain", "detect", "benchmark", "introspect fit", "introspect score", "gradcon fit",
             "gradcon score"),
}


def _reference(name: str) -> click.Option:
    spec = dict(DEFINITIONS[name][1])
    return click.Option(spec.pop("param_decls"), **spec)


@pytest.mark.parametrize("path", [p for p, _ in ALL])
def test_every_shared_flag_is_its_one_definition(path):
    for param in BY_PATH[path].params:
        if getattr(param, "hidden", False) and getattr(param, "deprecated", False):
            continue  # an old spelling kept as a hidden alias (tested below)
        flags = [f for f in [*param.opts, *param.secondary_opts] if f in SHARED_FLAGS]
        if not flags:
            continue
        assert isinstance(param, SharedOption) and param.definition == SHARED_FLAGS[flags[0]], (path, param.opts)
        reference = _reference(param.definition)
        for attr in ("name", "opts", "secondary_opts", "help", "metavar", "is_flag", "hidden", "nargs"):
            assert getattr(param, attr) == getattr(reference, attr), (path, param.name, attr)
        assert param.type.to_info_dict() == reference.type.to_info_dict(), (path, param.name)
        assert param.section == DEFINITIONS[param.definition][0]
        if param.name == "device":  # one default everywhere: cuda when available, else cpu
            assert param.default is reference.default  # no command sets its own


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shared_options_are_where_they_belong(name):
    having = {path for path, command in ALL
              if any(getattr(p, "definition", None) == name for p in command.params)}
    assert set(EXPECTED[name]) <= having, set(EXPECTED[name]) - having


@pytest.mark.parametrize("path", [p for p, _ in ALL])
def test_help_has_one_layout(path):
    result = CliRunner().invoke(main, [*path.split(), "--help"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("Usage: ") and lines[1] == "" and lines[2].strip(), lines[:3]  # usage, description
    headings = [line.rstrip(":") for line in lines if line in {f"{s}:" for s in SECTIONS}]
    assert headings == sorted(headings, key=SECTIONS.index) and headings[-1] == "Run", headings
    run_section = result.output[result.output.index("\nRun:"):]
    assert "-h, --help" in run_section
    assert "--bootstrap" not in result.output and "--train" not in result.output  # hidden old spellings
    if path == "gradcon score":
        assert "--model" not in result.output and "--gradcon DIR" in result.output


@pytest.mark.parametrize("path", [p for p, c in ALL if p != "introspect benchmark"  # its --models: digits names
                                  and any(o in ("--model", "--models") for prm in c.params
                                          if not getattr(prm, "hidden", False) for o in prm.opts)])
def test_every_model_option_help_lists_every_spec_form(path):
    """``--model`` (and benchmark's ``--models``) name every form a spec takes, as the loader knows them."""
    from gradtrust.models.specs import SOURCES

    text = " ".join(CliRunner().invoke(main, [*path.split(), "--help"], terminal_width=400).output.split())
    for form in [f"{prefix}:" for prefix in SOURCES] + ["hf:", "package.module:factory", "TorchScript"]:
        assert form in text, (path, form)


@pytest.mark.parametrize("path, args, new_value", [
    ("detect", ["--bootstrap", "7"], ("resamples", 7)),
    ("introspect fit", ["--model", "digits:digits_linear", "--train", "digits:train", "--out", "h"],
     ("data", "digits:train")),
    ("gradcon score", ["--model", "m", "--data", "d", "--out", "o"], ("model_dir", Path("m"))),
])
def test_old_spellings_fill_the_new_parameter_and_warn(path, args, new_value, capsys):
    command = BY_PATH[path]
    params = command.make_context(path, list(args)).params
    assert params[new_value[0]] == new_value[1]
    old = next(a for a in args if a in ("--bootstrap", "--train", "--model") and (a != "--model" or "gradcon" in path))
    assert f"The option '{old}' is deprecated. Use --" in capsys.readouterr().err
    if path == "detect":
        assert command.make_context(path, []).params["resamples"] == 200  # detect's default is kept
        assert command.make_context(path, ["--resamples", "9"]).params["resamples"] == 9


def test_a_command_may_change_only_default_required_and_multiple():
    from gradtrust.cli.options import shared

    with pytest.raises(TypeError, match="may not change"):
        shared("device", help="something else")


# ------------------------------------------------------------------------------------------------ user errors


@pytest.fixture
def folder(tmp_path):
    """Two class folders of differently sized RGB images."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(6):
            h, w = 14 + 5 * i, 30 - 3 * i
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def _user_errors(tmp_path: Path) -> list[list[str]]:
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("x")
    out = str(tmp_path / "out")
    return [
        ["score", "--model", "nosuchfamily:net", "--data", str(tmp_path), "--out", out],
        ["explain", "--model", "digits:digits_cnn", "--methods", "saliency", "--out", out],
        ["detect", "--model", "digits:digits_mlp", "--challenge", "bogus", "--out", out],
        ["detect", "--model", "digits:digits_mlp", "--out", str(tmp_path / "a-file" / "out")],  # an OSError
        ["introspect", "fit", "--model", "digits:digits_linear", "--out", out],
        ["introspect", "score", "--introspective", str(tmp_path / "empty"), "--data", "digits:test", "--out", out],
        ["gradcon", "score", "--data", "digits:test", "--out", out],
        ["gradcon", "benchmark", "--classes", "x", "--out", out],
        ["benchmark", "--methods", "bogus", "--out", out],
    ]


def test_every_command_ends_a_user_error_with_exit_2_and_one_line(tmp_path):
    for args in _user_errors(tmp_path):
        result = CliRunner().invoke(main, [*args, "--device", "cpu"] if args[0] != "introspect" or args[1] == "fit"
                                    else args)
        assert result.exit_code == 2, (args, result.output)
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
        assert len(errors) == 1, (args, result.stderr)


@pytest.mark.parametrize("code, fragment", [
    (errno.ENOSPC, "No space left on device; free space on that disk or choose another --out."),
    (errno.EACCES, "Permission denied; choose a folder you may write to (--out)."),
    (errno.EROFS, "Read-only file system; the file system is read-only: choose a folder you may write to (--out)."),
])
def test_an_os_error_names_the_file_and_says_what_to_do(code, fragment):
    def fail() -> None:
        raise OSError(code, __import__("os").strerror(code), "/runs/x/chunks/chunk-0.parquet")

    result = CliRunner().invoke(Command("toy", callback=fail), [])
    assert result.exit_code == 2
    assert result.stderr == f"Error: cannot use /runs/x/chunks/chunk-0.parquet: {fragment}\n"


def test_a_worker_error_keeps_its_message_on_one_line():
    from gradtrust.errors import DataError

    wrapped = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                        "last):\n  File ...\ngradtrust.errors.DataError: cannot read x.png: truncated")
    assert user_error_line(wrapped) == "cannot read x.png: truncated"
    assert user_error_line(ModelError("two\nlines")) == "two lines"


# ------------------------------------------------------------------------------------------------ --input-size


def test_input_size_scales_the_recipe_and_keeps_its_normalisation():
    resnet = borrow_preprocessing("torchvision:resnet18")
    assert (resnet.resize, resnet.crop) == ((256,), (224,))
    small = Preprocessing.from_options(input_size="64", base=resnet)
    assert (small.resize, small.crop, small.mean, small.std) == ((73,), (64,), resnet.mean, resnet.std)
    assert Preprocessing.from_options(input_size="64,48", base=resnet).resize == (round(48 * 256 / 224),)
    exact = Preprocessing(resize=(300, 200), crop=(240, 160), mean=(0.5,), std=(0.5,))
    assert Preprocessing.from_options(input_size="120,80", base=exact).resize == (150, 100)
    assert Preprocessing.from_options(input_size=64, resize=80, base=resnet).resize == (80,)  # given: kept
    assert Preprocessing.from_options(input_size=32).resize == (32, 32)  # no recipe: the whole image to S×S
    with pytest.raises(ModelError, match="crops .* without resizing"):
        Preprocessing.from_options(input_size=32, base=Preprocessing(crop=(20,)))
    # the transform against torchvision's own functions, on a 90×130 image
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (90, 130, 3), dtype=np.uint8))
    expected = F.normalize(F.convert_image_dtype(F.pil_to_tensor(F.center_crop(F.resize(image, [73], antialias=True),
                                                                                [64])), torch.float),
                           list(resnet.mean), list(resnet.std))
    assert torch.allclose(small.transform()(image), expected)


def test_a_model_transform_reads_back_and_an_unreadable_one_is_refused(monkeypatch):
    import torchvision.transforms as T

    compose = T.Compose([T.Resize(36), T.CenterCrop(32), T.ToTensor(), T.Normalize((0.4,) * 3, (0.2,) * 3)])
    assert preprocessing_of(compose) == Preprocessing(resize=(36,), crop=(32, 32), mean=(0.4,) * 3, std=(0.2,) * 3,
                                                      source="the model's Compose")
    assert preprocessing_of(T.Compose([T.RandomCrop(3)])) is None and preprocessing_of(None) is None

    def opaque(module, weights, num_classes):
        return LoadedModel(module=module, transform=lambda image: F.to_tensor(image), class_names=["0", "1"],
                           num_classes=2, spec="opaque")

    monkeypatch.setattr("gradtrust.models.loading.load_module_object", opaque)
    net = torch.nn.Linear(3, 2)
    with pytest.raises(ModelError, match="cannot be read to change some of its fields"):
        load_model(net, preprocessing={"input_size": 16})
    whole = load_model(net, preprocessing={"input_size": 16, "mean": "0.5", "std": "0.5"})
    assert whole.meta["preprocessing"]["resize"] == [16, 16]


def _score(*args: str, runner: CliRunner | None = None):
    return (runner or CliRunner()).invoke(main, ["score", *args, "--methods", "softmax", "--device", "cpu",
                                                 "--no-progress"])


def test_score_input_size_keeps_the_models_normalisation(folder, tmp_path):
    result = _score("--model", "torchvision:resnet18", "--weights", "random", "--num-classes", "2", "--input-size",
                    "64", "--data", str(folder), "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    used = json.loads((tmp_path / "run" / "manifest.json").read_text())["model"]["meta"]["preprocessing"]
    assert used["mean"] == [0.485, 0.456, 0.406] and used["std"] == [0.229, 0.224, 0.225]
    assert (used["resize"], used["crop"]) == ([73], [64])
    assert result.stderr.count("preprocessing: resize [73], crop [64], mean [0.485") == 1  # printed once


@pytest.fixture
def own_model(tmp_path, monkeypatch):
    """``ownnets.tiny:build``: a user's model factory (a small CNN with a final nn.Linear)."""
    package = tmp_path / "pkg" / "ownnets"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "tiny.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def build(num_classes=2):
            torch.manual_seed(0)
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                 nn.Linear(16, num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    for name in ("ownnets", "ownnets.tiny"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return "ownnets.tiny:build"


PRE = ("--input-size", "16", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25")


def test_borrowed_recipe_crops_64_from_73(own_model, folder, tmp_path):
    result = _score("--model", own_model, "--preprocessing", "torchvision:resnet18", "--input-size", "64", "--data",
                    str(folder), "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    used = json.loads((tmp_path / "run" / "manifest.json").read_text())["model"]["meta"]["preprocessing"]
    assert (used["resize"], used["crop"], used["std"]) == ([73], [64], [0.229, 0.224, 0.225])


def test_explain_an_own_model_over_mixed_sizes(own_model, folder, tmp_path):
    args = ["explain", "--model", own_model, "--data", str(folder), "--methods", "gradcam", "--device", "cpu",
            "--no-progress"]
    refused = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "no")])
    assert refused.exit_code == 2 and "--input-size" in refused.stderr
    result = CliRunner().invoke(main, [*args, *PRE, "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(tmp_path / "e" / "explanations.parquet")
    assert len(table) == 12 and "preprocessing: resize [16, 16]" in result.stderr


def test_introspect_fit_an_own_model_over_mixed_sizes_then_score(own_model, folder, tmp_path):
    fit = CliRunner().invoke(main, ["introspect", "fit", "--model", own_model, "--data", str(folder), *PRE, "--out",
                                    str(tmp_path / "h"), "--epochs", "1", "--hidden", "4", "--device", "cpu",
                                    "--no-progress"])
    assert fit.exit_code == 0, fit.output
    saved = json.loads((tmp_path / "h" / "estimator.json").read_text())
    assert saved["metadata"]["model"]["load_options"]["preprocessing"] == {"input_size": "16", "mean": "0.5,0.5,0.5",
                                                               "std": "0.25,0.25,0.25"}
    score = CliRunner().invoke(main, ["introspect", "score", "--introspective", str(tmp_path / "h"), "--model",
                                      own_model, "--data", str(folder), "--out", str(tmp_path / "run"), "--methods",
                                      "softmax", "--device", "cpu", "--no-progress"])  # f with its preprocessing
    assert score.exit_code == 0, score.output
    assert len(pd.read_parquet(tmp_path / "run" / "introspection.parquet")) == 12


def test_detect_an_own_model_over_mixed_sizes(own_model, folder, tmp_path):
    result = CliRunner().invoke(main, ["detect", "--model", own_model, "--data", str(folder), *PRE, "--challenge",
                                       "noise:1", "--detectors", "logistic", "--baselines", "softmax", "--resamples",
                                       "5", "--device", "cpu", "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["models"][0]["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert manifest["n_bootstrap"] == 5


def test_interrupts_out_of_memory_and_peer_failures(monkeypatch):
    from gradtrust.runs.score import PeerError

    def raising(exc: BaseException) -> Command:
        def fail() -> None:
            raise exc

        return Command("toy", callback=fail)

    interrupted = CliRunner().invoke(raising(KeyboardInterrupt()), [])
    assert interrupted.exit_code == 130 and "run the same command again to resume" in interrupted.stderr
    oom = CliRunner().invoke(raising(torch.cuda.OutOfMemoryError("CUDA out of memory")), [])
    assert oom.exit_code == 2 and oom.stderr.startswith("Error: out of GPU memory; use a smaller --batch-size")
    other = CliRunner().invoke(raising(RuntimeError("a bug")), [])
    assert other.exit_code == 1 and isinstance(other.exception, RuntimeError)  # not a user error: not hidden
    monkeypatch.setenv("RANK", "1")  # under torchrun, the rank that failed reports the cause; the others exit quietly
    quiet = CliRunner().invoke(raising(PeerError("rank 0 stopped the run: x")), [])
    assert quiet.exit_code == 2 and quiet.stderr == ""
    loud = CliRunner().invoke(raising(ModelError("bad weights")), [])
    assert loud.exit_code == 2 and loud.stderr == "Error: bad weights\n"
