"""Occlusion, RISE, SHAPE and judging explanations by masking, against independent computations: per-patch and
per-mask loops, brute-force deletion/insertion loops, pytorch-grad-cam's ROAD / Average Drop / Increase in
Confidence, the law of total variance, and a hand-rolled bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradtrust
from gradtrust.errors import InputError
from gradtrust.evaluation import curve_auc, summarise_interventions, total_variance
from gradtrust.explanations import PerturbationOptions, explain
from gradtrust.explanations.evaluate import gaussian_blur, noisy_linear_imputation
from gradtrust.explanations.perturbation import RiseMasks

CLASSES = 5


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, CLASSES),
    ).eval()


def _images(n: int = 3, size: tuple[int, int] = (12, 10)) -> torch.Tensor:
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(1))


def _prob(model: nn.Module, x: torch.Tensor, t: int) -> float:
    with torch.no_grad():
        return float(torch.softmax(model(x[None]), 1)[0, t])


def test_occlusion_matches_a_per_patch_loop():
    model, x = _model(), _images()
    patch, stride = 4, 3
    ex = explain(
        model,
        x,
        methods="occlusion",
        perturbation=PerturbationOptions(patch_size=patch, stride=stride, batch_bytes=3000),
    )
    h, w = x.shape[-2:]
    rows = sorted(set(range(0, h - patch + 1, stride)) | {h - patch})  # every pixel covered
    cols = sorted(set(range(0, w - patch + 1, stride)) | {w - patch})
    for b in range(x.shape[0]):
        t = int(ex.target[b])
        p0 = _prob(model, x[b], t)
        total, count = torch.zeros(h, w, dtype=torch.float64), torch.zeros(h, w, dtype=torch.float64)
        for r in rows:
            for c in cols:
                copy = x[b].clone()
                copy[:, r : r + patch, c : c + patch] = 0.0  # the fill: 0 in input space
                total[r : r + patch, c : c + patch] += p0 - _prob(model, copy, t)
                count[r : r + patch, c : c + patch] += 1
        assert torch.allclose(ex.layer_maps["occlusion"][b].double(), total / count, atol=1e-6)
    assert ex["occlusion"].min() >= 0 and ex["occlusion"].max() <= 1


def _petsiuk_masks(n: int, grid: int, keep: float, size: tuple[int, int], seed: int) -> torch.Tensor:
    """RISE's mask generation restated one mask at a time (same generator draws, in the same order)."""
    gen = torch.Generator().manual_seed(seed)
    cells = torch.rand(n, grid, grid, generator=gen) < keep
    ch, cw = math.ceil(size[0] / grid), math.ceil(size[1] / grid)
    dy, dx = torch.randint(0, ch, (n,), generator=gen), torch.randint(0, cw, (n,), generator=gen)
    out = []
    for i in range(n):
        up = F.interpolate(
            cells[i].float()[None, None], size=((grid + 1) * ch, (grid + 1) * cw), mode="bilinear", align_corners=False
        )[0, 0]
        out.append(up[int(dy[i]) : int(dy[i]) + size[0], int(dx[i]) : int(dx[i]) + size[1]])
    return torch.stack(out)


def test_rise_and_shape_match_a_per_mask_loop_with_the_same_seed():
    model, x = _model(), _images(2)
    options = PerturbationOptions(num_masks=37, mask_grid=4, keep_probability=0.4, seed=5, batch_bytes=4000)
    ex = explain(model, x, methods="rise,shape", perturbation=options)
    masks = _petsiuk_masks(37, 4, 0.4, tuple(x.shape[-2:]), 5)
    assert torch.equal(RiseMasks(tuple(x.shape[-2:]), options)[0:37], masks)
    assert masks.min() >= 0 and masks.max() <= 1 + 1e-6 and 0 < masks.mean() < 1
    for b in range(x.shape[0]):
        t = int(ex.target[b])
        p0 = _prob(model, x[b], t)
        rise = sum(_prob(model, x[b] * m, t) * m.double() for m in masks) / (37 * 0.4)
        shape = sum((p0 - _prob(model, x[b] * m, t)) * (1 - m.double()) for m in masks) / (37 * 0.6)
        assert torch.allclose(ex.layer_maps["rise"][b].double(), rise, atol=1e-6)
        assert torch.allclose(ex.layer_maps["shape"][b].double(), shape, atol=1e-6)


