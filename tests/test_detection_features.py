"""Purview gradient features against per-sample autograd (an independent loop over samples)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradtrust.detection import Detector, feature_layout, gradient_features
from gradtrust.errors import InputError, UnknownNameError


def _reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """‖∂J_i/∂θ_j‖² by one autograd.grad per sample, in float64 (model cast to double)."""
    m = _double_copy(model)
    params = [p for _, p in m.named_parameters()]
    rows = []
    for i in range(x.shape[0]):
        z = m(x[i:i + 1].double())
        loss = F.binary_cross_entropy_with_logits(z, y[i:i + 1].double(), reduction="none").mean()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        rows.append(torch.stack([torch.zeros((), dtype=torch.float64) if g is None else g.square().sum()
                                 for g in grads]))
    return torch.stack(rows)


def _double_copy(model: nn.Module) -> nn.Module:
    import copy

    m = copy.deepcopy(model).double().eval()
    for p in m.parameters():
        p.requires_grad_(True)
    return m


def _check(model, x, label="ones", **kw):
    feats = gradient_features(model, x, label=label, **kw)
    c = model(x[:1]).shape[1]
    y = torch.ones(x.shape[0], c) if isinstance(label, str) else torch.as_tensor(label).float().expand(x.shape[0], c)
    ref = _reference(model, x, y)
    assert feats.dtype == torch.float64 and feats.shape == ref.shape
    torch.testing.assert_close(feats, ref, rtol=2e-3, atol=1e-12)
    return feats


def test_resnet18_hooks_equal_autograd():
    from torchvision.models import resnet18

    model = resnet18(num_classes=5).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 20, 20)
    _check(model, x, backend="hooks")


def test_vit_vmap_and_hooks_on_chosen_layers():
    from torchvision.models import VisionTransformer

    model = VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16,
                              mlp_dim=16, num_classes=4).eval()
    x = torch.randn(3, 3, 16, 16)
    full = _check(model, x, backend="auto")  # class token, attention in-projection: rules on the hook path
    # the MLP and head are hook-supported on their own: one batched backward, same numbers
    layers = ["encoder.layers.encoder_layer_0.mlp", "heads"]
    hooked = gradient_features(model, x, layers=layers, backend="hooks")
    cols = [i for i, n in enumerate(n for n, _ in model.named_parameters())
            if n.startswith(("encoder.layers.encoder_layer_0.mlp.", "heads."))]
    torch.testing.assert_close(hooked, full[:, cols], rtol=2e-3, atol=1e-12)


def test_digits_cnn_nhot_label_and_layer_grouping():
    from gradtrust.models.digits import build_digits_model

    model = build_digits_model("digits_cnn")
    x = torch.rand(4, 1, 8, 8)
    label = torch.zeros(10)
    label[[2, 7]] = 1.0
    per_tensor = _check(model, x, label=label)
    per_layer = gradient_features(model, x, label=label, grouping="layer")
    layout = feature_layout(model, grouping="layer")
    assert layout.columns == ["0", "1", "3", "4", "8", "11"]
    names = [n for n, _ in model.named_parameters()]
    expected = torch.stack([per_tensor[:, [i for i, n in enumerate(names) if n.split(".")[0] == c]].sum(1)
                            for c in layout.columns], dim=1)
    torch.testing.assert_close(per_layer, expected)
    # the label matters: all-ones features differ
    assert not torch.allclose(per_tensor, gradient_features(model, x))


def test_loop_backend_and_per_sample_label_matrix():
    from gradtrust.models.digits import build_digits_model

    model = build_digits_model("digits_mlp")
    x = torch.rand(3, 1, 8, 8)
    labels = torch.eye(10)[[1, 4, 4]]
    _check_rows = gradient_features(model, x, label=labels, backend="loop")
    hooks = gradient_features(model, x, label=labels, backend="hooks")
    vm = gradient_features(model, x, label=labels, backend="vmap")
    torch.testing.assert_close(hooks, _check_rows, rtol=1e-4, atol=1e-12)
    torch.testing.assert_close(vm, _check_rows, rtol=1e-4, atol=1e-12)
    assert model.training is False and all(p.requires_grad for p in model.parameters())


def test_bad_arguments():
    from gradtrust.models.digits import build_digits_model

    model = build_digits_model("digits_linear")
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(UnknownNameError, match="grouping"):
        gradient_features(model, x, grouping="block")
    with pytest.raises(UnknownNameError, match="not modules"):
        gradient_features(model, x, layers=["nope"])
    with pytest.raises(InputError, match="0 and 1"):
        gradient_features(model, x, label=torch.full((10,), 0.5))
    with pytest.raises(InputError, match="does not fit"):
        gradient_features(model, x, label=torch.ones(3))
    with pytest.raises(InputError, match="floating-point"):
        gradient_features(model, torch.ones(2, 1, 8, 8, dtype=torch.int64))
    with pytest.raises(InputError, match="could not run"):
        gradient_features(model, torch.rand(2, 3, 8, 8))


def test_detector_separates_and_is_seeded():
    import numpy as np

    rng = np.random.default_rng(0)
    known = rng.lognormal(0.0, 1.0, size=(120, 5))
    challenge = rng.lognormal(1.0, 1.0, size=(120, 5))
    from gradtrust.evaluation import auroc

    for kind in ("mlp", "logistic"):
        det = Detector(kind=kind, max_iter=60, seed=3).fit(known[:60], challenge[:60])
        s_known, s_chal = det.score(known[60:]), det.score(challenge[60:])
        labels = np.r_[np.ones(60, bool), np.zeros(60, bool)]
        assert auroc(np.r_[s_known, s_chal], labels) > 0.85
        again = Detector(kind=kind, max_iter=60, seed=3).fit(known[:60], challenge[:60]).score(known[60:])
        np.testing.assert_array_equal(s_known, again)
    with pytest.raises(UnknownNameError):
        Detector(kind="svm").fit(known, challenge)
    with pytest.raises(InputError, match="not fitted"):
        Detector().score(known)
    with pytest.raises(InputError, match="empty"):
        Detector().fit(known, challenge[:0])
    with pytest.raises(InputError, match="columns"):
        Detector().fit(known, challenge[:, :3])
