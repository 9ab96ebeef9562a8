"""Purview's fused norms of a convolution followed by eval-mode BatchNorm (``per_sample/rules/conv_batch_norm.py``)
against per-sample autograd: the pair's rule, the fused formula alone, and where the rule steps aside."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradtrust
from gradtrust.nn.state import scoring_state
from gradtrust.per_sample import conv_strategy
from gradtrust.per_sample import layers as per_sample
from gradtrust.per_sample import planner as owners
from gradtrust.per_sample.rules import conv_batch_norm
from gradtrust.scores.options import ScoreOptions
from gradtrust.scores.passes import BatchPasses, _purview_loss
from gradtrust.scores.spec import Pass


def _randomise_batch_norms(model: nn.Module) -> nn.Module:
    """Statistics and affine parameters far from their defaults, so that every term of the formula counts."""
    torch.manual_seed(7)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.3, 3.0)
            nn.init.normal_(m.weight, 1.0, 0.5)
            nn.init.normal_(m.bias, 0.0, 0.5)
    return model.eval()


def _net2d(bias: bool = False) -> nn.Module:
    """Pairs at the input (the recorded graph starts at the first BatchNorm), after an activation, grouped,
    depthwise with stride 2, a 1×1 pair inside a nested Sequential, and a pair whose BatchNorm is not next."""
    torch.manual_seed(0)
    return _randomise_batch_norms(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=bias), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=bias), nn.BatchNorm2d(8), nn.Hardswish(),
        nn.Conv2d(8, 12, 3, padding=1, groups=4, bias=bias), nn.BatchNorm2d(12), nn.ReLU(),
        nn.Sequential(nn.Conv2d(12, 6, 1, bias=bias), nn.BatchNorm2d(6)),
        nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(6),  # not a pair: the ReLU is between
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5)))


def _net(dims: int) -> nn.Module:
    conv, bn = {1: (nn.Conv1d, nn.BatchNorm1d), 3: (nn.Conv3d, nn.BatchNorm3d)}[dims]
    pool = {1: nn.AdaptiveAvgPool1d, 3: nn.AdaptiveAvgPool3d}[dims]
    torch.manual_seed(0)
    return _randomise_batch_norms(nn.Sequential(conv(3, 6, 3, padding=1), bn(6), nn.ReLU(),
                                                conv(6, 6, 3, stride=2, padding=1, groups=6, bias=False), bn(6),
                                                pool(1), nn.Flatten(), nn.Linear(6, 4)))


def _hook_norms(model: nn.Module, x: torch.Tensor, **options) -> tuple[torch.Tensor, BatchPasses]:
    with scoring_state(model):
        passes = BatchPasses(model, x, ScoreOptions(purview_backend="hooks", **options), torch.arange(x.shape[0]),
                             frozenset({Pass.FORWARD, Pass.PARAMETER_GRADIENTS}))
        norms = passes.parameter_sq_norms
    assert passes.purview_backend_used == "hooks" and passes.purview_fallback == {}
    return norms, passes


def _loop_norms(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with scoring_state(model):
        return per_sample.sq_norms_by_loop(model, x, _purview_loss).double()


def _pairs_planned(model: nn.Module) -> int:
    plan = owners.plan_parameters(model)
    return sum(len(rule.pairs) for _, rule in plan.rules.values() if isinstance(rule, conv_batch_norm.ConvBatchNorm))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "conv-bias"])
def test_pairs_in_sequentials_are_exact(dtype, bias):
    model = _net2d(bias).to(dtype)
    assert _pairs_planned(model) == 4  # three in the outer Sequential, one in the nested one
    x = torch.randn(3, 3, 12, 12, dtype=dtype)
    norms, _ = _hook_norms(model, x)
    expected = _loop_norms(model, x)
    assert (expected > 0).all()
    torch.testing.assert_close(norms, expected, rtol=1e-4, atol=0)


@pytest.mark.parametrize("dims", [1, 3])
def test_pairs_of_1d_and_3d_layers_are_exact(dims):
    model = _net(dims)
    x = torch.randn(2, 3, *([9] * dims))
    norms, _ = _hook_norms(model, x)
    torch.testing.assert_close(norms, _loop_norms(model, x), rtol=1e-4, atol=0)


@pytest.mark.parametrize("strategy", ["grouped", "per_sample", "shift", "correlate"])
def test_fused_formula_against_autograd_for_every_strategy(strategy):
    """One pair alone: the conv's and BatchNorm's per-sample gradients by autograd, sample by sample."""
    torch.manual_seed(3)
    groups = 4 if strategy == "correlate" else 2
    conv = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=groups, bias=True)
    bn = _randomise_batch_norms(nn.Sequential(nn.BatchNorm2d(8)))[0]
    a = torch.randn(3, 8, 10, 10)
    g = torch.randn(3, 8, 5, 5)
    assert conv_strategy.applies(strategy, conv, a, g, 2**20, conv_batch_norm._fused_reduction(conv))
    assert not conv_strategy.applies("gram", conv, a, g, 2**20, conv_batch_norm._fused_reduction(conv))
    fused = conv_batch_norm.fused_sq_norms(conv, bn, a, g, 2**20, strategy)
    for i in range(3):
        y = bn(conv(a[i:i + 1]))
        grads = torch.autograd.grad(y, [conv.weight, conv.bias, bn.weight, bn.bias], g[i:i + 1])
        expected = [gr.square().sum() for gr in grads]
        got = [fused["conv"]["weight"][i], fused["conv"]["bias"][i], fused["bn"]["weight"][i], fused["bn"]["bias"][i]]
        torch.testing.assert_close(torch.stack(got), torch.stack(expected), rtol=1e-4, atol=0)


def test_unfold_strategy_on_an_ungrouped_pair():  # unfold applies to one group only
    torch.manual_seed(4)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    bn = _randomise_batch_norms(nn.Sequential(nn.BatchNorm2d(6)))[0]
    a, g = torch.randn(2, 4, 7, 7), torch.randn(2, 6, 7, 7)
    fused = conv_batch_norm.fused_sq_norms(conv, bn, a, g, 2**20, "unfold")
    for i in range(2):
        grads = torch.autograd.grad(bn(conv(a[i:i + 1])), [conv.weight, bn.weight, bn.bias], g[i:i + 1])
        torch.testing.assert_close(torch.stack([fused["conv"]["weight"][i], fused["bn"]["weight"][i],
                                                fused["bn"]["bias"][i]]),
                                   torch.stack([gr.square().sum() for gr in grads]), rtol=1e-4, atol=0)


def test_gram_shaped_pairs_and_a_forced_gram_take_the_two_layer_way(monkeypatch):
    """Few positions and many channels (the Gram form's ground), and a forced ``gram``: the rule computes each
    layer as a lone hooked layer (needing the BatchNorm's input), still exactly."""
    torch.manual_seed(5)
    model = _randomise_batch_norms(nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64),
                                                 nn.Flatten(), nn.Linear(64 * 4, 3)))
    x = torch.randn(2, 64, 2, 2)
    fused_calls: list[int] = []
    original = conv_batch_norm.fused_sq_norms
    monkeypatch.setattr(conv_batch_norm, "fused_sq_norms", lambda *a, **k: fused_calls.append(1) or original(*a, **k))
    expected = _loop_norms(model, x)
    norms, _ = _hook_norms(model, x)
    torch.testing.assert_close(norms, expected, rtol=1e-4, atol=0)
    assert fused_calls == []  # T = 4 positions, 576 inputs and 64 outputs per position: Gram
    model2 = _net2d()
    x2 = torch.randn(2, 3, 12, 12)
    norms2, _ = _hook_norms(model2, x2, conv_strategy="gram")
    torch.testing.assert_close(norms2, _loop_norms(model2, x2), rtol=1e-4, atol=0)
    assert fused_calls == []
    _hook_norms(model2, x2)
    assert len(fused_calls) == 4  # every pair of _net2d takes the fused way by default