def test_interventions_are_deterministic_and_independent_of_packing():
    model, x = _model(), _images(3)
    small = explain(
        model, x, methods="occlusion,rise,shape", perturbation=PerturbationOptions(num_masks=50, batch_bytes=1)
    )
    large = explain(model, x, methods="occlusion,rise,shape", perturbation=PerturbationOptions(num_masks=50))
    again = explain(model, x, methods="occlusion,rise,shape", perturbation=PerturbationOptions(num_masks=50))
    other = explain(model, x, methods="rise", perturbation=PerturbationOptions(num_masks=50, seed=1))
    for m in ("occlusion", "rise", "shape"):
        assert torch.allclose(small.layer_maps[m], large.layer_maps[m], atol=1e-6)
        assert torch.equal(large.layer_maps[m], again.layer_maps[m])
    assert not torch.allclose(other.layer_maps["rise"], large.layer_maps["rise"])
    mixed = explain(model, x, methods="gradcam,occlusion")  # one call, both kinds of map, each at its resolution
    assert mixed.layer_maps["gradcam"].shape[-2:] == x.shape[-2:] and mixed["occlusion"].shape == (3, 12, 10)
    with pytest.raises(InputError, match="num_masks"):
        PerturbationOptions(num_masks=0)
    with pytest.raises(InputError, match="keep_probability"):
        PerturbationOptions(keep_probability=1.0)


def _brute_curve(model, x, e, t, steps, start):
    """Readings k = 0..steps with the min(k·n, HW) top pixels filled (start=None) or inserted into ``start``."""
    hw = e.numel()
    n = math.ceil(hw / steps)
    order = np.argsort(-e.flatten().numpy(), kind="stable")
    out = []
    for k in range(steps + 1):
        chosen = torch.as_tensor(order[: min(k * n, hw)])
        flat_x = x.reshape(x.shape[0], -1)
        if start is None:
            copy = flat_x.clone()
            copy[:, chosen] = 0.0
        else:
            copy = start.reshape(x.shape[0], -1).clone()
            copy[:, chosen] = flat_x[:, chosen]
        out.append(_prob(model, copy.reshape(x.shape), t))
    return np.array(out)


def test_deletion_and_insertion_match_a_brute_force_loop():
    model, x = _model(), _images(2, (7, 9))
    maps = torch.rand(2, 7, 9, generator=torch.Generator().manual_seed(3))
    maps[0, :2] = 0.5  # ties: broken in row-major order
    table = gradtrust.evaluate_explanations(model, x, maps, metrics="deletion,insertion", baselines=False)
    assert list(table["method"]) == ["map", "map"]
    blurred = gaussian_blur(x)
    for b in range(2):
        t = int(table["target"][b])
        e = (maps[b] - maps[b].min()) / (maps[b].max() - maps[b].min())
        deletion = _brute_curve(model, x[b], e, t, 63, None)  # steps = min(HW, 100) = 63
        insertion = _brute_curve(model, x[b], e, t, 63, blurred[b])
        np.testing.assert_allclose(table["deletion_curve"][b], deletion, atol=1e-6)
        np.testing.assert_allclose(table["insertion_curve"][b], insertion, atol=1e-6)
        trapezoid = sum((deletion[k] + deletion[k + 1]) / 2 for k in range(63)) / 63
        assert table["deletion_auc"][b] == pytest.approx(trapezoid, abs=1e-6)
        assert table["insertion_auc"][b] == pytest.approx(float(curve_auc(insertion)), abs=1e-6)
    # ⌈HW/steps⌉ pixels per step: 63 pixels in 10 steps → 7 per step, the last reading has every pixel filled
    coarse = gradtrust.evaluate_explanations(model, x, maps, metrics="deletion", steps=10, baselines=False)
    np.testing.assert_allclose(
        coarse["deletion_curve"][0], _brute_curve(model, x[0], maps[0], int(coarse["target"][0]), 10, None), atol=1e-6
    )


def test_gaussian_blur_is_petsiuks_kernel():
    x = torch.zeros(1, 2, 15, 15)
    x[0, :, 7, 7] = 1.0
    out = gaussian_blur(x)
    r = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(r**2) / 50)
    kernel = torch.outer(g, g) / torch.outer(g, g).sum()
    assert torch.allclose(out[0, 0, 2:13, 2:13].double(), kernel, atol=1e-7)
    assert torch.allclose(out[0, 1], out[0, 0])


