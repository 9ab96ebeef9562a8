"""Open passes: a pass is a registered object with a per-batch memo; a capability (VOICE) or a plug-in adds
one and its methods the way the built-ins are declared; the spec fields other capabilities derive lists from."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradtrust
from gradtrust.errors import GradTrustError, OptionError, RegistrationError
from gradtrust.scores import (
    MethodOutput,
    Param,
    Pass,
    PassSpec,
    UndeclaredPassError,
    get_method,
    method_specs,
    register_method,
    register_pass,
    unregister_method,
    unregister_pass,
)


def _cnn(classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(5, classes)).eval()


@pytest.fixture
def counting_pass():
    """A plug-in pass ``Pass.TEST_INPUT_GRADIENT``: ``‖∂z_ŷ/∂x‖²`` per sample from the shared recorded graph,
    counting how often it runs; two methods read it; removed afterwards."""
    calls: list[int] = []

    def input_gradient_sq_norm(ctx):
        calls.append(ctx.inputs.shape[0])
        forward = ctx.graph_forward()
        top = forward.logits.gather(1, ctx.prediction.to(forward.logits.device).unsqueeze(1)).sum()
        (grad,) = torch.autograd.grad(top, forward.x, retain_graph=True)
        return grad.flatten(1).square().sum(1).double()

    def unavailable(ctx):
        return "the test pass needs at least 3 classes" if ctx.num_classes < 3 else None

    spec = register_pass(PassSpec("TEST_INPUT_GRADIENT", provides={"test_input_grad": input_gradient_sq_norm},
                                  needs_graph=True, unavailable=unavailable,
                                  params=(Param("test_pass_scale", float, 1.0, "a factor (test)"),)))

    @register_method("test_grad_small", needs=(Pass.TEST_INPUT_GRADIENT,), source="test")
    def small(batch):
        """Minus the input gradient's squared norm."""
        return MethodOutput(-batch.test_input_grad * batch.options.test_pass_scale, {})

    @register_method("test_grad_log", needs=(spec,), source="test")
    def log(batch):
        """Minus the log of the input gradient's squared norm."""
        return MethodOutput(-batch.test_input_grad.log(), {})

    try:
        yield spec, calls
    finally:
        unregister_method("test_grad_small")
        unregister_method("test_grad_log")
        unregister_pass("TEST_INPUT_GRADIENT")


def test_a_plugin_pass_runs_once_per_batch_for_every_method_that_reads_it(counting_pass):
    spec, calls = counting_pass
    model, x = _cnn(), torch.randn(3, 3, 8, 8)
    result = gradtrust.score(model, x, ["test_grad_small", "test_grad_log", "softmax"], test_pass_scale=2.0)
    assert calls == [3]  # one batch, one computation, two readers
    expected = []
    for i in range(3):  # independent: per sample, plain autograd
        xi = x[i:i + 1].clone().requires_grad_(True)
        z = model(xi)
        z[0, z.argmax()].backward()
        expected.append(xi.grad.square().sum().item())
    expected_t = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(result["test_grad_small"], -2.0 * expected_t, rtol=1e-5, atol=0)
    torch.testing.assert_close(result["test_grad_log"], -expected_t.log(), rtol=1e-5, atol=1e-6)
    assert result.parameters["test_grad_small"] == {"test_pass_scale": 2.0}
    gradtrust.score(model, torch.randn(2, 3, 8, 8), ["test_grad_small", "test_grad_log"])
    assert calls == [3, 2]  # the memo lives for one batch only
    assert spec in list(Pass) and Pass.TEST_INPUT_GRADIENT is spec


def test_a_plugin_pass_that_cannot_run_skips_its_methods_with_its_reason(counting_pass):
    _, calls = counting_pass
    two_classes = _cnn(classes=2)
    result = gradtrust.score(two_classes, torch.randn(2, 3, 8, 8))
    assert result.skipped["test_grad_small"] == result.skipped["test_grad_log"] == "the test pass needs at least 3 classes"
    assert calls == []
    with pytest.raises(gradtrust.ModelError, match="test_grad_log: the test pass needs at least 3 classes"):
        gradtrust.score(two_classes, torch.randn(2, 3, 8, 8), ["test_grad_log"])


def test_a_method_reading_an_undeclared_plugin_pass_raises(counting_pass):
    @register_method("test_sneaky_reader")
    def sneaky(batch):
        """Reads the test pass without declaring it."""
        return MethodOutput(batch.test_input_grad, {})

    try:
        with pytest.raises(UndeclaredPassError, match="Pass.TEST_INPUT_GRADIENT"):
            gradtrust.score(_cnn(), torch.randn(2, 3, 8, 8), ["test_sneaky_reader", "test_grad_log"])
    finally:
        unregister_method("test_sneaky_reader")


