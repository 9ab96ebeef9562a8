"""Explanations and VOICE against independent computations: per-image hooks + ``.backward()`` restatements, the
per-class VOICE loop at input resolution, pytorch-grad-cam, closed form vs batched autograd."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

import gradtrust
from gradtrust.errors import InputError, ModelError, UnknownNameError
from gradtrust.explanations import explain, resolve_layer, voice
from gradtrust.explanations.maps import Upsampler, interpolation_matrix, minmax, upsample
from reference_explanations import reference_map, reference_voice, upsample_normalise

CLASSES = 10


def _randomise_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) * 0.4 - 0.2)
    return model.eval()


def _vgg11() -> nn.Module:
    """vgg11's features and 7×7 adaptive pooling (no GAP) with a narrower classifier: the 4096-wide one takes
    seconds to initialise and changes nothing the tests look at."""
    with torch.device("meta"):
        model = torchvision.models.vgg11(num_classes=CLASSES)
    model.features.to_empty(device="cpu")
    for m in model.features:
        if isinstance(m, nn.Conv2d):
            m.reset_parameters()
    model.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, CLASSES))
    return model.eval()


def _video() -> nn.Module:
    """r3d_18's blocks (3-D convolutions), one per stage."""
    from torchvision.models.video.resnet import BasicBlock, BasicStem, Conv3DSimple, VideoResNet

    return _randomise_bn(VideoResNet(BasicBlock, [Conv3DSimple] * 4, [1, 1, 1, 1], BasicStem, num_classes=CLASSES))


def _vit() -> nn.Module:
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                               hidden_dim=32, mlp_dim=64, num_classes=CLASSES).eval()
    nn.init.normal_(vit.heads.head.weight, std=0.2)  # torchvision starts the head at zero: every map would be 0
    return vit


MODELS = {
    "resnet18": (lambda: _randomise_bn(torchvision.models.resnet18(num_classes=CLASSES)), (3, 64, 64)),
    "vgg11": (_vgg11, (3, 64, 64)),
    "vit": (_vit, (3, 32, 32)),
    "video": (_video, (3, 4, 24, 24)),
}
_BUILT: dict[str, nn.Module] = {}


def _model(name: str) -> tuple[nn.Module, torch.Tensor]:
    if name not in _BUILT:
        torch.manual_seed(0)
        _BUILT[name] = MODELS[name][0]()
    gen = torch.Generator().manual_seed(2)
    return _BUILT[name], torch.randn(2, *MODELS[name][1], generator=gen)


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> None:
    scale = max(float(b.abs().max()), 1e-12)
    assert float((a - b).abs().max()) <= rtol * scale, (float((a - b).abs().max()), scale)


@pytest.mark.parametrize("name", list(MODELS))
def test_three_maps_match_per_image_autograd(name):
    model, x = _model(name)
    with torch.no_grad():
        q = (model(x).argmax(1) + 3) % CLASSES  # not the runner-up: a given contrast class
    ex = explain(model, x, contrast=q)
    spec = resolve_layer(model, x, None)
    assert ex.layer == spec.name
    expected_closed = name in ("resnet18", "video")
    assert ex.closed_form == expected_closed
    for method in ("gradcam", "counterfactual", "contrast"):
        assert ex[method].shape == (2, *x.shape[-2:]) and ex[method].dtype == torch.float32
        assert float(ex[method].min()) >= 0 and float(ex[method].max()) <= 1
        for i in range(2):
            ref = reference_map(model, x[i], spec, method, int(ex.target[i]), int(q[i]))
            _close(ex.layer_maps[method][i], ref)
            _close(ex[method][i], upsample_normalise(ref, tuple(x.shape[-2:])), 1e-4)
    assert any(float(ex.layer_maps[m].max()) > 0 for m in ex.layer_maps)


def test_default_layers():
    assert _vit_layer() == "encoder.layers.encoder_layer_1.ln_1"
    model, x = _model("vgg11")
    assert resolve_layer(model, x, None).name == "features"
    model, x = _model("video")
    spec = resolve_layer(model, x, None)
    assert (spec.name, spec.layout) == ("layer4", "ncthw")


def _vit_layer() -> str:
    model, x = _model("vit")
    spec = resolve_layer(model, x, None)
    assert spec.layout == "tokens" and spec.grid == (4, 4) and spec.num_prefix == 1
    return spec.name