def test_a_sequential_with_its_own_forward_gets_no_rule():
    class Reordered(nn.Sequential):
        def forward(self, x):
            return self[1](self[0](x)) + self[0](x)  # the convolution's output is used twice

    torch.manual_seed(6)
    inner = Reordered(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
    model = _randomise_batch_norms(nn.Sequential(inner, nn.Flatten(), nn.Linear(4 * 25, 2)))
    assert conv_batch_norm.conv_batch_norm_rule(inner) is None
    x = torch.randn(2, 3, 5, 5)
    result = gradtrust.score(model, x, ["purview_initial", "purview_final"])
    expected = gradtrust.score(model, x, ["purview_initial", "purview_final"], purview_backend="loop")
    for name in ("purview_initial", "purview_final"):
        torch.testing.assert_close(result[name], expected[name], rtol=1e-4, atol=0)


def test_a_hook_that_replaces_the_convolution_output_takes_the_pair_off_the_hook_path():
    model = _net2d()
    model[0].register_forward_hook(lambda module, args, output: output * 2.0)
    x = torch.randn(2, 3, 12, 12)
    with scoring_state(model):
        passes = BatchPasses(model, x, ScoreOptions(), torch.arange(2),
                             frozenset({Pass.FORWARD, Pass.PARAMETER_GRADIENTS}))
        norms = passes.parameter_sq_norms
    assert passes.purview_backend_used != "hooks"
    torch.testing.assert_close(norms, _loop_norms(model, x), rtol=1e-4, atol=0)


def test_mobilenet_pairs_and_scores_equal_the_loop():
    from torchvision.models import mobilenet_v3_small

    torch.manual_seed(8)
    model = _randomise_batch_norms(mobilenet_v3_small(num_classes=7))
    assert _pairs_planned(model) == 34  # every Conv2dNormActivation
    x = torch.randn(2, 3, 48, 48)
    result = gradtrust.score(model, x, ["purview_initial", "purview_final"])
    expected = gradtrust.score(model, x, ["purview_initial", "purview_final"], purview_backend="loop")
    assert result.info["purview_backend"] == "hooks"
    for name in ("purview_initial", "purview_final"):
        torch.testing.assert_close(result[name], expected[name], rtol=1e-4, atol=0)


def test_the_plan_follows_a_change_of_mode():
    model = _net2d()
    first = owners.plan_parameters(model)
    assert owners.plan_parameters(model) is first
    model[1].train()
    second = owners.plan_parameters(model)
    assert second is not first and _pairs_planned(model) == 3  # the training-mode BatchNorm pairs no more
    model.eval()
    assert _pairs_planned(model) == 4


def test_odins_backward_through_the_same_graph_computes_no_norms(monkeypatch):
    """ODIN's input gradient runs a backward through Purview's recorded graph: the rules' hooks fire there too,
    and must leave the norms to Purview's own backward (once per pair, not twice)."""
    model = _net2d()
    x = torch.randn(2, 3, 12, 12)
    calls: list[int] = []
    original = conv_batch_norm.fused_sq_norms
    monkeypatch.setattr(conv_batch_norm, "fused_sq_norms", lambda *a, **k: calls.append(1) or original(*a, **k))
    both = gradtrust.score(model, x, ["odin", "purview_initial", "purview_final"])
    assert len(calls) == 4
    alone = gradtrust.score(model, x, ["odin"])
    loop = gradtrust.score(model, x, ["purview_initial", "purview_final"], purview_backend="loop")
    torch.testing.assert_close(both["odin"], alone["odin"], rtol=0, atol=0)
    for name in ("purview_initial", "purview_final"):
        torch.testing.assert_close(both[name], loop[name], rtol=1e-4, atol=0)
