"""Introspective learning: features against per-sample autograd of the definition, the bilinear first layer
against the dense one, predict/save/load consistency, and clear errors for bad training data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gradtrust
from gradtrust.data.digits import DigitsDataset
from gradtrust.errors import DataError, InputError, ModelError
from gradtrust.introspection import FeatureExtractor, Introspective, IntrospectiveHead
from gradtrust.models import load_model


def _per_sample_feature(model: nn.Module, layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The definition, one sample at a time: r = vec(∂J/∂W) / ‖·‖ with J = mean_c (z_c − 1)²."""
    rows = []
    for i in range(x.shape[0]):
        model.zero_grad(set_to_none=True)
        z = model(x[i:i + 1])
        loss = nn.functional.mse_loss(z, torch.ones_like(z))
        (g,) = torch.autograd.grad(loss, layer.weight)
        rows.append((g / g.norm()).reshape(-1))
    return torch.stack(rows)


def _dense(a: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    return (a[:, :, None] * h[:, None, :]).reshape(a.shape[0], -1)


@pytest.fixture(scope="module")
def digits():
    model = load_model("digits:digits_linear", "DEFAULT")
    xtr, ytr = DigitsDataset("train").tensors()
    xte, yte = DigitsDataset("test").tensors()
    return model, xtr[:300], ytr[:300], xte[:64], yte[:64]


def test_closed_form_equals_autograd_of_the_definition():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)).double()
    x = torch.randn(7, 6, dtype=torch.float64)
    closed = FeatureExtractor(model)(x)
    auto = FeatureExtractor(model, path="autograd")(x)
    want = _per_sample_feature(model, model[2], x)
    assert FeatureExtractor(model).layer is None  # discovered on the first batch
    torch.testing.assert_close(_dense(closed.a, closed.h).double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_dense(auto.a, auto.h).double(), want, rtol=1e-5, atol=1e-6)
    # closed form: a = (2/C)(z − 1) before normalisation
    z = model(x).detach()
    a = (2 / 4) * (z - 1)
    torch.testing.assert_close(closed.a.double(), a / a.norm(dim=1, keepdim=True), rtol=1e-5, atol=1e-6)


def test_autograd_path_for_a_head_that_is_not_the_logits():
    class Scaled(nn.Module):  # the final nn.Linear's output is not the logits: the closed form does not apply
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(6, 5), nn.ReLU())
            self.fc = nn.Linear(5, 3)

        def forward(self, x):
            return 2.0 * self.fc(self.body(x)) + 0.5

    torch.manual_seed(1)
    model = Scaled().double()
    x = torch.randn(5, 6, dtype=torch.float64)
    extractor = FeatureExtractor(model)
    got = extractor(x)
    assert extractor.closed_form is False and extractor.layer == "fc"
    torch.testing.assert_close(_dense(got.a, got.h).double(), _per_sample_feature(model, model.fc, x),
                               rtol=1e-5, atol=1e-6)
    # another nn.Linear than the final one, named
    inner = FeatureExtractor(model, layer="body.0")(x)
    torch.testing.assert_close(_dense(inner.a, inner.h).double(), _per_sample_feature(model, model.body[0], x),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ModelError, match="closed form"):
        FeatureExtractor(model, path="closed_form")(x)
    with pytest.raises(ModelError, match="nn.Linear"):
        FeatureExtractor(model, layer="body.1")


def test_bilinear_first_layer_equals_the_dense_layer():
    gen = torch.Generator().manual_seed(0)
    head = IntrospectiveHead(7, 11, hidden=5, generator=gen).double()
    a = torch.randn(4, 7, dtype=torch.float64)
    h = torch.randn(4, 11, dtype=torch.float64)
    torch.testing.assert_close(head(a, h), head.dense_forward(_dense(a, h)), rtol=1e-10, atol=1e-12)