def test_variance_split_is_the_law_of_total_variance():
    model, x = _model(), _images(2)
    maps = torch.rand(2, 12, 10, generator=torch.Generator().manual_seed(4))
    levels = (0.25, 0.5, 1.0)
    table = gradtrust.evaluate_explanations(model, x, maps, metrics="variance", variance_levels=levels, baselines=False)
    for b in range(2):
        t = int(table["target"][b])
        order = np.argsort(-maps[b].flatten().numpy(), kind="stable")
        readings = []
        for f in levels:
            keep = torch.zeros(120)
            keep[torch.as_tensor(order[: math.ceil(f * 120)])] = 1
            readings.append(_prob(model, x[b] * keep.reshape(12, 10), t))
        p = np.array(readings)
        assert table["variance_explained"][b] == pytest.approx(p.var(), abs=1e-7)
        assert table["variance_remaining"][b] == pytest.approx(np.mean(p * (1 - p)), abs=1e-7)
        assert table["variance_total"][b] == pytest.approx(p.mean() * (1 - p.mean()), abs=1e-7)
    explained, remaining = total_variance([[0.1, 0.9], [0.5, 0.5]])
    np.testing.assert_allclose(explained + remaining, [0.25, 0.25])


@pytest.mark.slow  # importing pytorch-grad-cam (OpenCV, scikit-image…) alone takes seconds
def test_average_drop_increase_and_road_equal_pytorch_grad_cam():
    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
    from pytorch_grad_cam.metrics.perturbation_confidence import (
        AveragerAcrossThresholds,
        PerturbationConfidenceMetric,
        RemoveLeastRelevantFirst,
        RemoveMostRelevantFirst,
    )
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model, x = _model(), _images(4, (9, 11))
    ex = explain(model, x, methods="occlusion", perturbation=PerturbationOptions(patch_size=3, stride=1))
    cams = ex["occlusion"].numpy()
    ours = gradtrust.evaluate_explanations(model, x, ex, metrics="average_drop,road", road_noise=0.0, baselines=False)
    targets = [ClassifierOutputSoftmaxTarget(int(t)) for t in ex.target]
    p0 = ours["probability"].to_numpy()
    drop = DropInConfidence()(x, cams, targets, model)
    increase = IncreaseInConfidence()(x, cams, targets, model)
    np.testing.assert_allclose(ours["average_drop"], 100 * drop / p0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours["increase_in_confidence"], 100 * increase)

    def road(removal):
        return AveragerAcrossThresholds(
            lambda p: PerturbationConfidenceMetric(removal(p, NoisyLinearImputer(noise=0.0))),
            [10, 20, 30, 40, 50, 60, 70, 80, 90],
        )(x, cams, targets, model)

    np.testing.assert_allclose(ours["road_morf"], road(RemoveMostRelevantFirst), atol=1e-5)
    np.testing.assert_allclose(ours["road_lerf"], road(RemoveLeastRelevantFirst), atol=1e-5)


def test_noisy_linear_imputation_solves_the_neighbour_equations():
    image = np.random.default_rng(0).normal(size=(2, 6, 5)).astype(np.float32)
    keep = np.ones((6, 5), bool)
    keep[2:4, 1:4] = False
    keep[0, 0] = False  # a corner: three in-image neighbours
    out = noisy_linear_imputation(image[None], keep[None], 0.0, torch.Generator())[0]
    pair = noisy_linear_imputation(
        np.stack([image, image[::-1].copy()]), np.stack([keep, keep]), 0.0, torch.Generator()
    )
    np.testing.assert_allclose(pair[0], out, atol=1e-6)  # a stack solves each image on its own
    assert np.array_equal(out[:, keep], image[:, keep])
    weights = {
        (1, 1): 1 / 12,
        (0, 1): 1 / 6,
        (-1, 1): 1 / 12,
        (1, -1): 1 / 12,
        (0, -1): 1 / 6,
        (-1, -1): 1 / 12,
        (1, 0): 1 / 6,
        (-1, 0): 1 / 6,
    }
    for r, c in zip(*np.nonzero(~keep), strict=True):
        near = [(w, out[:, r + dr, c + dc]) for (dr, dc), w in weights.items() if 0 <= r + dr < 6 and 0 <= c + dc < 5]
        mean = sum(w * v for w, v in near) / sum(w for w, _ in near)
        np.testing.assert_allclose(out[:, r, c], mean, atol=1e-5)
    noisy = noisy_linear_imputation(image[None], keep[None], 0.01, torch.Generator().manual_seed(0))[0]
    assert 0 < np.abs(noisy - out).max() < 0.1 and np.array_equal(noisy[:, keep], image[:, keep])


