"""The one per-sample engine: ``gradtrust.per_sample.sq_norms``, its registries, and its two callers
(``gradient_features`` and Purview's pass) on ViT, Swin and ConvNeXt, against per-sample autograd."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import convnext, swin_transformer, vision_transformer

import gradtrust
from gradtrust import per_sample
from gradtrust.detection import features as features_module
from gradtrust.errors import GradTrustError, ModelError, UnknownNameError
from gradtrust.nn import cache
from gradtrust.nn.state import scoring_state
from gradtrust.per_sample import registry
from gradtrust.per_sample.planner import PLANS, plan_parameters
from gradtrust.scores.options import ScoreOptions
from gradtrust.scores.passes import BatchPasses
from gradtrust.scores.spec import Pass


def _randomise(model: nn.Module) -> nn.Module:
    torch.manual_seed(3)
    for p in model.parameters():
        nn.init.normal_(p, std=0.3)
    return model.eval()


def _vit() -> nn.Module:
    return _randomise(vision_transformer.VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2,
                                                           hidden_dim=16, mlp_dim=16, num_classes=4))


def _swin() -> nn.Module:
    return _randomise(swin_transformer.SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[2, 1], num_heads=[2, 2],
                                                       window_size=[4, 4], num_classes=4))


def _convnext() -> nn.Module:
    return _randomise(convnext.ConvNeXt([convnext.CNBlockConfig(4, 8, 1), convnext.CNBlockConfig(8, None, 1)],
                                        num_classes=4))


MODELS = [("vit", _vit, (3, 3, 16, 16)), ("swin", _swin, (2, 3, 24, 24)), ("convnext", _convnext, (2, 3, 16, 16))]


def _bce(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(z, y.to(z.dtype), reduction="none").mean(1)


def _autograd(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """‖∂J_i/∂θ_j‖² by one autograd.grad per sample in float64 (an independent computation)."""
    m = copy.deepcopy(model).double().eval()
    params = [p.requires_grad_(True) for p in m.parameters()]
    rows = []
    for i in range(x.shape[0]):
        grads = torch.autograd.grad(_bce(m(x[i:i + 1].double()), y[i:i + 1]).sum(), params, allow_unused=True)
        rows.append(torch.stack([torch.zeros((), dtype=torch.float64) if g is None else g.square().sum()
                                 for g in grads]))
    return torch.stack(rows)


def _purview_norms(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, BatchPasses]:
    with scoring_state(model):
        passes = BatchPasses(model, x, ScoreOptions(), torch.arange(x.shape[0]),
                             frozenset({Pass.FORWARD, Pass.PARAMETER_GRADIENTS}))
        return passes.parameter_sq_norms, passes


@pytest.mark.parametrize("name, build, shape", MODELS, ids=[m[0] for m in MODELS])
def test_gradient_features_take_purviews_rules_and_equal_autograd(name, build, shape, monkeypatch):
    model = build()
    torch.manual_seed(4)
    x = torch.randn(*shape)
    results: list[per_sample.SqNorms] = []
    engine = features_module.sq_norms
    monkeypatch.setattr(features_module, "sq_norms", lambda *a, **k: results.append(engine(*a, **k)) or results[-1])
    features = gradtrust.gradient_features(model, x)
    assert [(r.backend, r.fallback) for r in results] == [("hooks", {})]  # no vmap over the model, no unit
    purview, passes = _purview_norms(model, x)
    assert passes.purview_backend_used == "hooks" and passes.purview_fallback == {}
    torch.testing.assert_close(features, purview, rtol=1e-5, atol=1e-12)  # one engine, one set of numbers
    expected = _autograd(model, x, torch.ones(x.shape[0], 4))
    torch.testing.assert_close(features, expected, rtol=2e-3, atol=1e-10)
    assert results[0].names == [n for n, _ in model.named_parameters()]


def test_sq_norms_backends_targets_and_a_subset_of_parameters():
    model = _vit()
    torch.manual_seed(5)
    x = torch.randn(3, 3, 16, 16)
    y = torch.eye(4)[[1, 3, 1]]
    expected = _autograd(model, x, y)
    for backend in ("hooks", "vmap", "loop"):
        got = per_sample.sq_norms(model, x, _bce, targets=y, backend=backend)
        assert got.backend == backend and got.values.dtype == torch.float32
        torch.testing.assert_close(got.values.double(), expected, rtol=2e-3, atol=1e-10)
    names = [n for n, _ in model.named_parameters()]
    wanted = ["class_token", "heads.head.weight", "encoder.layers.encoder_layer_0.self_attention.in_proj_weight"]
    for backend in ("hooks", "loop"):
        subset = per_sample.sq_norms(model, x, _bce, targets=y, params=wanted, backend=backend)
        assert subset.names == wanted
        torch.testing.assert_close(subset.values.double(), expected[:, [names.index(n) for n in wanted]],
                                   rtol=2e-3, atol=1e-10)
    with pytest.raises(UnknownNameError, match="backend"):
        per_sample.sq_norms(model, x, _bce, targets=y, backend="fast")
    with pytest.raises(UnknownNameError, match="heads.weight"):
        per_sample.sq_norms(model, x, _bce, targets=y, params=["heads.weight"])


def test_a_model_owning_a_parameter_itself_falls_back_or_refuses_hooks():
    class Biased(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 3)
            self.shift = nn.Parameter(torch.randn(3))

        def forward(self, x):
            return self.fc(x) + self.shift

    model = Biased()
    x = torch.randn(4, 5)
    with pytest.raises(ModelError, match="shift"):
        per_sample.sq_norms(model, x, lambda z: z.square().sum(1), backend="hooks")
    auto = per_sample.sq_norms(model, x, lambda z: z.square().sum(1))
    assert auto.backend == "vmap"
    loop = per_sample.sq_norms(model, x, lambda z: z.square().sum(1), backend="loop")
    torch.testing.assert_close(auto.values, loop.values)
    assert issubclass(per_sample.UnsupportedForHooks, GradTrustError)


class Scale(nn.Module):
    """``y = x ⊙ w`` over the last dimension: a layer no built-in kernel knows."""

    def __init__(self, features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(features))

    def forward(self, x):
        return x * self.weight


def test_a_registered_kernel_serves_its_module_type():
    model = nn.Sequential(nn.Linear(6, 5), Scale(5), nn.Tanh(), nn.Linear(5, 3)).eval()
    x = torch.randn(4, 6)
    loss = lambda z: z.square().sum(1)  # noqa: E731
    assert registry.kernel_for(model[1]) is None
    before = per_sample.sq_norms(model, x, loss)
    assert before.fallback == {"1": "vmap"}  # a unit: per-sample autograd of that submodule alone

    @per_sample.register_kernel(Scale)
    class ScaleKernel(per_sample.Kernel):
        def grads(self, module, a, g):  # ∂L_i/∂w = Σ_t g_{i,t} ⊙ a_{i,t}
            return {"weight": (g.float() * a.float()).reshape(a.shape[0], -1, a.shape[-1]).sum(1)}

    try:
        per_sample.clear(model)
        after = per_sample.sq_norms(model, x, loss)
        assert after.backend == "hooks" and after.fallback == {} and "1" in plan_parameters(model).layers
        torch.testing.assert_close(after.values, before.values, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(after.values, per_sample.sq_norms(model, x, loss, backend="loop").values,
                                   rtol=1e-5, atol=1e-7)
    finally:
        del registry._KERNELS[Scale]
        per_sample.clear(model)


def test_registrations_match_exact_classes_names_and_subclasses_keeping_forward():
    class SameConv(nn.Conv2d):
        pass

    class OwnForward(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    assert registry.supports_hooks(SameConv(2, 2, 3))  # registered with subclasses=True, keeps the forward
    assert not registry.supports_hooks(OwnForward(2, 2))  # exact registration: a forward of its own is unknown
    assert registry.supports_hooks(convnext.LayerNorm2d(4))  # registered by qualified name
    assert registry.rule_for(nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)).eval()) is not None
    assert registry.rule_for(nn.Sequential(nn.Linear(2, 2))) is None  # Sequential, but no pair


def test_clear_forgets_plans():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 36, 2)).eval()
    x = torch.randn(2, 3, 6, 6)
    per_sample.sq_norms(model, x, lambda z: z.square().sum(1))
    assert any(ns == PLANS for ns, _ in cache.cached_entries(model))
    first = plan_parameters(model)
    per_sample.clear()
    assert not cache.cached_entries(model)
    assert plan_parameters(model) is not first
