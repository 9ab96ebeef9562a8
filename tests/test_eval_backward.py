"""The one-multiply backward of eval-mode BatchNorm (scores/eval_backward.py) and the cached Purview plan."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torchvision
from torch import nn

import gradtrust
import gradtrust.scores.passes as passes_module
from gradtrust.per_sample.eval_backward import EvalBatchNorm, cheap_batch_norm
from gradtrust.per_sample.planner import plan_parameters


def _bn(kind: type[nn.Module], channels: int = 5, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    bn = kind(channels).to(dtype).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.3, 2.0)
        bn.weight.uniform_(-1.5, 1.5)
        bn.bias.uniform_(-1, 1)
    return bn.requires_grad_(False)


@pytest.mark.parametrize("kind, shape", [(nn.BatchNorm1d, (4, 5)), (nn.BatchNorm1d, (4, 5, 7)),
                                         (nn.BatchNorm2d, (4, 5, 6, 3)), (nn.BatchNorm3d, (2, 5, 3, 4, 2))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_output_bits_and_the_autograd_input_gradient(kind, shape, dtype):
    bn = _bn(kind, dtype=dtype)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    g = torch.randn(shape, dtype=dtype)
    want_y = bn(x)
    (want_grad,) = torch.autograd.grad(want_y, x, g)
    with cheap_batch_norm(bn):
        y = bn(x)
    assert "EvalBatchNorm" in type(y.grad_fn).__name__
    assert torch.equal(y, want_y)  # the module's own forward operation
    (grad,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(grad, want_grad, rtol=1e-6 if dtype == torch.float32 else 1e-13, atol=0)


def test_without_affine_parameters():
    bn = nn.BatchNorm2d(3, affine=False).eval()
    bn.running_var.fill_(0.5)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    g = torch.randn(2, 3, 4, 4)
    (want,) = torch.autograd.grad(bn(x), x, g)
    with cheap_batch_norm(bn):
        (got,) = torch.autograd.grad(bn(x), x, g)
    torch.testing.assert_close(got, want)


def test_only_eval_batch_norm_with_frozen_statistics_and_parameters_is_replaced():
    """Training mode, batch statistics, or parameters that need their own gradient: the module runs as it is
    (the cheap backward gives no parameter gradients)."""
    training = _bn(nn.BatchNorm2d).train()
    no_stats = nn.BatchNorm2d(5, track_running_stats=False).eval().requires_grad_(False)
    learning = _bn(nn.BatchNorm2d).requires_grad_(True)
    x = torch.randn(3, 5, 2, 2, requires_grad=True)
    for bn in (training, no_stats, learning):
        with cheap_batch_norm(bn):
            y = bn(x)
        assert "EvalBatchNorm" not in type(y.grad_fn).__name__


def test_the_modules_forward_is_back_afterwards_even_on_error():
    model = nn.Sequential(_bn(nn.BatchNorm1d), nn.Linear(5, 2))
    with pytest.raises(RuntimeError, match="boom"), cheap_batch_norm(model):
        assert "forward" in model[0].__dict__
        raise RuntimeError("boom")
    assert "forward" not in model[0].__dict__
    y = model[0](torch.randn(2, 5, requires_grad=True))
    assert "EvalBatchNorm" not in type(y.grad_fn).__name__


def _resnet() -> nn.Module:
    torch.manual_seed(3)
    model = torchvision.models.resnet18(num_classes=6).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def test_gradient_scores_agree_with_the_native_batch_norm_backward(monkeypatch):
    """Purview, ODIN and the autograd path of the gradient scores, with and without the cheap backward."""
    model, x = _resnet(), torch.randn(3, 3, 32, 32)
    methods = ["purview_initial", "purview_final", "odin"]
    cheap = gradtrust.score(model, x, methods)
    layered = gradtrust.score(model, x, ["gradtrust", "gradnorm"], layer="layer4.1.conv2")
    monkeypatch.setattr(passes_module, "cheap_batch_norm", lambda model: contextlib.nullcontext())
    native = gradtrust.score(model, x, methods)
    native_layered = gradtrust.score(model, x, ["gradtrust", "gradnorm"], layer="layer4.1.conv2")
    for name in methods:
        torch.testing.assert_close(cheap[name], native[name], rtol=1e-5, atol=0)
    for name in ("gradtrust", "gradnorm"):
        torch.testing.assert_close(layered[name], native_layered[name], rtol=1e-5, atol=0)
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_the_purview_plan_is_kept_until_a_module_or_parameter_is_replaced():
    model, x = _resnet(), torch.randn(2, 3, 32, 32)
    plan = plan_parameters(model)
    assert plan_parameters(model) is plan
    model.fc.weight = nn.Parameter(torch.randn_like(model.fc.weight))
    replanned = plan_parameters(model)
    assert replanned is not plan and plan_parameters(model) is replanned
    model.fc = nn.Linear(512, 4)
    assert plan_parameters(model).layers["fc"] is model.fc
    hooks = gradtrust.score(model, x, ["purview_final"])
    loop = gradtrust.score(model, x, ["purview_final"], purview_backend="loop")
    torch.testing.assert_close(hooks["purview_final"], loop["purview_final"], rtol=1e-4, atol=0)


def test_eval_batch_norm_function_is_once_differentiable():
    bn = _bn(nn.BatchNorm1d)
    x = torch.randn(3, 5, requires_grad=True)
    y = EvalBatchNorm.apply(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
    (grad,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(grad.sum(), x)