def test_fit_predict_save_load(digits, tmp_path):
    model, xtr, ytr, xte, yte = digits
    intro = Introspective(hidden=16, epochs=3, seed=0).fit(model, xtr, ytr)
    out = intro.predict(model, xte, batch_size=32)
    with torch.no_grad():
        ff = model.module(xte)
    torch.testing.assert_close(out.feed_forward_logits, ff)
    assert torch.equal(out.feed_forward_prediction, ff.argmax(1)) and bool(out.valid.all())
    # H's logits = the dense network on the definition's features
    want = intro.head_.dense_forward(_per_sample_feature(model.module, model.module[1], xte).float()).detach()
    torch.testing.assert_close(out.logits, want, rtol=1e-4, atol=1e-4)
    assert torch.equal(out.prediction, out.logits.argmax(1))
    # one module for gradtrust.score: its softmax score is H's maximum softmax probability
    result = gradtrust.score(intro.module(model), xte, ["softmax"])
    torch.testing.assert_close(result["softmax"], out.logits.double().softmax(1).max(1).values, rtol=1e-5, atol=1e-6)
    # the functional layer on H's logits gives what the engine gives on the composed module
    engine = gradtrust.score(intro.module(model), xte, ["softmax", "energy", "maxlogit_pnorm"])
    mine = out.trust_scores(["softmax", "energy", "maxlogit_pnorm"])
    for name in mine:
        torch.testing.assert_close(mine[name], engine[name], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.trust_scores(["softmax"], feed_forward=True)["softmax"],
                               ff.double().softmax(1).max(1).values, rtol=1e-6, atol=1e-6)
    with pytest.raises(InputError, match="logits alone"):
        out.trust_scores(["gradtrust"])
    # the same seed gives the same H; save/load gives the same logits
    again = Introspective(hidden=16, epochs=3, seed=0).fit(model, xtr, ytr)
    assert torch.equal(again.predict(model, xte).logits, out.logits)
    loaded = Introspective.load(intro.save(tmp_path / "h"))
    assert torch.equal(loaded.predict(model, xte).logits, out.logits)
    assert loaded.info_["train_samples"] == 300 and loaded.layer == "1"


def test_fit_from_a_dataset_and_a_loader(digits):
    model, xtr, ytr, _, _ = digits
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xtr, ytr), batch_size=50)
    a1, h1, y1, _ = Introspective().features(model, loader)
    a2, h2, y2, _ = Introspective().features(model, xtr, ytr)
    assert torch.equal(a1, a2) and torch.equal(h1, h2) and torch.equal(y1, y2)
    a3, _, y3, _ = Introspective().features(model, DigitsDataset("train"))
    assert a3.shape == (896, 10) and torch.equal(y3[:300], ytr)


def test_bad_training_data(digits):
    model, xtr, ytr, _, _ = digits
    with pytest.raises(DataError, match="not classes of the model"):
        Introspective(epochs=1).fit(model, xtr, ytr + 5)
    with pytest.raises(InputError, match="empty"):
        Introspective(epochs=1).fit(model, xtr[:0], ytr[:0])
    with pytest.raises(InputError, match="one class only"):
        Introspective(epochs=1).fit(model, xtr[ytr == 3], ytr[ytr == 3])
    with pytest.raises(InputError, match="labels"):
        Introspective(epochs=1).fit(model, xtr, ytr[:10])
    # all-zero penultimate features: the gradient is zero, the feature undefined (NaN)
    zero = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Tanh(), nn.Linear(3, 2))
    x = torch.randn(20, 4)
    x[:3] = 0.0
    with pytest.raises(InputError, match="3 of 20 .* NaN"):
        Introspective(epochs=1).fit(zero, x, torch.arange(20) % 2)
    fitted = Introspective(epochs=1).fit(zero, x[3:], torch.arange(17) % 2)
    out = fitted.predict(zero, x)
    assert out.valid.tolist() == [False] * 3 + [True] * 17 and out.prediction[:3].tolist() == [-1] * 3
    assert bool(torch.isnan(out.logits[:3]).all()) and bool(torch.isfinite(out.logits[3:]).all())
    with pytest.raises(InputError, match="not fitted"):
        Introspective().predict(zero, x)
    with pytest.raises(InputError, match="hidden"):
        Introspective(hidden=0).fit(zero, x[3:], torch.arange(17) % 2)
    assert np.isfinite(fitted.info_["train_loss"][0])
