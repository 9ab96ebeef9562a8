"""GradCON: the autoencoder, the training loss, the batched score, storage and bad input.

Every number is checked against an independent computation: the batched per-sample gradients against the
per-image autograd loop, the β = 0 training against a plain autoencoder loop written here, the β > 0 step
against torch.func's nested ``grad`` of the whole loss, the score against its formula.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gradtrust.errors import InputError, ModelError
from gradtrust.gradcon import GradCON, GradConAE, per_sample_terms, per_sample_terms_loop, to_working_size


def _images(n: int, c: int = 1, size: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g)


@pytest.fixture(scope="module")
def fitted() -> GradCON:
    return GradCON(epochs=2, batch_size=8, seed=3).fit(_images(16))


def test_architecture_sizes_and_decoder_layers():
    for c in (1, 3):
        ae = GradConAE(c)
        assert ae(torch.rand(2, c, 28, 28)).shape == (2, c, 28, 28)
        convs = [m for m in ae.encoder if isinstance(m, torch.nn.Conv2d)]
        assert [m.out_channels for m in convs] == [32, 32, 64, 64]
        assert all(m.kernel_size == (4, 4) and m.stride == (2, 2) and m.padding == (2, 2) for m in convs)
        assert [m.out_channels for m in ae.decoder_layers] == [64, 32, 32, c]
        assert ae.decoder_weight_names == ["decoder.0.weight", "decoder.2.weight", "decoder.4.weight",
                                           "decoder.6.weight"]
        assert isinstance(ae.decoder[-1], torch.nn.Sigmoid)
    for size in (8, 28, 32):
        x = _images(2, 3, size)
        y = to_working_size(x)
        assert y.shape == (2, 3, 28, 28) and float(y.min()) >= 0 and float(y.max()) <= 1
    x = _images(2, 1, 28)
    assert to_working_size(x) is x


def test_batched_per_sample_terms_match_the_per_image_loop():
    torch.manual_seed(1)
    ae = GradConAE(2).double()
    names = ae.decoder_weight_names
    params = dict(ae.named_parameters())
    reference = [torch.randn_like(params[n]) for n in names]
    x = torch.rand(7, 2, 28, 28, dtype=torch.float64)
    mse_b, cos_b = per_sample_terms(ae, x, reference, names, chunk_size=3)  # chunks of 3, 3, 1
    mse_l, cos_l = per_sample_terms_loop(ae, x, reference, names)
    torch.testing.assert_close(mse_b, mse_l, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(cos_b, cos_l, rtol=1e-10, atol=1e-12)
    # and the MSE is the plain per-image reconstruction error
    with torch.no_grad():
        torch.testing.assert_close(mse_b, (ae(x) - x).pow(2).mean(dim=(1, 2, 3)), rtol=1e-12, atol=1e-14)
    assert all(p.grad is None for p in ae.parameters())


def test_score_is_the_formula_and_matches_the_loop(fitted):
    x = _images(5, seed=9)
    terms = fitted.score_terms(x)
    xw = to_working_size(x)
    mse_l, cos_l = per_sample_terms_loop(fitted.model_, xw, fitted.reference_, fitted.model_.decoder_weight_names)
    np.testing.assert_allclose(terms.mse, mse_l.double().numpy(), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(terms.cos, cos_l.double().numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(terms.score, -terms.mse + 0.12 * terms.cos.mean(axis=1), rtol=0, atol=1e-15)
    np.testing.assert_array_equal(fitted.score(x), terms.score)
    zero = fitted.score_terms(x, gamma=0.0)
    np.testing.assert_array_equal(zero.score, -terms.mse)


def _plain_autoencoder(x: torch.Tensor, epochs: int, batch_size: int, seed: int, lr: float):
    """An independent plain MSE autoencoder loop; also returns the mean of every step's weight gradients."""
    torch.manual_seed(seed)
    ae = GradConAE(x.shape[1])
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(ae.parameters(), lr=lr)
    xw = to_working_size(x)
    grads: list[list[torch.Tensor]] = []
    for _ in range(epochs):
        order = torch.randperm(len(xw), generator=gen)
        for s in range(0, len(xw), batch_size):
            b = xw[order[s:s + batch_size]]
            opt.zero_grad()
            F.mse_loss(ae(b), b).backward()
            grads.append([m.weight.grad.clone() for m in ae.decoder_layers])
            opt.step()
    mean_grads = [torch.stack([g[i] for g in grads]).mean(0) for i in range(4)]
    return ae, mean_grads


