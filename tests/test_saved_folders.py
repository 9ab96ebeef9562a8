"""A saved folder is data (issue 21): ``introspect score`` never imports or runs a model that the folder names
without ``--trust-model-file`` (``--model`` gives it instead, checked against the recorded parameters), and an
estimator's ``estimator.json`` with an unknown or missing key is refused with one line, never half-read."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner

from gradtrust.cli import main
from gradtrust.data.digits import DigitsDataset
from gradtrust.errors import ModelError
from gradtrust.gradcon import GradCON
from gradtrust.introspection import Introspective
from gradtrust.models import load_model

EVIL = """
import pathlib, os
pathlib.Path(os.environ["GRADTRUST_TEST_MARKER"]).write_text("imported")

def x(num_classes=10):
    raise RuntimeError("a saved folder ran code")
"""


def _invoke(*args: str):
    return CliRunner().invoke(main, [*args], catch_exceptions=False)


@pytest.fixture
def fitted(tmp_path):
    """An introspective folder fitted on digits_linear, as `introspect fit` writes it."""
    out = tmp_path / "h"
    fit = _invoke(
        "introspect",
        "fit",
        "--model",
        "digits:digits_linear",
        "--data",
        "digits:train",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--hidden",
        "4",
        "--no-progress",
    )
    assert fit.exit_code == 0, fit.output
    return out


def _name_model(folder, spec: str, **extra) -> None:
    path = folder / "estimator.json"
    config = json.loads(path.read_text())
    config["metadata"]["model"].update(spec=spec, **extra)
    path.write_text(json.dumps(config))


def test_a_model_named_by_the_folder_is_not_imported(fitted, tmp_path, monkeypatch):
    (tmp_path / "evil_module.py").write_text(textwrap.dedent(EVIL))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "evil_module", raising=False)
    marker = tmp_path / "marker"
    monkeypatch.setenv("GRADTRUST_TEST_MARKER", str(marker))
    # the folder names a module to import, and even opts itself in
    _name_model(fitted, "evil_module:x", load_options={"trust_model_file": True})
    out = _invoke(
        "introspect",
        "score",
        "--introspective",
        str(fitted),
        "--data",
        "digits:test",
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
    )
    assert out.exit_code == 2, out.output
    assert "--trust-model-file" in out.output and "--model" in out.output and "Traceback" not in out.output
    assert not marker.exists()
    # --model gives the network instead: the folder's spec is not read, its parameters hash is checked
    out = _invoke(
        "introspect",
        "score",
        "--introspective",
        str(fitted),
        "--model",
        "digits:digits_linear",
        "--data",
        "digits:test",
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
        "--methods",
        "softmax",
    )
    assert out.exit_code == 0, out.output
    assert not marker.exists()
    # the user's opt-in loads what the folder names
    out = _invoke(
        "introspect",
        "score",
        "--introspective",
        str(fitted),
        "--data",
        "digits:test",
        "--out",
        str(tmp_path / "r2"),
        "--no-progress",
        "--trust-model-file",
    )
    assert out.exit_code == 2 and "a saved folder ran code" in out.output, out.output
    assert marker.exists()


def test_model_given_with_model_is_checked_against_the_fitted_parameters(fitted, tmp_path):
    out = _invoke(
        "introspect",
        "score",
        "--introspective",
        str(fitted),
        "--model",
        "digits:digits_mlp",
        "--data",
        "digits:test",
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
    )
    assert out.exit_code == 2 and "differ from those of the network H was fitted on" in out.output, out.output
    out = _invoke(
        "introspect",
        "score",
        "--introspective",
        str(fitted),
        "--weights",
        "random",
        "--data",
        "digits:test",
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
    )
    assert out.exit_code == 2 and "add --model" in out.output, out.output


def test_fit_never_records_the_opt_in(tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "h"
    fit = _invoke(
        "introspect",
        "fit",
        "--model",
        "digits:digits_linear",
        "--data",
        "digits:train",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--hidden",
        "4",
        "--no-progress",
        "--trust-model-file",
    )
    assert fit.exit_code == 0, fit.output
    recorded = json.loads((out / "estimator.json").read_text())["metadata"]["model"]
    assert "trust_model_file" not in json.dumps(recorded) and recorded["parameters_sha256"]


@pytest.mark.parametrize(
    "edit, word",
    [
        (lambda c: c["params"].update(extra=1), "unknown 'extra'"),
        (lambda c: c["params"].pop("gamma"), "missing 'gamma'"),  # would silently take the default
        (lambda c: c["state"].update(bogus=2), "unknown 'bogus'"),
        (lambda c: c.update(bogus=3), "unknown 'bogus'"),
        (lambda c: c["state"].pop("in_channels"), "in_channels"),
    ],
)
def test_gradcon_config_with_an_extra_or_missing_key_is_refused(tmp_path, edit, word):
    x = torch.rand(8, 1, 8, 8)
    GradCON(epochs=1, batch_size=4).fit(x).save(tmp_path / "m")
    path = tmp_path / "m" / "estimator.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    with pytest.raises(ModelError, match=word):
        GradCON.load(tmp_path / "m")
    out = _invoke(
        "gradcon", "score", "--gradcon", str(tmp_path / "m"), "--data", "digits:test", "--out", str(tmp_path / "run")
    )
    assert out.exit_code == 2 and word in out.output and "Traceback" not in out.output, out.output
    assert len(out.output.strip().splitlines()) == 1, out.output


def test_every_estimator_round_trips_under_the_key_check(tmp_path):
    model = load_model("digits:digits_linear", "DEFAULT")
    x, y = DigitsDataset("train").tensors()
    intro = Introspective(epochs=1, hidden=4).fit(model, x[:64], y[:64])
    intro.save(tmp_path / "i")
    assert Introspective.load(tmp_path / "i").info_ == intro.info_
