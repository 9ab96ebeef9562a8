"""Per-sample parameter gradients from (layer input, output gradient) against one autograd call per sample."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradtrust.scores import per_sample


def _autograd_per_sample(module: nn.Module, x: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """∂L_i/∂θ for L_i = Σ weights_i ⊙ module(x_i), one sample at a time."""
    out: dict[str, list[torch.Tensor]] = {}
    for i in range(x.shape[0]):
        params = dict(module.named_parameters())
        loss = (module(x[i:i + 1]) * weights[i:i + 1]).sum()
        grads = torch.autograd.grad(loss, list(params.values()))
        for name, grad in zip(params, grads, strict=False):
            out.setdefault(name, []).append(grad)
    return {name: torch.stack(g) for name, g in out.items()}


LAYERS = [
    ("linear", lambda: nn.Linear(6, 4), (5, 6)),
    ("linear_tokens", lambda: nn.Linear(6, 4), (5, 3, 6)),
    ("linear_no_bias", lambda: nn.Linear(6, 4, bias=False), (5, 2, 2, 6)),
    ("conv1d", lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1), (3, 4, 11)),
    ("conv2d_groups_dilation", lambda: nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2), (3, 4, 9, 9)),
    ("conv2d_ghost_norm", lambda: nn.Conv2d(8, 16, 3, padding=1, bias=False), (3, 8, 3, 3)),  # T² (K+O) < T·K·O
    ("conv2d_materialised", lambda: nn.Conv2d(2, 3, 3), (3, 2, 12, 12)),
    ("conv2d_depthwise", lambda: nn.Conv2d(4, 4, 3, groups=4, bias=False), (3, 4, 7, 7)),
    ("conv3d", lambda: nn.Conv3d(2, 3, (2, 3, 3), stride=(1, 2, 2)), (2, 2, 4, 7, 7)),
    ("batchnorm1d_2d_input", lambda: nn.BatchNorm1d(5), (4, 5)),
    ("batchnorm1d_3d_input", lambda: nn.BatchNorm1d(5), (4, 5, 6)),
    ("batchnorm2d", lambda: nn.BatchNorm2d(3), (4, 3, 5, 5)),
    ("layernorm", lambda: nn.LayerNorm(6), (4, 3, 6)),
    ("layernorm_2d_shape", lambda: nn.LayerNorm((3, 6)), (4, 3, 6)),
    ("groupnorm", lambda: nn.GroupNorm(2, 4), (3, 4, 5, 5)),
]


def _make(factory):
    module = factory().eval()
    for p in module.parameters():
        nn.init.normal_(p)
    if hasattr(module, "running_mean") and module.running_mean is not None:
        module.running_mean.normal_()
        module.running_var.uniform_(0.5, 2.0)
    return module


@pytest.mark.parametrize("name, factory, shape", LAYERS, ids=[layer[0] for layer in LAYERS])
def test_parameter_grads_match_autograd(name, factory, shape):
    module = _make(factory)
    assert per_sample.supports_hooks(module)
    x = torch.randn(*shape)
    with torch.no_grad():
        g = torch.randn_like(module(x))
    expected = _autograd_per_sample(module, x, g)
    got = per_sample.parameter_grads(module, x, g)
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)
    norms = per_sample.parameter_sq_norms(module, x, g, chunk_bytes=64)  # tiny chunks: exercises the blocks
    for key in expected:
        torch.testing.assert_close(norms[key], expected[key].flatten(1).square().sum(1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("strategy", ["grouped", "per_sample", "unfold"])
def test_both_convolution_strategies_agree(strategy):
    """The grouped kernel and unfold+bmm (GPUs) and the per-sample loop (CPUs) give the same gradients."""
    module = _make(lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2 if strategy != "unfold" else 1))
    x = torch.randn(3, 4, 8, 8)
    with torch.no_grad():
        g = torch.randn_like(module(x))
    expected = _autograd_per_sample(module, x, g)["weight"]
    torch.testing.assert_close(per_sample.conv_weight_grads(module, x, g, strategy=strategy), expected,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("conv", [dict(kernel_size=3, padding=1), dict(kernel_size=(3, 5), padding=(1, 2), stride=2),
                                  dict(kernel_size=3, dilation=2, padding=2, stride=(2, 1)), dict(kernel_size=1)])
def test_unfolded_patches_are_those_of_torch_unfold(conv):
    module = nn.Conv2d(4, 5, **conv)
    a = torch.randn(3, 4, 13, 11)
    expected = torch.nn.functional.unfold(a, module.kernel_size, dilation=module.dilation, padding=module.padding,
                                          stride=module.stride)
    assert torch.equal(per_sample.unfold_patches(module, a), expected)


@pytest.mark.parametrize("tokens, features", [(1, 8), (3, 64), (40, 4)])
def test_linear_norm_shortcuts_match_materialised_gradients(tokens, features):
    """‖g‖²‖a‖² for one token, the ghost norm when T² < out·in, materialised otherwise: all equal."""
    a = torch.randn(4, tokens, features)
    g = torch.randn(4, tokens, 5)
    expected = per_sample.linear_weight_grads(a, g).square().sum((1, 2))
    torch.testing.assert_close(per_sample.linear_weight_sq_norms(a, g), expected, rtol=1e-4, atol=1e-4)


def test_unsupported_layers_are_refused_by_the_hook_path():
    assert not per_sample.supports_hooks(nn.Conv2d(3, 3, 3, padding="same"))
    assert not per_sample.supports_hooks(nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"))
    assert not per_sample.supports_hooks(nn.BatchNorm2d(3).train())
    assert not per_sample.supports_hooks(nn.BatchNorm2d(3, track_running_stats=False).eval())
    assert not per_sample.supports_hooks(nn.MultiheadAttention(4, 2))
    model = nn.Sequential(nn.Linear(3, 3), nn.PReLU())
    with pytest.raises(per_sample.UnsupportedForHooks, match="1.weight"):
        per_sample.hook_layers_for_all_parameters(model)


def test_a_layer_used_twice_falls_back_to_an_exact_path():
    import gradtrust

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = nn.Linear(4, 4)
            self.out = nn.Linear(4, 3)

        def forward(self, x):
            return self.out(torch.relu(self.shared(torch.relu(self.shared(x)))))

    model, x = Twice(), torch.randn(3, 4)
    auto = gradtrust.score(model, x, ["purview_final", "purview_initial"])
    loop = gradtrust.score(model, x, ["purview_final", "purview_initial"], purview_backend="loop")
    assert auto.info["purview_backend"] != "hooks"
    for method in auto:
        torch.testing.assert_close(auto[method], loop[method], rtol=1e-4, atol=1e-10)