def test_timm_swin_and_convnext_defaults_and_closed_form_detection():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    swin = timm.models.swin_transformer.SwinTransformer(img_size=32, patch_size=4, window_size=4, embed_dim=16,
                                                        depths=(1, 1), num_heads=(1, 1), num_classes=CLASSES).eval()
    x = torch.randn(2, 3, 32, 32)
    spec = resolve_layer(swin, x, None)
    assert (spec.name, spec.layout) == ("norm", "nhwc")
    ex = explain(swin, x)
    assert ex.closed_form  # channels-last map → global average pooling → fc
    general = explain(swin, x, gradient_path="autograd")
    for m in ex.layer_maps:
        _close(ex.layer_maps[m], general.layer_maps[m])
    # ConvNeXt pools, then LayerNorm, then the linear layer: the closed form must be refused, not assumed.
    convnext = timm.models.convnext.ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 8, 8, 16), num_classes=CLASSES).eval()
    x = torch.randn(2, 3, 64, 64)
    ex = explain(convnext, x)
    assert not ex.closed_form and ex.layer in ("stages", "norm_pre")  # norm_pre: the Identity after the stages
    ref = reference_map(convnext, x[0], resolve_layer(convnext, x, None), "contrast", int(ex.target[0]),
                        int(ex.contrast[0]))
    _close(ex.layer_maps["contrast"][0], ref)
    vit = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2,
                                                           num_heads=2, num_classes=CLASSES).eval()
    assert resolve_layer(vit, x[:, :, :32, :32], None).name == "blocks.1.norm1"


def test_closed_form_equals_batched_autograd():
    for name in ("resnet18", "video"):
        model, x = _model(name)
        fast = explain(model, x, gradient_path="closed_form")
        slow = explain(model, x, gradient_path="autograd")
        assert fast.closed_form and not slow.closed_form
        for m in fast.layer_maps:
            _close(fast.layer_maps[m], slow.layer_maps[m], 1e-5)


def test_contrast_all_equals_single_calls():
    for name, path in (("resnet18", "closed_form"), ("vit", "autograd")):
        model, x = _model(name)
        ex = explain(model, x, methods="contrast", contrast="all", gradient_path=path, chunk_bytes=20_000)
        assert ex.layer_maps["contrast"].shape[:2] == (2, CLASSES)
        for q in range(CLASSES):
            if (ex.target == q).any():
                continue
            single = explain(model, x, methods="contrast", contrast=q, gradient_path=path)
            _close(ex.layer_maps["contrast"][:, q], single.layer_maps["contrast"])


@pytest.mark.parametrize("name", ["resnet18", "vit"])
def test_voice_matches_per_class_loop(name):
    model, x = _model(name)
    v = voice(model, x, chunk_bytes=30_000)  # several chunks of classes
    spec = resolve_layer(model, x, None)
    assert v.closed_form == (name == "resnet18")
    for i in range(2 if name == "vit" else 1):  # the loop costs C − 1 backward passes per image
        u, snr, iou = reference_voice(model, x[i], spec, int(v.target[i]))
        assert float((v.uncertainty[i].double() - u).abs().max()) < 1e-4
        assert abs(float(v.snr[i]) - snr) < 1e-4 * max(1.0, snr)
        # IoU thresholds maps at τ: a pixel within rounding of τ may flip, so compare with a one-pixel slack
        assert abs(float(v.iou[i]) - iou) <= 2 / u.numel() + 1e-9
    assert v.snr.dtype == torch.float64 and v.iou.dtype == torch.float64
    assert v.uncertainty.shape == v.explanation.shape == (2, *x.shape[-2:])


def test_exact_range_and_moments_of_upsampled_maps():
    gen = torch.Generator().manual_seed(3)
    for (h, w), size in [((7, 7), (224, 224)), ((3, 5), (33, 17)), ((4, 4), (4, 4)), ((2, 3), (37, 50))]:
        maps = torch.rand(6, h, w, generator=gen, dtype=torch.float64) - 0.3
        up = Upsampler((h, w), size, "cpu")
        direct = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        assert torch.allclose(up.apply(maps), direct, atol=1e-12)
        assert torch.allclose(interpolation_matrix(h, size[0]).sum(1), torch.ones(size[0], dtype=torch.float64))
        lo, hi = up.range(maps)
        assert torch.allclose(lo, direct.flatten(1).amin(1), atol=1e-12)
        assert torch.allclose(hi, direct.flatten(1).amax(1), atol=1e-12)
        flat = maps.flatten(1)
        squared = up.squared(torch.stack([flat.T @ flat, 2 * flat.T @ flat]), chunk_bytes=1)
        assert torch.allclose(squared[0], direct.square().sum(0), atol=1e-10)
        assert torch.allclose(squared[1], 2 * direct.square().sum(0), atol=1e-10)


@pytest.mark.slow  # importing pytorch-grad-cam (OpenCV, scikit-image…) alone takes seconds
def test_matches_pytorch_grad_cam():
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    for name, layer in (("resnet18", "layer4"), ("vgg11", "features")):
        model, x = _model(name)
        ex = explain(model, x, methods="gradcam", layer=layer)
        cam = GradCAM(model=model, target_layers=[model.get_submodule(layer)])
        targets = [ClassifierOutputTarget(int(t)) for t in ex.target]
        cam(input_tensor=x, targets=targets)
        acts = cam.activations_and_grads.activations[0].cpu().numpy()
        grads = cam.activations_and_grads.gradients[0].cpu().numpy()
        theirs = torch.as_tensor(cam.get_cam_image(x, None, targets, acts, grads)).clamp_min(0)
        cam.activations_and_grads.release()
        for p in model.parameters():
            p.grad = None  # pytorch-grad-cam's backward fills .grad of the shared test model
        _close(minmax(ex.layer_maps["gradcam"]), minmax(theirs.float()), 1e-5)


