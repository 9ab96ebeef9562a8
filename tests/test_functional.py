"""The functional layer: each forward-pass score as a pure function of logits (and features), its doctests,
agreement with the registered methods, and with per-sample autograd of the definitions (docs/methods.md)."""

from __future__ import annotations

import doctest
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import gradtrust
from gradtrust import functional as F
from reference_scores import reference_score

LOGIT_ONLY = ["softmax", "entropy", "max_logit", "margin", "brier", "logit_margin", "energy", "doctor",
              "maxlogit_pnorm"]
WITH_FEATURES = ["gradtrust", "gradtrust_topk", "gradnorm"]


def test_doctests_of_the_functional_layer_pass():
    failures, tried = doctest.testmod(F, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried >= len(F.__all__), "every public function carries an Examples: doctest"
    assert failures == 0


def test_every_forward_pass_method_is_a_function_of_the_functional_layer():
    torch.manual_seed(3)
    head = nn.Linear(6, 5)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), head).eval()
    x = torch.randn(16, 4)
    result = gradtrust.score(model, x, LOGIT_ONLY + WITH_FEATURES)
    logits = model(x).detach()
    features = model[1](model[0](x)).detach()
    for name in LOGIT_ONLY:
        assert torch.equal(result[name], getattr(F, name)(logits.double())), name
    for name in WITH_FEATURES:
        assert torch.equal(result[name], getattr(F, name)(logits.double(), features.double())), name


@pytest.mark.parametrize("name", WITH_FEATURES)
def test_gradient_functions_equal_per_sample_autograd(name):
    torch.manual_seed(4)
    head = nn.Linear(8, 7)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), head).eval()
    x = torch.randn(5, 3)
    logits, features = model(x).detach(), model[1](model[0](x)).detach()
    got = getattr(F, name)(logits, features)
    for i in range(5):
        want = reference_score(model, x[i:i + 1], name, head)
        assert got[i].item() == pytest.approx(want, rel=1e-5), (name, i)


def test_undefined_values_come_out_nan():
    z = torch.tensor([[1.0, 1.0, 1.0]])
    assert torch.isnan(F.maxlogit_pnorm(z)).all()
    assert torch.isnan(F.gradtrust(torch.tensor([[2.0, 0.0, 1.0]]), torch.zeros(1, 4))).all()
    assert torch.isnan(F.logit_margin(torch.tensor([[1.0]]))).all()


def test_functional_validates_shapes():
    with pytest.raises(ValueError, match="batch, classes"):
        F.softmax(torch.randn(3))
    with pytest.raises(ValueError, match="features hold 2 samples"):
        F.gradnorm(torch.randn(3, 4), torch.randn(2, 5))


@pytest.mark.slow
def test_cli_and_package_import_without_torch():
    """`gradtrust --help` must answer without importing torch (it is what makes it fast)."""
    code = ("import sys, gradtrust, gradtrust.cli\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "try:\n    gradtrust.cli.main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "assert 'torch' not in sys.modules, 'torch imported by --help'\n"
            "print('light')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ})
    assert out.returncode == 0, out.stderr
    assert "light" in out.stdout and "score" in out.stdout
