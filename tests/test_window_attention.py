"""Purview's closed forms for torchvision's shifted-window attention (Swin, Swin V2, Video Swin) against a
per-sample autograd loop, on tiny random-weight networks whose windows shift, pad and (video) shrink."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torchvision.models import swin_transformer
from torchvision.models.video import swin_transformer as video_swin

from gradtrust.nn.state import scoring_state
from gradtrust.per_sample import layers as per_sample
from gradtrust.scores.options import ScoreOptions
from gradtrust.scores.passes import BatchPasses, _purview_loss
from gradtrust.scores.spec import Pass


def _randomise(model: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    for p in model.parameters():
        nn.init.normal_(p, std=0.3)
    return model.eval()


def _swin() -> nn.Module:
    return swin_transformer.SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[2, 2], num_heads=[2, 2],
                                            window_size=[4, 4], num_classes=3)


def _swin_v2() -> nn.Module:
    model = swin_transformer.SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[2, 1], num_heads=[2, 2],
                                             window_size=[4, 4], num_classes=3,
                                             block=swin_transformer.SwinTransformerBlockV2,
                                             downsample_layer=swin_transformer.PatchMergingV2)
    model = _randomise(model)
    with torch.no_grad():  # one head beyond the clamp of the logit scale (its gradient is zero there)
        model.features[1][0].attn.logit_scale[0] = math.log(100.0) + 0.5
    return model


def _swin3d() -> nn.Module:
    return video_swin.SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=8, depths=[2, 1], num_heads=[2, 2],
                                        window_size=[4, 4, 4], num_classes=3)


# 40² images: 10 × 10 tokens, padded to 12 × 12 windows of 4 (shifted by 2); the second stage pads 5 → 8.
# Video: 6 frames → 3 temporal tokens, so the temporal window shrinks to 3 and does not shift.
MODELS = [("swin", _swin, (2, 3, 40, 40)), ("swin_v2", _swin_v2, (2, 3, 40, 40)),
          ("swin3d", _swin3d, (2, 3, 6, 24, 24))]


@pytest.mark.parametrize("name, factory, shape", MODELS, ids=[m[0] for m in MODELS])
def test_window_attention_rule_is_exact_and_keeps_the_output(name, factory, shape):
    model = _randomise(factory()) if name != "swin_v2" else factory()
    torch.manual_seed(2)
    x = torch.randn(*shape)
    with torch.no_grad():
        plain = model(x)
    with scoring_state(model):
        passes = BatchPasses(model, x, ScoreOptions(purview_backend="hooks"), torch.arange(x.shape[0]),
                             frozenset({Pass.FORWARD, Pass.PARAMETER_GRADIENTS}))
        norms = passes.parameter_sq_norms
        captured = passes._forward.logits.detach()
        expected = per_sample.sq_norms_by_loop(model, x, _purview_loss).double()
    assert passes.purview_backend_used == "hooks"
    assert passes.purview_fallback == {}  # no submodule through per-sample autograd
    torch.testing.assert_close(captured, plain, rtol=1e-6, atol=1e-6)  # the decomposed attention is the module's
    torch.testing.assert_close(norms, expected, rtol=1e-4, atol=1e-9)


def test_window_attention_in_training_mode_becomes_a_unit():
    """Outside the rule's conditions (here: dropout active in training mode) the attention alone goes through
    per-sample autograd, with the module's own forward."""
    model = _randomise(_swin())
    attn = model.features[1][1].attn
    with scoring_state(model):
        attn.train()  # attention_dropout and dropout are 0: training mode changes nothing but the rule's choice
        x = torch.randn(2, 3, 16, 16)
        passes = BatchPasses(model, x, ScoreOptions(purview_backend="hooks"), torch.arange(2),
                             frozenset({Pass.FORWARD, Pass.PARAMETER_GRADIENTS}))
        norms = passes.parameter_sq_norms
        expected = per_sample.sq_norms_by_loop(model, x, _purview_loss).double()
    assert set(passes.purview_fallback) == {"features.1.1.attn"}
    torch.testing.assert_close(norms, expected, rtol=1e-4, atol=1e-9)


# Not swin_v2 in float16: the tiny V2 model's own backward overflows there (the per-sample loop gives inf on
# most parameters: its cosine attention is scaled by up to 100 and float16 ends at 65,504); bfloat16 covers it.
CUDA_CASES = [(*model, dtype) for model in MODELS for dtype in (torch.float32, torch.float16, torch.bfloat16)
              if not (model[0] == "swin_v2" and dtype == torch.float16)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU machine)")
@pytest.mark.parametrize("name, factory, shape, dtype", CUDA_CASES,
                         ids=[f"{c[0]}-{str(c[3])[6:]}" for c in CUDA_CASES])
def test_window_attention_rule_on_cuda(name, factory, shape, dtype, monkeypatch):
    """On a GPU, in float32 and half precision: the rule's norms against the per-sample loop in float32 on
    the same device, same parameters and (rounded) inputs. In half precision the loop would accumulate the
    bias tables' gradients in half with atomics, a noisier reference than the rule's float32 sums. TF32 is
    off, so that float32 is compared with float32 (cuDNN's TF32 algorithms differ from run to run)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model = (_randomise(factory()) if name != "swin_v2" else factory()).cuda().to(dtype)
    torch.manual_seed(2)
    x = torch.randn(*shape, device="cuda", dtype=dtype)
    with scoring_state(model):
        passes = BatchPasses(model, x, ScoreOptions(purview_backend="hooks"), torch.arange(x.shape[0]),
                             frozenset({Pass.FORWARD, Pass.PARAMETER_GRADIENTS}))
        norms = passes.parameter_sq_norms
    reference = copy.deepcopy(model).float()
    with scoring_state(reference):
        expected = per_sample.sq_norms_by_loop(reference, x.float(), _purview_loss).double()
    assert passes.purview_backend_used == "hooks" and passes.purview_fallback == {}
    finite = torch.isfinite(expected)  # float16 may overflow in the model itself: compare where it does not
    assert finite.float().mean() > 0.5, f"the {dtype} model overflows on most parameters"
    assert torch.isfinite(norms[finite]).all(), "the rule overflows where the model's own backward does not"
    tol = dict(rtol=1e-4, atol=1e-9) if dtype == torch.float32 else dict(rtol=0.1, atol=1e-4)
    torch.testing.assert_close(norms[finite], expected[finite], **tol)