def test_bad_input_is_refused_clearly():
    model, x = _model("resnet18")
    with pytest.raises(UnknownNameError, match="layer4"):
        explain(model, x, layer="layer9")
    with pytest.raises(ModelError, match="not a spatial feature map.*layer4"):
        explain(model, x, layer="fc")
    with pytest.raises(InputError, match="contrast equals target"):
        explain(model, x, target=3, contrast=3)
    with pytest.raises(InputError, match="outside 0..9"):
        explain(model, x, target=10)
    with pytest.raises(InputError, match="outside 0..9"):
        explain(model, x, contrast=torch.tensor([1, -1]))
    with pytest.raises(InputError, match="integer class ids"):
        explain(model, x, target=torch.tensor([1.0, 2.0]))
    with pytest.raises(InputError, match="unknown explanation"):
        explain(model, x, methods="saliency")
    with pytest.raises(InputError, match="could not run"):
        explain(model, torch.randn(2, 1, 64, 64))
    with pytest.raises(InputError, match="threshold"):
        voice(model, x, threshold=2)
    vit, xv = _model("vit")
    with pytest.raises(InputError, match="could not run"):
        explain(vit, torch.randn(1, 3, 48, 48))


def test_logits_not_from_the_linear_layer_take_the_general_path():
    resnet, x = _model("resnet18")
    squashed = nn.Sequential(resnet, nn.Tanh()).eval()  # z = tanh(W·GAP(A) + b): the closed form is wrong here
    ex = explain(squashed, x)
    assert not ex.closed_form and ex.layer == "0.layer4"
    spec = resolve_layer(squashed, x, None)
    ref = reference_map(squashed, x[0], spec, "contrast", int(ex.target[0]), int(ex.contrast[0]))
    _close(ex.layer_maps["contrast"][0], ref)
    with pytest.raises(InputError, match="closed_form"):
        explain(squashed, x, gradient_path="closed_form")


def test_model_left_as_found_dtypes_and_no_nan():
    model, x = _model("resnet18")
    model.train()
    model.fc.weight.requires_grad_(True)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    loaded = gradtrust.LoadedModel(module=model, transform=None, class_names=[str(i) for i in range(CLASSES)],
                                   num_classes=CLASSES, spec="test")
    explain(loaded, x)
    explain(model, x, gradient_path="autograd")
    assert model.training and {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    reference = explain(model, x)
    half = explain(model.to(torch.bfloat16), x)
    model.float()
    assert half["gradcam"].dtype == torch.float32
    assert float((half["gradcam"] - reference["gradcam"]).abs().mean()) < 0.05
    # a constant map becomes zeros, never NaN; non-finite logits give zero maps
    assert torch.equal(minmax(torch.ones(2, 3, 3)), torch.zeros(2, 3, 3))
    bad = x.clone()
    bad[1] = float("nan")
    ex = explain(model, bad)
    assert not bool(ex.valid[1]) and bool(ex.valid[0])
    for m in ex.layer_maps:
        assert torch.isfinite(ex[m]).all() and float(ex[m][1].abs().max()) == 0
    one = explain(model, x[:1])
    assert one["gradcam"].shape == (1, 64, 64)
    assert torch.isfinite(upsample(one.layer_maps["gradcam"], (64, 64))).all()


def test_voice_trust_scores_in_the_registry():
    model, x = _model("resnet18")
    result = gradtrust.score(model, x, ["voice_snr", "voice_iou"], voice_threshold=0.2)
    v = voice(model, x, threshold=0.2)
    assert torch.allclose(result["voice_snr"], v.snr) and torch.allclose(result["voice_iou"], 1 - v.iou)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, CLASSES)).eval()  # no spatial layer: skipped with the reason
    skipped = gradtrust.score(mlp, torch.randn(2, 3, 2, 2)).skipped
    assert "spatial" in skipped["voice_snr"] and "spatial" in skipped["voice_iou"]
    with pytest.raises(ModelError, match="voice_iou"):
        gradtrust.score(mlp, torch.randn(2, 3, 2, 2), ["voice_iou"])


def test_voice_trust_scores_bounded_on_non_gap_heads():
    vgg, x = _model("vgg11")  # no closed form, 10 classes
    capped = gradtrust.score(vgg, x, ["voice_snr"], voice_max_backward_classes=5)
    assert torch.isnan(capped["voice_snr"]).all() and "backward passes" in capped.reasons["voice_snr"][0]
    full = gradtrust.score(vgg, x, ["voice_snr"])
    assert torch.allclose(full["voice_snr"], voice(vgg, x).snr)
