"""Purview's per-parameter owners (layers, rules, per-sample-autograd units) against a per-sample autograd loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import convnext, vision_transformer
from torchvision.models.video.resnet import Conv3DSimple

import gradtrust
from gradtrust.nn.state import scoring_state
from gradtrust.per_sample import layers as per_sample
from gradtrust.per_sample import registry
from gradtrust.scores.options import ScoreOptions
from gradtrust.scores.passes import BatchPasses, _purview_loss
from gradtrust.scores.spec import Pass


def _hook_norms(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, BatchPasses]:
    """(B, J) norms by the hook path (it must not step aside) and the passes object that computed them."""
    with scoring_state(model):
        passes = BatchPasses(model, x, ScoreOptions(purview_backend="hooks"), torch.arange(x.shape[0]),
                             frozenset({Pass.FORWARD, Pass.PARAMETER_GRADIENTS}))
        norms = passes.parameter_sq_norms
    assert passes.purview_backend_used == "hooks"
    return norms, passes


def _loop_norms(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with scoring_state(model):
        return per_sample.sq_norms_by_loop(model, x, _purview_loss).double()


def _randomise(model: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    for p in model.parameters():
        nn.init.normal_(p, std=0.3)
    return model.eval()


def test_layernorm2d_and_conv3d_subclass_match_autograd():
    for module, shape in ((convnext.LayerNorm2d(4, eps=1e-6), (3, 4, 5, 6)),
                          (Conv3DSimple(2, 3, stride=1, padding=1), (2, 2, 3, 5, 5))):
        module = _randomise(module)
        assert registry.supports_hooks(module)
        x = torch.randn(*shape)
        g = torch.randn_like(module(x))
        expected = {}
        for i in range(x.shape[0]):
            grads = torch.autograd.grad((module(x[i:i + 1]) * g[i:i + 1]).sum(), list(module.parameters()))
            for (name, _), grad in zip(module.named_parameters(), grads, strict=True):
                expected.setdefault(name, []).append(grad.square().sum())
        got = registry.parameter_sq_norms(module, x, g)
        for name, values in expected.items():
            torch.testing.assert_close(got[name], torch.stack(values), rtol=1e-4, atol=1e-6)


def _vit() -> nn.Module:
    return vision_transformer.VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=8,
                                                mlp_dim=16, num_classes=3)


class _SeqFirstAttention(nn.Module):
    """nn.MultiheadAttention with batch_first=False, input (S, B, E)."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(6, 2)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        t = x.transpose(0, 1)
        y, _ = self.attn(t, t, t, need_weights=False)
        return self.head(y.mean(0))


MODELS = [
    ("vit", _vit, (3, 3, 16, 16)),
    ("mha_sequence_first", _SeqFirstAttention, (3, 4, 6)),
    ("convnext", lambda: convnext.ConvNeXt([convnext.CNBlockConfig(4, 8, 1), convnext.CNBlockConfig(8, None, 1)],
                                           num_classes=3), (2, 3, 16, 16)),
]


@pytest.mark.parametrize("name, factory, shape", MODELS, ids=[m[0] for m in MODELS])
def test_rules_give_exact_norms_without_fallback(name, factory, shape):
    model = _randomise(factory())
    x = torch.randn(*shape)
    norms, passes = _hook_norms(model, x)
    assert passes.purview_fallback == {}  # everything in closed form: no submodule through per-sample autograd
    torch.testing.assert_close(norms, _loop_norms(model, x), rtol=1e-4, atol=1e-9)


class _Gated(nn.Module):
    """A parameter used outside any known layer (``linear(x) ⊙ σ(gate)``): no layer or rule covers ``gate``."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(6, 6)
        self.gate = nn.Parameter(torch.randn(6))

    def forward(self, x):
        return self.inner(x) * torch.sigmoid(self.gate)


def test_uncovered_submodule_alone_goes_through_autograd_and_is_reported():
    """A submodule with a parameter nothing covers is a per-sample-autograd unit (the whole submodule, its
    nn.Linear included); the rest of the model stays on the hooks, and the result names the units."""
    model = _randomise(nn.Sequential(nn.Linear(4, 6), _Gated(), nn.ReLU(), _Gated(), nn.Linear(6, 3)))
    x = torch.randn(3, 4)
    norms, passes = _hook_norms(model, x)
    assert set(passes.purview_fallback) == {"1", "3"}
    torch.testing.assert_close(norms, _loop_norms(model, x), rtol=1e-4, atol=1e-9)
    result = gradtrust.score(model, x, ["purview_final"])
    assert result.info["purview_backend"] == "hooks"
    assert set(result.info["purview_fallback"]) == {"1", "3"}


def test_a_parameter_of_the_model_itself_leaves_the_hook_path():
    class Bias(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.shift = nn.Parameter(torch.randn(3))

        def forward(self, x):
            return self.fc(x) + self.shift

    with pytest.raises(gradtrust.errors.ModelError, match="shift"):
        gradtrust.score(Bias(), torch.randn(2, 4), ["purview_final"], purview_backend="hooks")


class _MaskedAttention(nn.Module):
    """Self-attention with a mask: not the closed-form case, so the attention alone becomes a unit."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 6)
        self.attn = nn.MultiheadAttention(6, 2, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = self.proj(x)
        mask = torch.triu(torch.ones(x.shape[1], x.shape[1], dtype=torch.bool), diagonal=1)
        y, _ = self.attn(h, h, h, attn_mask=mask, need_weights=False)
        return self.head(y.mean(1))


def test_attention_outside_the_closed_form_becomes_a_unit():
    model = _randomise(_MaskedAttention())
    x = torch.randn(3, 4, 6)
    norms, passes = _hook_norms(model, x)
    assert set(passes.purview_fallback) == {"attn"}
    torch.testing.assert_close(norms, _loop_norms(model, x), rtol=1e-4, atol=1e-9)


def test_attention_called_twice_leaves_the_hook_path_exactly():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(6, 2, batch_first=True)
            self.head = nn.Linear(6, 3)

        def forward(self, x):
            y, _ = self.attn(x, x, x, need_weights=False)
            z, _ = self.attn(y, y, y, need_weights=False)
            return self.head(z.mean(1))

    model, x = _randomise(Twice()), torch.randn(2, 4, 6)
    result = gradtrust.score(model, x, ["purview_final"])
    assert result.info["purview_backend"] != "hooks"
    expected = gradtrust.score(model, x, ["purview_final"], purview_backend="loop")
    torch.testing.assert_close(result["purview_final"], expected["purview_final"], rtol=1e-4, atol=1e-9)
