"""TrustedClassifier: one forward pass → (logits, trust, accept); the trust equals the scores engine's; the
torch.export program (and the traced TorchScript) equal eager mode; gradient-based scores are eager only."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchvision

import gradtrust
from gradtrust.data import DigitsDataset
from gradtrust.errors import InputError, ModelError
from gradtrust.models import load_model
from gradtrust.selective import fit_gate
from gradtrust.trusted import FORWARD_SCORES, TrustedClassifier, TrustedOutput


@pytest.fixture(scope="module")
def digits():
    model = load_model("digits:digits_cnn", "DEFAULT").module.eval()
    data = DigitsDataset(split="test")
    x = torch.stack([data[i].input for i in range(48)])
    y = torch.tensor([data[i].label for i in range(48)])
    return model, x, y


@pytest.mark.parametrize("name", sorted(FORWARD_SCORES))
def test_trust_is_the_scores_engine_value_in_one_forward_pass(digits, name):
    model, x, _ = digits
    calls = []
    handle = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        out = TrustedClassifier(model, name, threshold=0.0)(x)
    finally:
        handle.remove()
    assert isinstance(out, TrustedOutput) and len(calls) == 1  # one forward pass
    reference = gradtrust.score(model, x, [name])
    torch.testing.assert_close(out.trust.detach(), reference[name], equal_nan=True, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.logits.detach(), reference.logits.to(out.logits.dtype))
    torch.testing.assert_close(out.accept, reference[name] >= 0.0)


def test_accept_follows_the_gate_and_refuses_nan(digits, tmp_path):
    model, x, y = digits
    with torch.no_grad():
        probe = TrustedClassifier(model, "softmax")(x)
    correct = (probe.logits.argmax(1) == y).numpy()
    gate = fit_gate(np.repeat(probe.trust.numpy(), 20), np.repeat(correct, 20), coverage=0.5, score="softmax")
    path = gate.save(tmp_path / "gate.json")
    for given in (gate, path):
        trusted = TrustedClassifier(model, gate=given)
        assert trusted.score_name == "softmax" and float(trusted.threshold) == gate.threshold
        with torch.no_grad():
            np.testing.assert_array_equal(trusted(x).accept.numpy(), gate.accept(probe.trust.numpy()))
    with pytest.raises(InputError, match="not 'energy'"):
        TrustedClassifier(model, "energy", gate=gate)
    with pytest.raises(InputError, match="not both"):
        TrustedClassifier(model, gate=gate, threshold=0.5)
    with pytest.raises(InputError, match="unknown score"):
        TrustedClassifier(model, "nonsense")
    nan_model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    torch.nn.init.zeros_(nan_model[1].weight)
    torch.nn.init.zeros_(nan_model[1].bias)
    out = TrustedClassifier(nan_model, "gradtrust", threshold=-1e9)(torch.zeros(2, 1, 8, 8))
    assert torch.isnan(out.trust).all() and not out.accept.any()  # all-zero features: NaN, refused


def _assert_same(a: TrustedOutput, b, exact: bool = True) -> None:
    if exact:
        torch.testing.assert_close(b[0], a.logits, rtol=0, atol=0)
        torch.testing.assert_close(b[1], a.trust, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(b[2], a.accept)
    else:
        torch.testing.assert_close(b[0], a.logits)
        torch.testing.assert_close(b[1], a.trust, rtol=1e-6, atol=1e-9, equal_nan=True)


@pytest.mark.parametrize("name", ["softmax", "gradtrust_topk", "energy"])
def test_export_and_torchscript_equal_eager_on_the_digits_network(digits, name):
    model, x, _ = digits
    trusted = TrustedClassifier(model, name, threshold=0.5).eval()
    with torch.no_grad():
        eager = trusted(x)
    program = trusted.export(x)
    assert isinstance(program, torch.export.ExportedProgram)
    with torch.no_grad():
        _assert_same(eager, program.module()(x))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = trusted.to_torchscript(x)
        # tracing turns 1/C into a float32 constant: equal to float32 precision
        _assert_same(eager, scripted(x), exact=name in ("softmax", "energy"))


def test_export_equals_eager_on_resnet18_with_random_weights():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(3, 3, 64, 64)
    trusted = TrustedClassifier(model, "gradtrust", threshold=2.0).eval()
    with torch.no_grad():
        eager = trusted(x)
        _assert_same(eager, trusted.export(x).module()(x))


def test_gradient_scores_run_eagerly_and_refuse_export(digits):
    model, x, _ = digits
    trusted = TrustedClassifier(model, "odin", threshold=0.1)
    out = trusted(x[:6])
    torch.testing.assert_close(out.trust, gradtrust.score(model, x[:6], ["odin"])["odin"])
    assert trusted.exportable is False
    with pytest.raises(ModelError, match="eager mode only"):
        trusted.export(x[:6])
    with pytest.raises(ModelError, match="eager mode only"):
        trusted.to_torchscript(x[:6])


def test_a_saved_exported_program_loads_and_returns_the_named_tuple(digits, tmp_path):
    model, x, _ = digits
    trusted = TrustedClassifier(model, "gradtrust", threshold=5.0).eval()
    with torch.no_grad():
        eager = trusted(x)
    torch.export.save(trusted.export(x), tmp_path / "trusted.pt2")
    loaded = torch.export.load(tmp_path / "trusted.pt2").module()(x)
    assert isinstance(loaded, TrustedOutput)
    _assert_same(eager, loaded)
