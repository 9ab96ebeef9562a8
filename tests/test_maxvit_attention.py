"""Purview's closed form for torchvision MaxViT's relative-position attention against a per-sample autograd
loop, on a tiny random-weight MaxViT whose window and grid attentions both see several partitions."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models import maxvit

import gradtrust
from gradtrust.nn.state import scoring_state
from gradtrust.per_sample import layers as per_sample
from gradtrust.scores.options import ScoreOptions
from gradtrust.scores.passes import BatchPasses, _purview_loss
from gradtrust.scores.spec import Pass

TABLE = "relative_position_bias_table"


def _maxvit() -> nn.Module:
    """32² images: 16² after the stem, 8² and 4² in the two blocks; partitions of 2 × 2 tokens, so the window
    attentions see 16 and 4 windows and the grid attentions 16 and 4 grid cells, two heads each."""
    model = maxvit.MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[8, 16],
                          block_layers=[1, 1], head_dim=4, stochastic_depth_prob=0.0, num_classes=5)
    torch.manual_seed(1)
    for p in model.parameters():
        nn.init.normal_(p, std=0.3)
    return model.eval()


def _hook_passes(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, BatchPasses]:
    """(B, J) norms by the hook path, the logits it captured, and the passes object."""
    with scoring_state(model):
        passes = BatchPasses(model, x, ScoreOptions(purview_backend="hooks"), torch.arange(x.shape[0]),
                             frozenset({Pass.FORWARD, Pass.PARAMETER_GRADIENTS}))
        norms = passes.parameter_sq_norms
        captured = passes._forward.logits.detach()
    assert passes.purview_backend_used == "hooks"
    return norms, captured, passes


def _loop_norms(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with scoring_state(model):
        return per_sample.sq_norms_by_loop(model, x, _purview_loss).double()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_maxvit_attention_rule_is_exact_and_keeps_the_output(dtype):
    model = _maxvit().to(dtype)
    torch.manual_seed(2)
    x = torch.randn(3, 3, 32, 32, dtype=dtype)
    with torch.no_grad():
        plain = model(x)
    norms, captured, passes = _hook_passes(model, x)
    expected = _loop_norms(model, x)
    assert passes.purview_fallback == {}  # no submodule through per-sample autograd
    torch.testing.assert_close(captured, plain, rtol=0, atol=0)  # the rule's forward is the module's, bit for bit
    names = [n for n, _ in model.named_parameters()]
    tables = [j for j, n in enumerate(names) if n.endswith(TABLE)]
    assert len(tables) == 4 and (expected[:, tables] > 0).all()  # the bias tables are covered and not trivial
    torch.testing.assert_close(norms, expected, rtol=1e-4, atol=1e-9)


def test_maxvit_purview_scores_equal_the_loop():
    model = _maxvit()
    torch.manual_seed(3)
    x = torch.randn(2, 3, 32, 32)
    result = gradtrust.score(model, x, ["purview_initial", "purview_final"])
    expected = gradtrust.score(model, x, ["purview_initial", "purview_final"], purview_backend="loop")
    assert result.info["purview_backend"] == "hooks"
    assert not result.info.get("purview_fallback")
    for name in ("purview_initial", "purview_final"):
        torch.testing.assert_close(result[name], expected[name], rtol=1e-4, atol=1e-7)


def test_maxvit_attention_in_training_mode_becomes_a_unit():
    """Outside the rule's conditions (here: training mode) that attention alone goes through per-sample
    autograd, with the module's own forward; the others keep the rule."""
    model = _maxvit()
    name = "blocks.1.layers.0.layers.grid_attention.attn_layer.1"
    torch.manual_seed(4)
    x = torch.randn(2, 3, 32, 32)
    with scoring_state(model):  # (entered once: entering it again would put the module back in eval mode)
        model.get_submodule(name).train()  # no dropout inside: training mode changes only the rule's choice
        passes = BatchPasses(model, x, ScoreOptions(purview_backend="hooks"), torch.arange(x.shape[0]),
                             frozenset({Pass.FORWARD, Pass.PARAMETER_GRADIENTS}))
        norms = passes.parameter_sq_norms
        expected = per_sample.sq_norms_by_loop(model, x, _purview_loss).double()
    assert passes.purview_backend_used == "hooks"
    assert set(passes.purview_fallback) == {name}
    torch.testing.assert_close(norms, expected, rtol=1e-4, atol=1e-9)


CUDA_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU machine)")
@pytest.mark.parametrize("dtype", CUDA_DTYPES, ids=[str(d)[6:] for d in CUDA_DTYPES])
def test_maxvit_attention_rule_on_cuda(dtype, monkeypatch):
    """On a GPU, in float32 and half precision: the rule's norms against the per-sample loop in float32 on
    the same device, same parameters and (rounded) inputs. TF32 is off, so that float32 is compared with
    float32 (cuDNN's TF32 algorithms differ from run to run)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = _maxvit().cuda().to(dtype)
    torch.manual_seed(2)
    x = torch.randn(3, 3, 32, 32, device="cuda", dtype=dtype)
    norms, _, passes = _hook_passes(model, x)
    reference = copy.deepcopy(model).float()
    expected = _loop_norms(reference, x.float())
    assert passes.purview_fallback == {}
    finite = torch.isfinite(expected)  # float16 may overflow in the model itself: compare where it does not
    assert finite.float().mean() > 0.5, f"the {dtype} model overflows on most parameters"
    assert torch.isfinite(norms[finite]).all(), "the rule overflows where the model's own backward does not"
    tol = dict(rtol=1e-4, atol=1e-9) if dtype == torch.float32 else dict(rtol=0.1, atol=1e-4)
    torch.testing.assert_close(norms[finite], expected[finite], **tol)
