"""Per-sample parameter gradients from (layer input, output gradient) against one autograd call per sample."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradtrust.per_sample import registry as per_sample
from gradtrust.per_sample.conv_strategy import conv_weight_grads, unfold_patches
from gradtrust.per_sample.kernels.convolution import conv_weight_sq_norms
from gradtrust.per_sample.kernels.linear import linear_weight_grads, linear_weight_sq_norms
from gradtrust.per_sample.planner import plan_parameters


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
    ("conv2d_pointwise_one_position", lambda: nn.Conv2d(6, 4, 1), (3, 6, 1, 1)),  # squeeze-excitation: ‖g‖²‖a‖²
    ("conv2d_pointwise_strided_to_one", lambda: nn.Conv2d(6, 4, 1, stride=3, bias=False), (3, 6, 3, 3)),
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
    torch.testing.assert_close(conv_weight_grads(module, x, g, strategy=strategy), expected,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("conv", [dict(kernel_size=3, padding=1), dict(kernel_size=(3, 5), padding=(1, 2), stride=2),
                                  dict(kernel_size=3, dilation=2, padding=2, stride=(2, 1)), dict(kernel_size=1)])
def test_unfolded_patches_are_those_of_torch_unfold(conv):
    module = nn.Conv2d(4, 5, **conv)
    a = torch.randn(3, 4, 13, 11)
    expected = torch.nn.functional.unfold(a, module.kernel_size, dilation=module.dilation, padding=module.padding,
                                          stride=module.stride)
    assert torch.equal(unfold_patches(module, a), expected)


@pytest.mark.parametrize("tokens, features", [(1, 8), (3, 64), (40, 4)])
def test_linear_norm_shortcuts_match_materialised_gradients(tokens, features):
    """‖g‖²‖a‖² for one token, the ghost norm when T² < out·in, materialised otherwise: all equal."""
    a = torch.randn(4, tokens, features)
    g = torch.randn(4, tokens, 5)
    expected = linear_weight_grads(a, g).square().sum((1, 2))
    torch.testing.assert_close(linear_weight_sq_norms(a, g), expected, rtol=1e-4, atol=1e-4)


def test_unsupported_layers_are_refused_by_the_hook_path():
    assert not per_sample.supports_hooks(nn.Conv2d(3, 3, 3, padding="same"))
    assert not per_sample.supports_hooks(nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"))
    assert not per_sample.supports_hooks(nn.BatchNorm2d(3).train())
    assert not per_sample.supports_hooks(nn.BatchNorm2d(3, track_running_stats=False).eval())
    assert not per_sample.supports_hooks(nn.MultiheadAttention(4, 2))
    assert not per_sample.supports_hooks(nn.PReLU())
    model = nn.Sequential(nn.Linear(3, 3), nn.PReLU())
    plan = plan_parameters(model)  # no kernel for PReLU: its module is a per-sample-autograd unit
    assert set(plan.layers) == {"0"} and set(plan.units) == {"1"} and plan.columns["1.weight"] == ("1", "weight")
    bare = nn.Sequential(nn.Linear(3, 3))
    bare.register_parameter("scale", nn.Parameter(torch.ones(3)))  # owned by the model itself: no unit below it
    with pytest.raises(per_sample.UnsupportedForHooks, match="scale"):
        plan_parameters(bare)


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


CONVOLUTIONS = [  # (name, factory, input shape): stride/padding/dilation/groups combinations, with and without bias
    ("depthwise_stride2_pad", lambda: nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4), (3, 4, 9, 8)),
    ("depthwise_7x7", lambda: nn.Conv2d(3, 3, 7, padding=3, groups=3, bias=False), (2, 3, 8, 8)),
    ("depthwise_multiplier_dilation", lambda: nn.Conv2d(3, 6, 3, padding=2, dilation=2, groups=3), (2, 3, 7, 7)),
    ("depthwise_stride3_dilation2", lambda: nn.Conv2d(2, 2, (3, 2), stride=(3, 2), padding=(2, 1), dilation=2,
                                                      groups=2), (2, 2, 11, 9)),
    ("grouped_stride2", lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), (3, 4, 8, 8)),
    ("pointwise_stride2", lambda: nn.Conv2d(4, 5, 1, stride=2, bias=False), (3, 4, 7, 7)),
    ("conv1d_depthwise_strided", lambda: nn.Conv1d(3, 3, 5, stride=2, padding=2, dilation=2, groups=3), (2, 3, 13)),
    ("conv3d_depthwise_strided", lambda: nn.Conv3d(2, 2, 3, stride=(1, 2, 2), padding=1, groups=2), (2, 2, 3, 6, 6)),
    ("conv2d_dense", lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=2), (2, 3, 9, 9)),
    ("conv3d_dense_strided", lambda: nn.Conv3d(2, 3, (2, 3, 3), stride=(1, 2, 3), padding=(1, 0, 2), dilation=(2, 1, 1)),
     (2, 2, 4, 7, 8)),
]


def _conv_case(factory, shape):
    torch.manual_seed(0)
    module = _make(factory)
    x = torch.randn(*shape)
    with torch.no_grad():
        g = torch.randn_like(module(x))
    return module, x, g, _autograd_per_sample(module, x, g)


@pytest.mark.parametrize("name, factory, shape", CONVOLUTIONS, ids=[c[0] for c in CONVOLUTIONS])
def test_correlation_and_shift_kernels_match_autograd(name, factory, shape):
    """The depthwise-correlation and the per-offset product forms (polyphase for strides) give the per-sample
    weight gradients."""
    from gradtrust.per_sample.conv_correlate import correlate_weight_grads
    from gradtrust.per_sample.conv_shift import shift_weight_grads

    module, x, g, expected = _conv_case(factory, shape)
    torch.testing.assert_close(correlate_weight_grads(module, x, g), expected["weight"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(shift_weight_grads(module, x, g), expected["weight"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, factory, shape", CONVOLUTIONS, ids=[c[0] for c in CONVOLUTIONS])
def test_every_convolution_strategy_gives_the_autograd_norms(name, factory, shape):
    """Each strategy that applies (including the Gram form and tiny memory blocks) and the measured choice."""
    from gradtrust.per_sample import conv_strategy

    module, x, g, expected = _conv_case(factory, shape)
    want = expected["weight"].flatten(1).square().sum(1)
    tried = []
    for chunk_bytes in (64, per_sample.DEFAULT_CHUNK_BYTES):
        for strategy in conv_strategy.STRATEGIES:
            if conv_strategy.applies(strategy, module, x, g, chunk_bytes):
                tried.append(strategy)
                got = conv_strategy.sq_norms(strategy, module, x, g, chunk_bytes)
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=lambda m, s=strategy: f"{s}: {m}")
    assert {"grouped", "per_sample"} <= set(tried)
    norms = per_sample.parameter_sq_norms(module, x, g)  # CPU: the rule's choice
    torch.testing.assert_close(norms["weight"], want, rtol=1e-4, atol=1e-5)
    chosen = conv_strategy.choose(module, x, g, per_sample.DEFAULT_CHUNK_BYTES)
    assert chosen in conv_strategy.candidates(module, x, g, per_sample.DEFAULT_CHUNK_BYTES)
    assert torch.equal(per_sample.parameter_sq_norms(module, x, g)["weight"], norms["weight"])
    if module.bias is not None:
        torch.testing.assert_close(norms["bias"], expected["bias"].flatten(1).square().sum(1), rtol=1e-4, atol=1e-5)


def test_strategy_choice_is_a_rule_without_timing_and_can_be_forced(monkeypatch):
    """The automatic choice is a function of the shapes: one strategy runs (no candidates are tried), no clock
    is read, and the same inputs give the same bits; a forced strategy that does not apply leaves the layer
    to the rule, never to a timed choice."""
    import time

    from gradtrust.errors import InputError, UnknownNameError
    from gradtrust.per_sample import conv_strategy

    module, x, g, expected = _conv_case(lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4), (2, 4, 6, 6))
    want = expected["weight"].flatten(1).square().sum(1)
    calls: list[str] = []
    real = conv_strategy.sq_norms
    monkeypatch.setattr(conv_strategy, "sq_norms", lambda s, *args: calls.append(s) or real(s, *args))
    for clock in ("perf_counter", "perf_counter_ns", "monotonic", "time", "process_time"):
        monkeypatch.setattr(time, clock, lambda: pytest.fail("the choice read a clock"))
    first = conv_weight_sq_norms(module, x, g, per_sample.DEFAULT_CHUNK_BYTES)
    rule = conv_strategy.choose(module, x, g, per_sample.DEFAULT_CHUNK_BYTES)
    assert calls == [rule] == ["correlate"]  # depthwise, stride 1
    again = conv_weight_sq_norms(module, x, g, per_sample.DEFAULT_CHUNK_BYTES)
    assert calls == [rule, rule] and torch.equal(first, again)
    got = conv_weight_sq_norms(module, x, g, per_sample.DEFAULT_CHUNK_BYTES, strategy="grouped")
    assert calls[-1] == "grouped"
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # a forced strategy that does not apply (unfold needs one group) leaves that layer to the rule
    conv_weight_sq_norms(module, x, g, per_sample.DEFAULT_CHUNK_BYTES, strategy="unfold")
    assert calls[-1] == rule
    with pytest.raises(InputError, match="does not apply"):
        conv_strategy.sq_norms("unfold", module, x, g, per_sample.DEFAULT_CHUNK_BYTES)
    with pytest.raises(UnknownNameError, match="known"):
        conv_strategy.applies("fft", module, x, g, per_sample.DEFAULT_CHUNK_BYTES)


def test_conv_strategy_option_reaches_purview():
    import gradtrust

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=4),
                          nn.ReLU(), nn.Conv2d(4, 3, 1), nn.Flatten(), nn.Linear(3 * 4 * 4, 3)).eval()
    x = torch.randn(3, 2, 8, 8)
    loop = gradtrust.score(model, x, ["purview_final"], purview_backend="loop")["purview_final"]
    for strategy in ("auto", "correlate", "per_sample"):
        got = gradtrust.score(model, x, ["purview_final"], conv_strategy=strategy)
        assert got.info["purview_backend"] == "hooks"
        torch.testing.assert_close(got["purview_final"], loop, rtol=1e-4, atol=1e-10)
    with pytest.raises(ValueError, match="conv_strategy must be one of"):
        gradtrust.score(model, x, ["purview_final"], conv_strategy="fft")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU machine)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name, factory, shape", LAYERS + CONVOLUTIONS, ids=[c[0] for c in LAYERS + CONVOLUTIONS])
@pytest.mark.parametrize("tf32", [False, True])
def test_kernels_on_cuda_match_autograd(name, factory, shape, dtype, tf32, monkeypatch):
    """Every layer kernel, and every convolution strategy that applies, on a GPU with the layer in float32,
    float16 and bfloat16, against per-sample autograd in float64 on the same (rounded) inputs."""
    from gradtrust.per_sample import conv_strategy

    torch.manual_seed(0)
    module = _make(factory).cuda().to(dtype)
    x = torch.randn(*shape, device="cuda").to(dtype)
    with torch.no_grad():
        g = torch.randn_like(module(x))
    reference = _autograd_per_sample(_make_like(module), x.cpu().double(), g.cpu().double())
    want = {k: v.flatten(1).square().sum(1).float().cuda() for k, v in reference.items()}
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
    # TF32 products where cuDNN uses TF32 (docs/performance.md); float32 otherwise
    tol = dict(rtol=5e-3, atol=1e-5) if tf32 else dict(rtol=1e-4, atol=1e-6)
    norms = per_sample.parameter_sq_norms(module, x, g)
    for key in want:
        torch.testing.assert_close(norms[key], want[key], **tol, msg=lambda m, k=key: f"{k}: {m}")
    if isinstance(module, torch.nn.modules.conv._ConvNd):
        for strategy in conv_strategy.STRATEGIES:
            if conv_strategy.applies(strategy, module, x, g, per_sample.DEFAULT_CHUNK_BYTES):
                got = conv_strategy.sq_norms(strategy, module, x, g, per_sample.DEFAULT_CHUNK_BYTES)
                torch.testing.assert_close(got, want["weight"], **tol, msg=lambda m, s=strategy: f"{s}: {m}")


def _make_like(module: nn.Module) -> nn.Module:
    """A float64 CPU copy of ``module`` (same parameters and buffers)."""
    import copy

    return copy.deepcopy(module).cpu().double()


@pytest.mark.parametrize("layer, batch, size, expected", [
    (nn.Conv2d(512, 512, 3, padding=1), 32, 7, "gram"),            # resnet18 layer4: few positions
    (nn.Conv2d(256, 256, 3, padding=1), 32, 14, "gram"),           # layer3: the Gram form is under the work
    (nn.Conv2d(256, 512, 1, stride=2), 32, 14, "gram"),            # layer4's downsample
    (nn.Conv2d(64, 256, 1), 4, 56, "matmul"),                      # resnet50's pointwise, many positions
    (nn.Conv2d(192, 192, 7, padding=3, groups=192), 8, 28, "correlate"),  # ConvNeXt's depthwise 7×7
    (nn.Conv2d(96, 96, 3, stride=2, padding=1, groups=96), 8, 28, "grouped"),  # depthwise, stride 2
    (nn.Conv2d(128, 128, 3, padding=1, groups=32), 4, 28, "grouped"),  # ResNeXt's grouped 3×3
    (nn.Conv2d(128, 128, 3, padding=1), 32, 28, "grouped"),        # resnet18 layer2
    (nn.Conv2d(576, 96, 1), 8, 7, "matmul"),                       # mobilenet's pointwise: the Gram form loses
    (nn.Conv2d(64, 64, 3, padding=1), 128, 8, "grouped"),          # CIFAR ResNet-20: small layers
    (nn.Conv2d(3, 64, 7, stride=2, padding=3), 32, 224, "per_sample"),  # a stem: 3 input channels
    (nn.Conv2d(3, 16, 3, padding=1), 128, 32, "grouped"),          # a CIFAR stem: few positions
])
def test_the_rule_chooses_by_shape(layer, batch, size, expected):
    """What :func:`conv_strategy.choose` picks for the layers its thresholds were drawn from (shapes only:
    meta tensors, nothing computed)."""
    from gradtrust.per_sample import conv_strategy

    a = torch.empty(batch, layer.in_channels, size, size, device="meta")
    with torch.device("meta"):
        g = torch.empty(batch, layer.out_channels, *layer(a[:1]).shape[2:])
    assert conv_strategy.choose(layer, a, g, per_sample.DEFAULT_CHUNK_BYTES) == expected
