"""Calibration metrics against torchmetrics (an independent implementation), brute-force loops, sklearn and
torch, on random and adversarial inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

from gradtrust.errors import InputError
from gradtrust.evaluation import (
    TemperatureScaling,
    adaptive_calibration_error,
    brier_score,
    classwise_calibration_error,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_diagram,
    softmax,
    top_label,
)


def _random(n: int, k: int, seed: int, scale: float = 3.0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * scale
    labels = rng.integers(0, k, size=n)
    return logits, softmax(logits), labels


def _brute_ece(conf, correct, n_bins=15):
    """One sample at a time: find its bin by walking the edges k/B; 1.0 goes to the last bin."""
    total = {}
    for c, ok in zip(conf, correct, strict=True):
        b = n_bins - 1
        for j in range(n_bins):
            if j / n_bins <= c < (j + 1) / n_bins:
                b = j
                break
        total.setdefault(b, []).append((c, float(ok)))
    return sum(len(v) / len(conf) * abs(np.mean([a for _, a in v]) - np.mean([c for c, _ in v]))
               for v in total.values())


def _brute_adaptive(conf, correct, n_bins=15):
    s = sorted(conf)
    n = len(s)
    edges = [s[min(math.ceil(k * n / n_bins), n - 1)] for k in range(1, n_bins)]
    groups: dict[int, list] = {}
    for c, ok in zip(conf, correct, strict=True):
        b = sum(1 for e in edges if e <= c)
        groups.setdefault(b, []).append((c, float(ok)))
    return sum(len(v) / n * abs(np.mean([a for _, a in v]) - np.mean([c for c, _ in v])) for v in groups.values())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_torchmetrics_and_brute_force(seed):
    _, probs, labels = _random(400, 7, seed)
    conf, correct = top_label(probs, labels)
    ours = expected_calibration_error(conf, correct)
    ref = float(multiclass_calibration_error(torch.from_numpy(probs), torch.from_numpy(labels), num_classes=7,
                                             n_bins=15, norm="l1"))
    assert ours == pytest.approx(ref, abs=1e-6)  # torchmetrics accumulates in float32
    assert ours == pytest.approx(_brute_ece(conf, correct), abs=1e-12)
    assert reliability_diagram(conf, correct).ece == pytest.approx(ours, abs=1e-15)


def test_ece_adversarial_inputs():
    # ties, exact bin edges, empty bins, confidence 1.0 (torchmetrics puts 1.0 in a 16th bin of its own, so
    # the edge cases are checked against the brute-force loop of the stated rule)
    conf = np.array([1.0, 1.0, 1.0, 14 / 15, 0.5, 0.5, 0.5, 2 / 15, 0.0, 1 / 15])
    correct = np.array([1, 0, 1, 0, 1, 1, 0, 0, 1, 0], dtype=bool)
    assert expected_calibration_error(conf, correct) == pytest.approx(_brute_ece(conf, correct), abs=1e-12)
    diagram = reliability_diagram(conf, correct)
    assert diagram.counts[-1] == 4 and diagram.counts.sum() == 10  # 14/15 and the three 1.0s share the last bin
    assert np.isnan(diagram.accuracy[5]) and diagram.counts[5] == 0  # an empty bin
    # perfectly calibrated and perfectly wrong extremes
    assert expected_calibration_error([1.0, 1.0], [True, True]) == 0.0
    assert expected_calibration_error([1.0, 1.0], [False, False]) == 1.0
    # one class: probability 1 and always right
    probs = np.ones((5, 1))
    conf1, ok1 = top_label(probs, np.zeros(5, dtype=int))
    assert expected_calibration_error(conf1, ok1) == 0.0 and classwise_calibration_error(probs, np.zeros(5)) == 0.0


def test_top_label_ties_take_the_first_class():
    probs = np.array([[0.5, 0.5, 0.0], [0.2, 0.4, 0.4]])
    conf, correct = top_label(probs, [1, 1])
    assert conf.tolist() == [0.5, 0.4] and correct.tolist() == [False, True]


@pytest.mark.parametrize("seed", [0, 3])
def test_adaptive_ece_brute_force(seed):
    _, probs, labels = _random(301, 5, seed)
    conf, correct = top_label(probs, labels)
    assert adaptive_calibration_error(conf, correct) == pytest.approx(_brute_adaptive(conf, correct), abs=1e-12)
    # equal mass: 300 untied samples in 15 bins of 20
    diagram = reliability_diagram(conf[:300], correct[:300], strategy="quantile")
    assert diagram.counts.tolist() == [20] * 15
    assert diagram.ece == pytest.approx(adaptive_calibration_error(conf[:300], correct[:300]), abs=1e-15)
    # ties: many equal confidences share one bin, fewer samples than bins
    tied = np.array([0.9] * 10 + [0.3] * 3)
    ok = np.array([1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 0, 0, 1], dtype=bool)
    assert adaptive_calibration_error(tied, ok) == pytest.approx(_brute_adaptive(tied, ok), abs=1e-12)
    assert adaptive_calibration_error(tied, ok) == pytest.approx(expected_calibration_error(tied, ok), abs=1e-12)
    assert adaptive_calibration_error([0.7], [True]) == pytest.approx(0.3)


@pytest.mark.parametrize("seed", [0, 4])
def test_classwise_ece_matches_torchmetrics_binary_per_class(seed):
    _, probs, labels = _random(250, 6, seed, scale=2.0)
    ref = np.mean([float(binary_calibration_error(torch.from_numpy(np.ascontiguousarray(probs[:, c])),
                                                  torch.from_numpy((labels == c).astype(np.int64)), n_bins=15))
                   for c in range(6)])
    assert classwise_calibration_error(probs, labels) == pytest.approx(ref, abs=1e-6)
    brute = np.mean([_brute_ece(probs[:, c], labels == c) for c in range(6)])
    assert classwise_calibration_error(probs, labels) == pytest.approx(brute, abs=1e-12)


def test_brier_and_nll_against_sklearn_and_torch():
    from sklearn.metrics import brier_score_loss

    logits, probs, labels = _random(200, 4, 5)
    brute = np.mean([sum((probs[i, c] - (labels[i] == c)) ** 2 for c in range(4)) for i in range(200)])
    assert brier_score(probs, labels) == pytest.approx(brute, abs=1e-12)
    sk = brier_score_loss(labels, probs, labels=[0, 1, 2, 3], scale_by_half=False)
    assert brier_score(probs, labels) == pytest.approx(sk, abs=1e-12)
    ref = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)))
    assert negative_log_likelihood(logits, labels) == pytest.approx(ref, abs=1e-12)
    ref2 = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits) / 2.5, torch.from_numpy(labels)))
    assert negative_log_likelihood(logits, labels, temperature=2.5) == pytest.approx(ref2, abs=1e-12)
    # huge logits stay finite
    assert math.isfinite(negative_log_likelihood(np.array([[1e4, -1e4]]), [1]))


def test_temperature_scaling_minimises_held_out_nll():
    from scipy.optimize import minimize_scalar

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=500)
    logits = rng.normal(size=(500, 5)) + 2.0 * np.eye(5)[labels]
    logits *= 4.0  # over-confident: the fitted T is > 1
    t = fit_temperature(logits, labels)
    ref = minimize_scalar(lambda lt: negative_log_likelihood(logits, labels, math.exp(lt)), bounds=(-5, 5),
                          method="bounded", options={"xatol": 1e-10})
    assert t > 1.0 and t == pytest.approx(math.exp(ref.x), rel=1e-4)
    assert negative_log_likelihood(logits, labels, t) <= negative_log_likelihood(logits, labels) + 1e-12
    scaler = TemperatureScaling().fit(logits, labels)
    assert scaler.temperature_ == t
    np.testing.assert_allclose(scaler.predict_proba(logits), softmax(logits / t), atol=1e-12)
    # separable split: the NLL falls towards 0 as T → 0; the fit goes there (within the 1e-3 clip)
    sep = np.array([[5.0, 0.0], [0.0, 5.0]])
    t_sep = fit_temperature(sep, [0, 1])
    assert 1e-3 <= t_sep < 0.5 and negative_log_likelihood(sep, [0, 1], t_sep) < 1e-9


def test_bad_input_errors():
    with pytest.raises(InputError, match="sum to 1"):
        brier_score([[0.5, 0.6]], [0])
    with pytest.raises(InputError, match="NaN"):
        classwise_calibration_error([[np.nan, 1.0]], [0])
    with pytest.raises(InputError, match=r"\[0, 2\)"):
        brier_score([[0.5, 0.5]], [2])
    with pytest.raises(InputError, match="0 confidences"):
        expected_calibration_error([], [])
    with pytest.raises(InputError, match="n_bins"):
        expected_calibration_error([0.5], [True], n_bins=0)
    with pytest.raises(InputError, match="not fitted"):
        TemperatureScaling().predict_proba([[1.0, 2.0]])
    with pytest.raises(InputError, match="two classes"):
        fit_temperature([[1.0]], [0])
