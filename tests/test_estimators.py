"""The one estimator protocol (gradtrust.estimator), checked on every estimator: ``__init__`` stores only,
``fit`` returns ``self``, ``score_samples`` (shape, float64, orientation against an independent computation),
one ``NotFittedError``, the atomic ``save``/``load`` round trip (identical scores; an interrupted save leaves
nothing half-written), the refusal to overwrite another estimator, and clear layout errors at the boundary."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

import gradtrust
import gradtrust.errors
from gradtrust.data.digits import DigitsDataset
from gradtrust.detection.detector import Detector
from gradtrust.detection.mahalanobis import MahalanobisDetector
from gradtrust.errors import GradTrustError, InputError, ModelError, NotFittedError
from gradtrust.estimator import CONFIG_FILE, WEIGHTS_FILE, Estimator
from gradtrust.evaluation.calibration import TemperatureScaling
from gradtrust.gradcon import GradCON
from gradtrust.introspection import Introspective
from gradtrust.models import load_model


@dataclass
class Case:
    """One estimator under the protocol: how to build, fit and score it, and what its score must equal."""

    make: Callable[[], Estimator]
    params: dict[str, Any]       # passed to the constructor: get_params() returns them as given (same types)
    bad_params: dict[str, Any]   # stored without a word by __init__, refused by fit
    fit_args: tuple
    score_args: tuple            # what score_samples takes (a model first where the estimator needs one)
    expected: Callable[[Any], np.ndarray]  # the scores, computed independently from the fitted estimator


def _softmax_max(z: np.ndarray, t: float = 1.0) -> np.ndarray:
    e = np.exp(z / t - (z / t).max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).max(axis=1)


def _cases() -> dict[str, Case]:
    rng = np.random.default_rng(0)
    known, challenge = rng.lognormal(0.0, 1.0, (80, 4)), rng.lognormal(1.5, 1.0, (80, 4))
    test = np.r_[known[:10], challenge[:10]]
    labels = np.repeat([0, 1, 2], 20)
    feats = rng.normal(size=(60, 3)) + 4.0 * np.eye(3)[labels]
    logits = 3.0 * (rng.normal(size=(60, 3)) + 2.0 * np.eye(3)[labels])
    images = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    digits = load_model("digits:digits_linear", "DEFAULT").module
    x, y = DigitsDataset("train").tensors()

    def detector_expected(det: Detector) -> np.ndarray:  # logistic regression on standardised log features
        scaler, clf = det.pipeline_[0], det.pipeline_[1]
        z = (np.log(1e-30 + test) - scaler.mean_) / scaler.scale_
        return 1.0 / (1.0 + np.exp(-(z @ clf.coef_[0] + clf.intercept_[0])))

    def mahalanobis_expected(m: MahalanobisDetector) -> np.ndarray:
        d = [[(h - mu) @ m.precision_ @ (h - mu) for mu in m.means_] for h in feats[:20]]
        return -np.min(d, axis=1)

    def gradcon_expected(g: GradCON) -> np.ndarray:  # gamma = 0: minus the reconstruction error at 28x28
        from gradtrust.gradcon import to_working_size

        w = to_working_size(images[:6])
        return -((g.model_(w) - w) ** 2).mean(dim=(1, 2, 3)).double().numpy()

    def introspective_expected(i: Introspective) -> np.ndarray:
        return i.predict(digits, x[:20]).logits.double().softmax(1).max(1).values.numpy()

    return {
        "detector": Case(lambda: Detector("logistic", hidden=[8], seed=np.int64(1)),
                         {"kind": "logistic", "hidden": [8], "seed": np.int64(1)}, {"kind": "svm"},
                         (known, challenge), (test,), detector_expected),
        "mahalanobis": Case(MahalanobisDetector, {}, {}, (feats, labels), (feats[:20],), mahalanobis_expected),
        "temperature": Case(lambda: TemperatureScaling(tol=1e-12), {"tol": 1e-12}, {"max_iter": 0},
                            (logits, labels), (logits[:20],),
                            lambda t: _softmax_max(logits[:20], t.temperature_)),
        "gradcon": Case(lambda: GradCON(0.0, 0, epochs=1, batch_size=4, device="cpu"),
                        {"beta": 0.0, "gamma": 0, "epochs": 1, "device": "cpu"}, {"epochs": 0},
                        (images,), (images[:6],), gradcon_expected),
        "introspective": Case(lambda: Introspective(hidden=6, epochs=2, seed=1), {"hidden": 6, "epochs": 2},
                              {"hidden": 0}, (digits, x[:120], y[:120]), (digits, x[:20]), introspective_expected),
    }


CASES = _cases()


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request) -> Case:
    return CASES[request.param]


@pytest.fixture(scope="module")
def fitted(case):
    return case.make().fit(*case.fit_args)


def test_init_stores_only_and_fit_checks(case):
    est = case.make()
    params = est.get_params()
    assert all(type(params[k]) is type(v) and params[k] == v for k, v in case.params.items()), params  # not coerced
    assert set(vars(est)) == set(params) and not est.is_fitted()  # nothing fitted, nothing computed
    if case.bad_params:
        bad = type(est)(**{**params, **case.bad_params})  # __init__ accepts anything ...
        with pytest.raises(GradTrustError, match=next(iter(case.bad_params))):  # ... fit names the parameter
            bad.fit(*case.fit_args)


def test_fit_returns_self_and_scores(case, fitted):
    est = case.make()
    assert est.fit(*case.fit_args) is est
    scores = fitted.score_samples(*case.score_args)
    assert scores.dtype == np.float64 and scores.shape == (len(case.score_args[-1]),)
    np.testing.assert_allclose(scores, case.expected(fitted), rtol=1e-6, atol=1e-9)
    if hasattr(fitted, "score"):  # the old name, an alias for one release
        np.testing.assert_array_equal(fitted.score(*case.score_args), scores)


def test_not_fitted_is_one_error(case, tmp_path):
    assert gradtrust.NotFittedError is gradtrust.errors.NotFittedError
    est = case.make()
    for call in (lambda: est.score_samples(*case.score_args), lambda: est.save(tmp_path / "m")):
        with pytest.raises(NotFittedError, match=f"this {type(est).__name__} is not fitted yet") as caught:
            call()
        assert isinstance(caught.value, (GradTrustError, InputError, ModelError))
    assert not (tmp_path / "m").exists()


def test_save_load_round_trip(case, fitted, tmp_path):
    folder = fitted.save(tmp_path / "m", {"note": "kept"})
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["format"] == type(fitted).format_name and config["format_version"] == type(fitted).format_version
    loaded = type(fitted).load(folder)
    np.testing.assert_array_equal(loaded.score_samples(*case.score_args), fitted.score_samples(*case.score_args))
    saved = {k: v for k, v in fitted.get_params().items() if k not in type(fitted).unsaved_params}
    assert {k: loaded.get_params()[k] for k in saved} == {k: tuple(v) if isinstance(v, list) else v
                                                          for k, v in saved.items()}
    assert loaded.metadata_ == {"note": "kept"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folder left behind
    other = GradCON if not isinstance(fitted, GradCON) else MahalanobisDetector
    with pytest.raises(ModelError, match="estimator, not"):
        other.load(folder)


def test_save_refuses_another_estimator_unless_overwrite(case, fitted, tmp_path):
    folder = fitted.save(tmp_path / "m")
    fitted.save(folder)  # the same estimator again: allowed
    with pytest.raises(InputError, match="already holds a different estimator.*metadata"):
        fitted.save(folder, {"other": 1})
    other = TemperatureScaling().fit([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]], [0, 1, 1])
    if isinstance(fitted, TemperatureScaling):
        other = MahalanobisDetector().fit([[0.0], [1.0]], [0, 1])
    with pytest.raises(InputError, match="format"):
        other.save(folder)
    other.save(folder, overwrite=True)
    assert type(other).load(folder).get_params() == other.get_params()


def _failing_fsync(after: int):
    real, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) > after:
            raise OSError(28, "No space left on device")
        real(fd)
    return fsync


def test_interrupted_save_leaves_no_partial_folder(case, fitted, tmp_path, monkeypatch):
    import gradtrust.estimator as base

    with monkeypatch.context() as m:  # the disk fills up after the weights, before estimator.json
        m.setattr(base.os, "fsync", _failing_fsync(1))
        with pytest.raises(GradTrustError, match="No space left"):
            fitted.save(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []  # no folder, no temporary folder
    # into an existing folder (holding other things too): the earlier estimator stays whole
    folder = fitted.save(tmp_path / "m")
    (folder / "features").mkdir()
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with monkeypatch.context() as m:
        m.setattr(base.os, "fsync", _failing_fsync(1))
        with pytest.raises(GradTrustError, match="No space left"):
            fitted.save(folder, {"new": True}, overwrite=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    # killed between the two renames: new weights beside the old estimator.json are never loaded
    (folder / WEIGHTS_FILE).write_bytes(b"\x80\x04 a pickle, or half a file")
    with pytest.raises(ModelError, match="interrupted save"):
        type(fitted).load(folder)


def test_damaged_or_missing_folders_are_clear_errors(case, fitted, tmp_path):
    with pytest.raises(ModelError, match=f"not a saved {type(fitted).__name__} model"):
        type(fitted).load(tmp_path)
    folder = fitted.save(tmp_path / "m")
    config = json.loads((folder / CONFIG_FILE).read_text())
    del config["state"]
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelError, match="damaged"):
        type(fitted).load(folder)


@pytest.mark.parametrize("array", [np.zeros((40, 32, 32, 3), np.uint8), torch.rand(40, 32, 32, 3)])
def test_channels_last_images_are_refused_by_name(array):
    with pytest.raises(InputError, match=r"channels-last \(N, H, W, C\).*\(N, C, H, W\)"):
        GradCON(epochs=1).fit(array)
    cnn = load_model("digits:digits_cnn", "DEFAULT").module
    labels = torch.arange(40) % 10
    with pytest.raises(InputError, match=r"channels-last \(N, H, W, C\).*\(N, C, H, W\)"):
        Introspective(epochs=1).fit(cnn, array, labels)


def test_wrong_shapes_are_clear_errors():
    with pytest.raises(InputError, match="2-D"):
        Detector().fit(np.ones((4, 2, 2)), np.ones((4, 4)))
    maha = MahalanobisDetector().fit([[0.0, 1.0], [1.0, 0.0]], [0, 1])
    with pytest.raises(InputError, match=r"\(N, 2\)"):
        maha.score_samples(np.ones((3, 5)))
    with pytest.raises(InputError, match="2-D"):
        TemperatureScaling().fit([1.0, 2.0], [0, 1])
    cnn = load_model("digits:digits_cnn", "DEFAULT").module  # a wrong image size: the model's error, named
    with pytest.raises(InputError, match=r"could not run on inputs of shape \(4, 1, 5, 5\)"):
        Introspective(epochs=1).fit(cnn, torch.rand(4, 1, 5, 5), torch.arange(4))


def test_mlp_detector_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(1)
    known, challenge = rng.lognormal(0.0, 1.0, (60, 5)), rng.lognormal(1.0, 1.0, (60, 5))
    det = Detector("mlp", hidden=(16, 8), max_iter=30, seed=2).fit(known, challenge)
    loaded = Detector.load(det.save(tmp_path / "d"))
    np.testing.assert_array_equal(loaded.score_samples(known), det.score_samples(known))
    assert loaded.get_params() == det.get_params()