def test_beta_gamma_zero_is_the_plain_reconstruction_error_autoencoder():
    x = _images(12, seed=4)
    det = GradCON(beta=0.0, gamma=0.0, epochs=2, batch_size=5, seed=7).fit(x)
    ae, mean_grads = _plain_autoencoder(x, epochs=2, batch_size=5, seed=7, lr=1e-3)
    for (n, p), q in zip(det.model_.named_parameters(), ae.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
    for r, g in zip(det.reference_, mean_grads, strict=True):
        torch.testing.assert_close(r, g, rtol=1e-5, atol=1e-9)
    assert det.steps_ == 6
    test = _images(6, seed=5)
    tw = to_working_size(test)
    with torch.no_grad():
        expected = -(ae(tw) - tw).pow(2).mean(dim=(1, 2, 3)).double().numpy()
    np.testing.assert_allclose(det.score(test), expected, rtol=1e-6, atol=1e-9)


def test_gradient_constraint_training_step_matches_nested_torch_func_grad():
    """Two steps with β > 0: the second one's update equals Adam on torch.func.grad of the whole loss
    ``MSE + β·mean_i(−cos(∂MSE/∂W_i, ḡ_i))`` with ḡ_i the first step's gradient."""
    from torch.func import functional_call, grad

    beta, lr = 0.5, 1e-2
    x = _images(4, seed=6)
    det = GradCON(beta=beta, gamma=0.12, epochs=2, batch_size=4, seed=2, lr=lr).fit(x)  # one batch per epoch

    torch.manual_seed(2)
    ae = GradConAE(1)
    xw = to_working_size(x)
    names = ae.decoder_weight_names
    opt = torch.optim.Adam(ae.parameters(), lr=lr)

    def mse_of(params: dict, b: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(functional_call(ae, params, (b,)), b)

    # step 1: MSE only (no gradient history yet)
    opt.zero_grad()
    mse_of(dict(ae.named_parameters()), xw).backward()
    ref = [dict(ae.named_parameters())[n].grad.clone() for n in names]
    opt.step()

    # step 2: the full loss, its gradient by nested torch.func.grad
    def total(params: dict) -> torch.Tensor:
        inner = grad(lambda dec: mse_of({**params, **dec}, xw))({n: params[n] for n in names})
        cos = torch.stack([F.cosine_similarity(inner[n].reshape(-1), r.reshape(-1), dim=0, eps=1e-12)
                           for n, r in zip(names, ref, strict=True)])
        return mse_of(params, xw) + beta * (-cos.mean())

    params = {n: p.detach() for n, p in ae.named_parameters()}
    full = grad(total)(params)
    opt.zero_grad()
    for n, p in ae.named_parameters():
        p.grad = full[n].clone()
    second = [full[n] for n in names]
    opt.step()
    for (n, p), q in zip(det.model_.named_parameters(), ae.parameters(), strict=True):
        # Adam divides by sqrt(v): float32 rounding of near-zero gradients moves a few weights by ~1e-5,
        # while a wrong loss moves them by ~lr = 1e-2.
        torch.testing.assert_close(p, q, rtol=0, atol=5e-5, msg=n)
    for r, g1, g2 in zip(det.reference_, ref, second, strict=True):
        torch.testing.assert_close(r, (g1 + g2) / 2, rtol=1e-4, atol=1e-8)
    assert det.steps_ == 2
    assert det.history_[1]["grad_loss"] < 0  # −cos: training pulls the gradient towards the history


def test_fit_is_deterministic_and_seeded():
    x = _images(10, seed=8)
    state = torch.random.get_rng_state()
    a = GradCON(epochs=1, batch_size=4, seed=11).fit(x)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
    b = GradCON(epochs=1, batch_size=4, seed=11).fit(x)
    c = GradCON(epochs=1, batch_size=4, seed=12).fit(x)
    test = _images(3, seed=1)
    np.testing.assert_array_equal(a.score(test), b.score(test))
    assert not np.array_equal(a.score(test), c.score(test))


def test_score_accepts_loaders_lists_uint8_and_one_image(fitted):
    x = _images(6, seed=2)
    expected = fitted.score(x)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(6)), batch_size=4)
    np.testing.assert_allclose(fitted.score(loader), expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(fitted.score(list(x)), expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(fitted.score(x.numpy()), expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(fitted.score(x[:1]), expected[:1], rtol=1e-6, atol=1e-9)
    q = (x * 255).round().to(torch.uint8)
    np.testing.assert_allclose(fitted.score(q), fitted.score(q.float() / 255), rtol=1e-6, atol=1e-9)


def test_score_accepts_gradtrust_datasets_and_batches(fitted):
    from gradtrust.data import DigitsDataset, collate_samples

    ds = DigitsDataset("test")
    subset = torch.utils.data.Subset(ds, range(5))
    x = torch.stack([ds[i].input for i in range(5)])
    expected = fitted.score(x)
    np.testing.assert_allclose(fitted.score(subset), expected, rtol=1e-6, atol=1e-9)  # Sample items
    loader = torch.utils.data.DataLoader(subset, batch_size=2, collate_fn=collate_samples)  # Batch items
    np.testing.assert_allclose(fitted.score(loader), expected, rtol=1e-6, atol=1e-9)


def test_save_load_round_trip(fitted, tmp_path):
    fitted.save(tmp_path / "m", metadata={"inlier": "3"})
    loaded = GradCON.load(tmp_path / "m")
    x = _images(4, seed=3)
    np.testing.assert_array_equal(loaded.score(x), fitted.score(x))
    assert loaded.get_params() == fitted.get_params() and loaded.metadata_ == {"inlier": "3"}
    assert loaded.steps_ == fitted.steps_ and loaded.history_ == fitted.history_
    assert GradCON.load(tmp_path / "m", gamma=0.0).gamma == 0.0
    with pytest.raises(ModelError, match="not a saved GradCON model"):
        GradCON.load(tmp_path)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (torch.empty(0, 1, 8, 8), "empty"),
        ([], "empty"),
        (None, "None"),
        (torch.rand(1, 8, 8), r"images\[None\]"),       # one image without its batch dimension
        (torch.rand(8, 8), r"images\[None, None\]"),
        ([torch.rand(1, 8, 8), torch.rand(1, 28, 28)], "mixed sizes"),
        (torch.rand(2, 1, 8, 8) * 16, r"\[0, 1\]"),
        (torch.full((2, 1, 8, 8), float("nan")), "NaN"),
        (torch.rand(2, 3, 8, 8), "1-channel"),
        (torch.ones(2, 1, 8, 8, dtype=torch.int64), "dtype"),
        ("images/", "cannot read"),
    ],
)
def test_bad_input_to_score(fitted, data, match):
    with pytest.raises(InputError, match=match):
        fitted.score(data)


def test_bad_input_to_fit_and_settings():
    with pytest.raises(InputError, match="at least 2"):
        GradCON(epochs=1).fit(_images(1))
    with pytest.raises(InputError, match="mixed sizes"):
        GradCON(epochs=1).fit([torch.rand(1, 8, 8), torch.rand(1, 8, 8), torch.rand(1, 9, 8)])
    with pytest.raises(ModelError, match="not fitted"):
        GradCON().score(_images(2))
    for kwargs in ({"beta": -1}, {"gamma": float("nan")}, {"epochs": 0}, {"lr": 0}, {"device": "nonsense"}):
        with pytest.raises(InputError):
            GradCON(**kwargs).fit(_images(2))
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            GradCON(device="cuda", epochs=1).fit(_images(2))