def test_summary_bootstrap_and_paired_difference():
    import pandas as pd

    rng = np.random.default_rng(0)
    a, r = rng.uniform(size=40), rng.uniform(size=40)
    table = pd.DataFrame(
        {"method": ["a"] * 40 + ["random"] * 40, "sample": list(range(40)) * 2, "deletion_auc": np.concatenate([a, r])}
    )
    summary = summarise_interventions(table, n_resamples=300, seed=2).set_index(["method", "metric"])
    idx = np.random.default_rng(2)
    draws = np.stack([idx.integers(0, 40, 40) for _ in range(300)])
    row = summary.loc[("a", "deletion_auc")]
    assert row["mean"] == pytest.approx(a.mean())
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(tuple(np.percentile(a[draws].mean(1), [2.5, 97.5])))
    assert row["vs_random"] == pytest.approx((a - r).mean())
    paired = np.percentile((a - r)[draws].mean(1), [2.5, 97.5])
    assert (row["vs_random_low"], row["vs_random_high"]) == pytest.approx(tuple(paired))
    assert np.isnan(summary.loc[("random", "deletion_auc"), "vs_random"])


def test_bad_maps_are_refused_clearly():
    model, x = _model(), _images(2)
    with pytest.raises(InputError, match=r"shape \(2, 3, 3\).*\(2, 12, 10\)"):
        gradtrust.evaluate_explanations(model, x, torch.rand(2, 3, 3))
    bad = torch.rand(2, 12, 10)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        gradtrust.evaluate_explanations(model, x, bad)
    with pytest.raises(InputError, match="baseline"):
        gradtrust.evaluate_explanations(model, x, {"random": torch.rand(2, 12, 10)})
    with pytest.raises(InputError, match="unknown explanation metric"):
        gradtrust.evaluate_explanations(model, x, torch.rand(2, 12, 10), metrics="pointing_game")


def test_gradcam_deletes_faster_than_a_random_map_on_digits_cnn():
    from gradtrust.data.digits import DigitsDataset
    from gradtrust.models import load_model

    model = load_model("digits:digits_cnn", "bundled")
    data = DigitsDataset(split="test")
    x = torch.stack([data[i].input for i in range(64)])
    table = gradtrust.evaluate_explanations(model, x, explain(model, x, methods="gradcam"), metrics="deletion")
    row = (
        summarise_interventions(table, n_resamples=500).set_index(["method", "metric"]).loc[("gradcam", "deletion_auc")]
    )
    assert row["vs_random_high"] < 0  # lower deletion AUC than the random map, the whole 95% interval


def test_road_gives_the_same_values_whatever_the_solve_grouping(monkeypatch):
    from gradtrust.explanations import evaluate

    model, x = _model(), _images(3)
    maps = torch.rand(3, 12, 10, generator=torch.Generator().manual_seed(6))
    whole = gradtrust.evaluate_explanations(model, x, maps, metrics="road", road_noise=0.0, baselines=False)
    monkeypatch.setattr(evaluate, "MAX_UNKNOWNS", 30)  # a solve per copy or two
    split = gradtrust.evaluate_explanations(model, x, maps, metrics="road", road_noise=0.0, baselines=False)
    np.testing.assert_allclose(split["road_morf"], whole["road_morf"], atol=1e-6)
    np.testing.assert_allclose(split["road_lerf"], whole["road_lerf"], atol=1e-6)


def test_summary_without_resamples_has_means_and_no_intervals():
    import pandas as pd

    table = pd.DataFrame(
        {"method": ["a", "a", "random", "random"], "sample": [0, 1, 0, 1], "deletion_auc": [0.1, 0.3, 0.5, 0.7]}
    )
    row = summarise_interventions(table, n_resamples=0).set_index(["method", "metric"]).loc[("a", "deletion_auc")]
    assert row["mean"] == pytest.approx(0.2) and row["vs_random"] == pytest.approx(-0.4)
    assert np.isnan(row["ci_low"]) and np.isnan(row["vs_random_high"])


def test_doctests_of_the_interventions_layer_pass():
    import doctest

    from gradtrust.evaluation import interventions

    failures, tried = doctest.testmod(interventions, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert failures == 0 and tried >= 2