def test_pass_registration_is_checked():
    with pytest.raises(RegistrationError, match="already registered"):
        register_pass(PassSpec("ODIN", provides={}))
    with pytest.raises(RegistrationError, match="provides it already"):
        register_pass(PassSpec("TEST_CLASH", provides={"logits": lambda ctx: None}))
    with pytest.raises(RegistrationError, match="upper-case"):
        register_pass(PassSpec("lower", provides={}))
    assert "TEST_CLASH" not in [p.name for p in Pass]
    with pytest.raises(AttributeError, match="Pass.NO_SUCH_PASS"):
        _ = Pass.NO_SUCH_PASS
    assert issubclass(RegistrationError, GradTrustError) and issubclass(RegistrationError, TypeError)


def test_builtin_passes_in_their_documented_order_with_their_options():
    names = [p.name for p in Pass]
    assert names[:5] == ["FORWARD", "COUNTERFACTUAL_GRADIENTS", "ODIN", "PARAMETER_GRADIENTS", "MC_DROPOUT"]
    assert "VOICE" in names[5:]  # from gradtrust.explanations, loaded as a plug-in is
    assert [p.name for p in Pass.ODIN.params] == ["odin_temperature", "odin_epsilon", "odin_epsilon_space",
                                                  "odin_input_std"]
    assert get_method("voice_snr").parameter_names == ("voice_layer", "voice_threshold", "voice_max_backward_classes")


@pytest.mark.parametrize("value", [-1.0, 0.0, -1])
def test_a_bad_option_value_is_a_gradtrust_error(value):
    with pytest.raises(OptionError, match="odin_temperature must be > 0") as raised:
        gradtrust.score(_cnn(), torch.randn(2, 3, 8, 8), odin_temperature=value)
    assert isinstance(raised.value, GradTrustError) and isinstance(raised.value, ValueError)
    with pytest.raises(OptionError, match="mc_samples must be an integer"):
        gradtrust.score(_cnn(), torch.randn(2, 3, 8, 8), mc_samples=1.5)


def test_an_attribute_error_of_the_model_reaches_the_caller_unchanged():
    class Broken(nn.Module):
        def forward(self, x):
            return self.no_such_layer(x)

    with pytest.raises(AttributeError, match="no_such_layer"):
        gradtrust.score(Broken().eval(), torch.randn(2, 3), ["softmax"])


def test_voice_runs_once_per_batch_for_both_statistics(monkeypatch):
    from gradtrust.explanations import trust

    sessions: list[int] = []
    real = trust.voice_session
    monkeypatch.setattr(trust, "voice_session", lambda s, x, *a: sessions.append(x.shape[0]) or real(s, x, *a))
    model, x = _cnn(classes=5), torch.randn(3, 3, 8, 8)
    first = gradtrust.score(model, x, ["voice_snr", "voice_iou"])
    again = gradtrust.score(model, x, ["voice_snr", "voice_iou"], voice_threshold=0.5)
    assert sessions == [3, 3]  # once per batch for both methods; a new call (new options) computes it again
    v = gradtrust.voice(model, x, threshold=0.5)
    assert torch.allclose(again["voice_iou"], 1 - v.iou) and torch.allclose(first["voice_snr"], v.snr)
    assert not hasattr(trust, "_LAST")


def test_cuda_graph_safety_and_method_lists_come_from_the_registry():
    from gradtrust.detection.experiment import DEFAULT_BASELINES
    from gradtrust.introspection.introspective import LOGIT_SCORES
    from gradtrust.scores.graphs import capturable

    assert LOGIT_SCORES == ("softmax", "entropy", "max_logit", "margin", "brier", "logit_margin", "energy", "doctor",
                            "maxlogit_pnorm")
    assert all(callable(getattr(gradtrust.functional, name)) for name in LOGIT_SCORES)
    assert set(DEFAULT_BASELINES) == {"softmax", "odin", "energy", "gradnorm", "purview_initial", "purview_final",
                                      "mahalanobis"}
    safe = {spec.name for spec in method_specs() if spec.cuda_graph_safe}
    assert safe == {*LOGIT_SCORES, "gradtrust", "gradtrust_topk", "gradnorm"}

    class Closed:  # the gradient scores are replayable only in closed form
        uses_autograd_path = False

    class Autograd:
        uses_autograd_path = True

    assert capturable(get_method("gradtrust"), Closed()) and not capturable(get_method("gradtrust"), Autograd())
    assert capturable(get_method("softmax"), Autograd()) and not capturable(get_method("odin"), Closed())
