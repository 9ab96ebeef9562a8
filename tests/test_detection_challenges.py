"""Challenge sets: attacks attack and are reproducible, corruptions are seeded, bad input fails early."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gradtrust.detection.challenges import (
    Challenge,
    attack,
    builtin_ood,
    check_same_geometry,
    corrupt,
    parse_challenges,
)
from gradtrust.errors import InputError, ModelError, UnknownNameError


@pytest.fixture(scope="module")
def digits():
    from gradtrust.data.digits import DigitsDataset
    from gradtrust.models.digits import build_digits_model

    ds = DigitsDataset("test")
    rows = range(0, len(ds), 10)  # 91 samples, every class
    x = torch.stack([ds[i].input for i in rows])
    y = torch.as_tensor(ds.labels[list(rows)])
    return build_digits_model("digits_mlp"), x, y


def _accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_attacks_attack_and_are_reproducible(digits):
    model, x, y = digits
    clean = _accuracy(model, x, y)
    assert clean > 0.9
    for name in ("fgsm", "pgd"):
        adv = attack(model, x, y, name, eps=0.15, seed=1)
        assert (adv - x).abs().max() <= 0.15 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        assert _accuracy(model, adv, y) < clean - 0.4
    again = attack(model, x, y, "pgd", eps=0.15, seed=1)
    other = attack(model, x, y, "pgd", eps=0.15, seed=2)
    torch.testing.assert_close(again, attack(model, x, y, "pgd", eps=0.15, seed=1), rtol=0, atol=0)
    assert not torch.equal(again, other)
    # least-likely: pushes predictions towards each sample's least likely class
    with torch.no_grad():
        least = model(x).argmin(1)
    ll = attack(model, x[:40], y[:40], "ll", eps=0.3, seed=0)
    with torch.no_grad():
        assert (model(ll).argmax(1) == least[:40]).float().mean() > 0.3
    assert model.training is False and all(p.requires_grad for p in model.parameters())


def test_attack_with_normalisation_matches_pixel_space(digits):
    model, x, y = digits
    mean, std = [0.3], [0.4]
    in_pixels = nn.Sequential(_Normalise(mean, std), model).eval()
    expected = attack(in_pixels, x[:20], y[:20], "fgsm", eps=0.1)
    got = attack(model, (x[:20] - 0.3) / 0.4, y[:20], "fgsm", eps=0.1, mean=mean, std=std)
    torch.testing.assert_close(got * 0.4 + 0.3, expected, rtol=0, atol=1e-5)
    with pytest.raises(InputError, match="mean=/std="):
        attack(model, (x[:4] - 0.3) / 0.4, y[:4], "fgsm")


class _Normalise(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).reshape(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class _NoGrad(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        with torch.no_grad():
            return self.inner(x)


class _Detached(_NoGrad):
    def forward(self, x):
        return self.inner(x.detach())


def test_attack_bad_input(digits):
    model, x, y = digits
    with pytest.raises(UnknownNameError, match="deepfool"):
        attack(model, x, y, "deepfool")
    with pytest.raises(ModelError, match="differentiab"):
        attack(_NoGrad(model), x, y, "fgsm")
    scripted = torch.jit.trace(_Detached(model), x[:2])
    with pytest.raises(ModelError, match="differentiab"):
        attack(scripted, x, y, "pgd")
    with pytest.raises(InputError, match="floating-point"):
        attack(model, (x * 16).long(), y, "fgsm")
    with pytest.raises(InputError, match="empty"):
        attack(model, x[:0], y[:0], "fgsm")
    with pytest.raises(InputError, match="eps"):
        attack(model, x, y, "fgsm", eps=2.0)


def test_parse_challenges():
    got = parse_challenges("fgsm, PGD ,noise:3,blur,ood=/tmp/x,ood=mnist")
    assert got[:3] == [Challenge("attack", "fgsm"), Challenge("attack", "pgd"),
                       Challenge("corruption", "gaussian_noise", 3)]
    assert [c.level for c in got if c.name == "gaussian_blur"] == [1, 2, 3, 4, 5]
    assert got[-2:] == [Challenge("ood", "/tmp/x"), Challenge("ood", "mnist")]
    assert got[2].key == "gaussian_noise:3" and got[-1].key == "ood:mnist"
    with pytest.raises(UnknownNameError, match="fsgm"):
        parse_challenges("fsgm")
    for bad in ("noise:0", "blur:6", "noise:x", "fgsm:2", "", "ood="):
        with pytest.raises(InputError):
            parse_challenges(bad)


def test_small_corruptions_seeded_per_sample():
    x = torch.rand(6, 1, 8, 8)
    for name in ("gaussian_noise", "impulse_noise", "gaussian_blur", "contrast", "brightness"):
        full = corrupt(x, name, 3, seed=4)
        part = corrupt(x[2:4], name, 3, seed=4, indices=[2, 3])
        torch.testing.assert_close(part, full[2:4], rtol=0, atol=0)
        assert full.min() >= 0 and full.max() <= 1
        dist = [(corrupt(x, name, lv, seed=4) - x).abs().mean().item() for lv in (1, 3, 5)]
        assert dist[0] < dist[1] < dist[2], name
    noisy = corrupt(x, "noise", 2, seed=0)
    rng = np.random.default_rng([0, 1, 0])  # the documented stream of sample 0 (gaussian_noise = stream 1)
    expected = np.clip(x[0].double().numpy() + 0.16 * rng.standard_normal((1, 8, 8)), 0, 1)
    np.testing.assert_allclose(noisy[0].double().numpy(), expected, atol=1e-6)
    with pytest.raises(InputError, match="1 to 5"):
        corrupt(x, "noise", 6)
    with pytest.raises(UnknownNameError, match="under 32"):
        corrupt(x, "snow", 1)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        corrupt(x - 0.5, "noise", 1)


def test_imagecorruptions_for_natural_images():
    x = torch.rand(2, 3, 32, 32)
    state = np.random.get_state()
    a = corrupt(x, "gaussian_noise", 1, seed=5)
    assert np.array_equal(np.random.get_state()[1], state[1])  # the global stream is left alone
    torch.testing.assert_close(a, corrupt(x, "gaussian_noise", 1, seed=5), rtol=0, atol=0)
    # independent computation: ImageNet-C gaussian_noise, σ = 0.08 at level 1, on the uint8 image
    np.random.seed([5, 99, 1])
    hwc = np.round(np.moveaxis(x[1].double().numpy(), 0, -1) * 255).astype(np.uint8)
    expected = np.clip(hwc / 255.0 + np.random.normal(size=hwc.shape, scale=0.08), 0, 1)
    np.random.set_state(state)
    np.testing.assert_allclose(np.moveaxis(a[1].double().numpy(), 0, -1), expected, atol=1.01 / 255)
    from imagecorruptions import get_corruption_names

    from gradtrust.detection.challenges import IMAGENET_C

    assert tuple(get_corruption_names("all")) == IMAGENET_C
    grey = corrupt(x[:, :1], "snow", 2, seed=0)
    assert grey.shape == (2, 1, 32, 32)


def test_builtin_ood_and_geometry():
    mnist = builtin_ood("mnist", (8, 8), 1, n=30, seed=0)
    assert mnist.shape == (30, 1, 8, 8) and 0 <= mnist.min() and mnist.max() <= 1
    # optdigits format: multiples of 1/16
    np.testing.assert_allclose((mnist * 16).numpy(), np.round((mnist * 16).numpy()), atol=1e-5)
    torch.testing.assert_close(mnist, builtin_ood("mnist", (8, 8), 1, n=30, seed=0))
    patches = builtin_ood("patches", (16, 16), 3, n=5)
    assert patches.shape == (5, 3, 16, 16)
    with pytest.raises(UnknownNameError):
        builtin_ood("cifar", (8, 8), 1)
    with pytest.raises(InputError, match="same channels"):
        check_same_geometry(torch.zeros(2, 1, 8, 8), patches, "ood:patches")
    with pytest.raises(InputError, match="empty"):
        check_same_geometry(torch.zeros(2, 1, 8, 8), torch.zeros(0, 1, 8, 8), "x")
