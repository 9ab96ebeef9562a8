"""The method registry: one declaration per method that the engine, the CLI, the manifest and the report read;
guarded passes; plug-ins through the ``gradtrust.methods`` entry-point group, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import gradtrust
from gradtrust.cli import main
from gradtrust.scores import (
    MethodOutput,
    Param,
    Pass,
    ScoreOptions,
    UndeclaredPassError,
    available_methods,
    get_method,
    load_plugins,
    method_specs,
    register_method,
    unregister_method,
)
from gradtrust.scores import registry as registry_module

PLUGIN_SOURCE = '''
"""A trust-score plug-in, as another package would ship it."""
import torch
from gradtrust.scores import MethodOutput, Param, Pass, register_method

SCALE = Param("plugin_scale", float, 2.0, "a factor of plugin_second_logit",
              lambda v: None if v > 0 else "must be > 0")


@register_method("plugin_second_logit", display_name="Second logit (plug-in)", params=(SCALE,),
                 source="a test plug-in")
def second_logit(batch):
    """Minus the scaled second-largest logit."""
    return MethodOutput(-batch.options.plugin_scale * batch.logits.topk(2, dim=1).values[:, 1], {})


@register_method("plugin_first_grad", needs=(Pass.PARAMETER_GRADIENTS,), display_name="First-tensor gradient",
                 source="a test plug-in")
def first_grad(batch):
    """Minus the squared gradient norm of the first parameter tensor under Purview's loss."""
    return MethodOutput(-batch.parameter_sq_norms[:, 0], {})


@register_method("plugin_row_energy", needs=(Pass.COUNTERFACTUAL_GRADIENTS,), display_name="Row energy",
                 source="a test plug-in")
def row_energy(batch):
    """Mean gradient row energy."""
    return MethodOutput(batch.mse_gradient_rows.row_energy.mean(dim=1), {})
'''
PLUGIN_METHODS = ("plugin_second_logit", "plugin_first_grad", "plugin_row_energy")


def _write_plugin(root: Path) -> Path:
    """An installed package with a ``gradtrust.methods`` entry point: its module and its dist-info."""
    (root / "gtplugin").mkdir(parents=True)
    (root / "gtplugin" / "__init__.py").write_text("")
    (root / "gtplugin" / "scores.py").write_text(PLUGIN_SOURCE)
    info = root / "gtplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gtplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[gradtrust.methods]\ngtplugin = gtplugin.scores\n")
    return root


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """Install the plug-in on sys.path, load the entry points, and remove its methods afterwards."""
    root = _write_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(root))
    added = load_plugins(force=True)
    yield root, added
    for name in PLUGIN_METHODS:
        unregister_method(name)
    sys.modules.pop("gtplugin.scores", None)
    sys.modules.pop("gtplugin", None)


def _tiny_cnn(classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(3, classes)).eval()


# ------------------------------------------------------------------------------------------ guarded passes


def test_reading_an_undeclared_pass_raises_instead_of_returning_a_number():
    @register_method("sneaky_test_method", needs=(Pass.FORWARD,))
    def sneaky(batch):
        """Reads per-sample parameter gradients without declaring them."""
        return MethodOutput(-batch.parameter_sq_norms.mean(1), {})

    try:
        x = torch.randn(2, 1, 8, 8)
        with pytest.raises(UndeclaredPassError, match="PARAMETER_GRADIENTS"):
            gradtrust.score(_tiny_cnn(), x, ["sneaky_test_method"], purview_backend="hooks")
        # ... also when another method in the same call runs that pass (it used to read its result)
        with pytest.raises(UndeclaredPassError, match="sneaky_test_method"):
            gradtrust.score(_tiny_cnn(), x, ["sneaky_test_method", "purview_final"], purview_backend="hooks")
    finally:
        unregister_method("sneaky_test_method")


def test_needs_must_be_pass_members():
    with pytest.raises(TypeError, match="Pass"):
        register_method("stringly_test_method", needs=("forward",))(lambda batch: None)  # type: ignore[arg-type]
    assert "stringly_test_method" not in available_methods()


def test_a_method_name_is_registered_once():
    with pytest.raises(ValueError, match="already registered"):
        register_method("softmax")(lambda batch: None)


# ------------------------------------------------------------------------------------------ one declaration


def test_every_builtin_declares_display_name_formula_source_and_passes():
    for spec in method_specs():
        if spec.name.startswith("plugin_"):
            continue
        assert spec.display_name and spec.summary and spec.source, spec.name
        assert Pass.FORWARD in spec.needs
        assert spec.summary.endswith((".", ")")), f"{spec.name}: summary cut mid-sentence: {spec.summary!r}"


def test_paper_methods_and_report_order_come_from_the_registry():
    from gradtrust.scores import order_methods, paper_methods

    assert paper_methods() == ["softmax", "entropy", "max_logit", "margin", "odin", "mc_dropout", "gradnorm",
                               "purview_initial", "purview_final", "gradtrust"]
    assert order_methods(["energy", "zzz_unknown", "softmax", "gradtrust"]) == ["softmax", "gradtrust", "energy",
                                                                                "zzz_unknown"]


def test_parameters_are_declared_once_and_reported_as_used():
    spec = get_method("gradtrust_topk")
    assert spec.parameter_names == ("topk", "layer", "gradient_path")
    assert get_method("odin").parameter_names == ("odin_temperature", "odin_epsilon", "odin_epsilon_space",
                                                  "odin_input_std")
    result = gradtrust.score(_tiny_cnn(classes=4), torch.randn(3, 1, 8, 8), ["gradtrust_topk", "odin"])
    assert result.parameters["gradtrust_topk"] == {"topk": 3, "layer": "4", "gradient_path": "auto"}
    assert result.parameters["odin"] == {"odin_temperature": 100.0, "odin_epsilon": 0.0014,
                                         "odin_epsilon_space": "input", "odin_input_std": None}


def test_options_validate_against_their_declarations():
    assert ScoreOptions.from_kwargs(odin_temperature=5).odin_temperature == 5.0  # an int is a fine float
    with pytest.raises(ValueError, match="mc_samples must be an integer >= 1"):
        ScoreOptions.from_kwargs(mc_samples=0)
    with pytest.raises(ValueError, match="gradient_path must be one of"):
        ScoreOptions.from_kwargs(gradient_path="sideways")
    with pytest.raises(ValueError, match="topk must be an integer or None"):
        ScoreOptions.from_kwargs(topk=2.5)
    with pytest.raises(KeyError, match="Valid options"):
        ScoreOptions.from_kwargs(odin_temprature=5)


def test_an_option_declared_twice_differently_is_refused():
    clash = Param("odin_temperature", float, 1.0, "a clashing redefinition")

    @register_method("clashing_test_method", params=(clash,))
    def clashing(batch):
        """Declares an option that the ODIN pass declares differently."""
        return MethodOutput(batch.logits[:, 0], {})

    try:
        with pytest.raises(ValueError, match="declared twice"):
            ScoreOptions.from_kwargs()
    finally:
        unregister_method("clashing_test_method")


def test_cli_methods_and_option_help_read_the_declarations():
    runner = CliRunner()
    listing = runner.invoke(main, ["methods"]).output
    for spec in method_specs():
        assert spec.name in listing
    help_text = runner.invoke(main, ["score", "--help"]).output
    assert "topk=none" in help_text and "odin_temperature=100.0" in help_text
    assert "purview_backend=auto|hooks|vmap|loop" in help_text


# ------------------------------------------------------------------------------------------ plug-ins


def test_plugin_methods_load_from_entry_points_and_score(plugin):
    _, added = plugin
    assert set(PLUGIN_METHODS) <= set(added)
    assert set(PLUGIN_METHODS) <= set(available_methods())
    model, x = _tiny_cnn(), torch.randn(3, 1, 8, 8)
    result = gradtrust.score(model, x, list(PLUGIN_METHODS) + ["purview_initial"], plugin_scale=3.0)
    logits = model(x).detach().double()
    assert torch.allclose(result["plugin_second_logit"], -3.0 * logits.topk(2, dim=1).values[:, 1])
    # the parameter-gradient plug-in equals a per-sample autograd of its definition
    for i in range(3):
        model.zero_grad()
        z = model(x[i:i + 1])
        torch.nn.functional.binary_cross_entropy_with_logits(z, torch.ones_like(z)).backward()
        first = next(model.parameters()).grad
        assert result["plugin_first_grad"][i].item() == pytest.approx(-first.square().sum().item(), rel=1e-5)
    assert result.parameters["plugin_second_logit"] == {"plugin_scale": 3.0}


def test_plugin_gradient_methods_are_skipped_like_the_builtins_where_they_cannot_apply(plugin):
    no_linear = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    result = gradtrust.score(no_linear, torch.randn(2, 1, 8, 8))
    assert "plugin_row_energy" in result.skipped and "gradtrust" in result.skipped
    assert result.skipped["plugin_row_energy"] == result.skipped["gradtrust"]
    assert "plugin_second_logit" in result.scores and "plugin_first_grad" in result.scores


def test_a_broken_plugin_warns_and_leaves_the_builtins(tmp_path, monkeypatch):
    root = tmp_path / "broken"
    info = root / "broken-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[gradtrust.methods]\nbroken = no_such_module_here\n")
    monkeypatch.syspath_prepend(str(root))
    with pytest.warns(RuntimeWarning, match="broken"):
        load_plugins(force=True)
    assert "gradtrust" in available_methods()


def test_plugin_end_to_end_score_then_report(plugin, tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    scored = runner.invoke(main, ["score", "--model", "digits:digits_tiny", "--data", "digits:test", "--out", str(out),
                                  "--methods", "softmax,gradtrust," + ",".join(PLUGIN_METHODS),
                                  "--option", "plugin_scale=0.5", "--batch-size", "512"])
    assert scored.exit_code == 0, scored.output
    frame = pd.read_parquet(out / "scores.parquet")
    assert set(PLUGIN_METHODS) <= set(frame.columns)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["methods"]["plugin_second_logit"] == {"plugin_scale": 0.5}
    report = runner.invoke(main, ["report", str(out), "--out", str(tmp_path / "report"), "--resamples", "20", "--no-figures"])
    assert report.exit_code == 0, report.output
    table = (tmp_path / "report" / "table.md").read_text()
    for name in ("Second logit (plug-in)", "First-tensor gradient", "Row energy", "GradTrust", "Softmax"):
        assert name in table
    header = next(line for line in table.splitlines() if line.startswith("| run"))
    # registry order: built-ins first, then the plug-ins in their registration order
    assert header.index("Softmax") < header.index("GradTrust") < header.index("Second logit (plug-in)") \
        < header.index("First-tensor gradient") < header.index("Row energy")


@pytest.mark.slow
def test_plugin_is_discovered_by_a_fresh_process(tmp_path):
    """What a user sees after `pip install` of a plug-in package: a new process lists and scores its methods."""
    root = _write_plugin(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    listing = subprocess.run([sys.executable, "-m", "gradtrust", "methods"], env=env, capture_output=True, text=True,
                             check=True).stdout
    assert "plugin_first_grad" in listing and "plugin_second_logit" in listing
    code = textwrap.dedent("""
        import torch, gradtrust
        m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
        r = gradtrust.score(m, torch.randn(2, 4))
        print(sorted(n for n in r.scores if n.startswith("plugin_")))
    """)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "plugin_first_grad" in out and "plugin_row_energy" in out


def test_registry_state_is_clean_after_plugin_tests():
    # guards the other test modules: no plug-in or test method leaks out of this file
    leaked = [n for n in available_methods() if n.startswith("plugin_") or n.endswith("_test_method")]
    assert leaked == []
    assert registry_module.ENTRY_POINT_GROUP == "gradtrust.methods"


def test_installing_a_plugin_does_not_change_an_existing_runs_identity(tmp_path, monkeypatch):
    from gradtrust import load_model
    from gradtrust.data.open import open_dataset
    from gradtrust.runs import score_dataset

    loaded = load_model("digits:digits_tiny", "DEFAULT")
    data = open_dataset("digits:test", loaded)
    first = score_dataset(loaded, data, tmp_path / "run", methods="softmax,gradtrust", batch_size=512,
                          progress=False)
    root = _write_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(root))
    load_plugins(force=True)
    try:
        again = score_dataset(loaded, data, tmp_path / "run", methods="softmax,gradtrust", batch_size=512,
                              progress=False)  # no --force needed: the plug-in's defaults are not identity
        assert first.resumed_chunks == 0 and again.resumed_chunks > 0
        with pytest.raises(Exception, match="plugin_scale"):  # a given plug-in option is part of it
            score_dataset(loaded, data, tmp_path / "run", methods="softmax,gradtrust", batch_size=512,
                          progress=False, options={"plugin_scale": 3.0})
    finally:
        for name in PLUGIN_METHODS:
            unregister_method(name)
        sys.modules.pop("gtplugin.scores", None)
        sys.modules.pop("gtplugin", None)


def test_results_reader_checks_the_schema(tmp_path):
    from gradtrust import schema
    from gradtrust.errors import DataError

    frame = pd.DataFrame({"index": [0, 1], "path": ["a", "b"], "label": [1, 0], "prediction": [1.0, 1.0],
                          "correct": [True, False], "softmax": [0.9, 0.6], "nan_reason_softmax": ["", ""]})
    frame.to_parquet(tmp_path / "scores.parquet")
    read = schema.read_results(tmp_path)
    assert schema.method_columns(read) == ["softmax"] and read["prediction"].dtype == "int64"
    frame.drop(columns=["softmax"]).to_parquet(tmp_path / "scores.parquet")
    with pytest.raises(DataError, match="has no score column"):
        schema.read_results(tmp_path)
    with pytest.raises(DataError, match="no scores.parquet here"):
        schema.read_results(tmp_path / "missing")
