"""The model adapter (``gradtrust.nn``): one output contract for every capability, and the per-model cache."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

import gradtrust
from gradtrust.errors import GradTrustError, InputError, ModelError, UnknownNameError
from gradtrust.explanations import explain, voice
from gradtrust.introspection import Introspective
from gradtrust.nn import cache, clear_cache, logits_of, model_logits, prepare_inputs, scoring_state


class Plain(nn.Module):
    """A small CNN: convolutions, global average pooling, a final nn.Linear (5 classes)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.pool(self.body(x)))


class TwoOutputs(nn.Module):
    """The same network (the same submodules, so the same names) returning ``(logits, features)``."""

    def __init__(self, plain: Plain) -> None:
        super().__init__()
        self.body, self.pool, self.fc = plain.body, plain.pool, plain.fc

    def forward(self, x):
        h = self.pool(self.body(x))
        return self.fc(h), h


@pytest.fixture
def models():
    plain = Plain().eval()
    torch.manual_seed(1)
    return plain, TwoOutputs(plain).eval(), torch.randn(6, 3, 8, 8)


def _refusal(call) -> str:
    with pytest.raises(ModelError, match="output_index=0") as caught:
        call()
    assert isinstance(caught.value, GradTrustError)
    return str(caught.value)


# ------------------------------------------------------------------ one rule, one error, in every capability
def test_every_capability_refuses_several_outputs_with_the_same_error(models):
    _, tupled, x = models
    messages = {
        _refusal(lambda: gradtrust.score(tupled, x, "softmax")),
        _refusal(lambda: gradtrust.gradient_features(tupled, x)),
        _refusal(lambda: Introspective(epochs=1).fit(tupled, x, torch.arange(6) % 5)),
        _refusal(lambda: explain(tupled, x)),
    }
    assert len(messages) == 1, messages


def test_score_with_output_index_equals_the_plain_model(models):
    plain, tupled, x = models
    for backend in ("hooks", "vmap", "loop"):  # the per-sample fallbacks run the model too
        options = {"purview_backend": backend, "mc_samples": 3}
        theirs = gradtrust.score(plain, x, **options)
        ours = gradtrust.score(tupled, x, output_index=0, **options)
        assert ours.info == theirs.info and ours.skipped == theirs.skipped and list(ours.scores) == list(theirs.scores)
        assert torch.equal(ours.logits, theirs.logits)
        for name in theirs.scores:
            assert torch.equal(ours[name], theirs[name]), name
    micro = gradtrust.score(tupled, x, "gradtrust,odin", output_index=0, micro_batch=4)
    assert torch.equal(micro["odin"], gradtrust.score(plain, x, "gradtrust,odin")["odin"])


def test_gradient_features_with_output_index_equals_the_plain_model(models):
    plain, tupled, x = models
    for backend in ("hooks", "vmap", "loop"):
        theirs = gradtrust.gradient_features(plain, x, backend=backend)
        assert torch.equal(gradtrust.gradient_features(tupled, x, backend=backend, output_index=0), theirs)


def test_introspective_with_output_index_equals_the_plain_model(models, tmp_path):
    plain, tupled, x = models
    y = torch.arange(6) % 5
    theirs = Introspective(hidden=8, epochs=3, seed=0).fit(plain, x, y).predict(plain, x)
    intro = Introspective(hidden=8, epochs=3, seed=0, output_index=0).fit(tupled, x, y)
    ours = intro.predict(tupled, x)
    assert torch.equal(ours.logits, theirs.logits) and torch.equal(ours.prediction, theirs.prediction)
    assert torch.equal(ours.feed_forward_logits, theirs.feed_forward_logits)
    assert torch.equal(intro.module(tupled)(x), ours.logits)
    loaded = Introspective.load(intro.save(tmp_path / "intro"))  # the choice is saved with H
    assert loaded.output_index == 0 and torch.equal(loaded.predict(tupled, x).logits, ours.logits)


def test_explain_with_output_index_equals_the_plain_model(models):
    plain, tupled, x = models
    for path in ("closed_form", "autograd"):
        theirs = explain(plain, x, gradient_path=path)
        ours = explain(tupled, x, gradient_path=path, output_index=0)
        assert ours.layer == theirs.layer and ours.closed_form == theirs.closed_form == (path == "closed_form")
        for method in theirs.methods:
            assert torch.equal(ours.layer_maps[method], theirs.layer_maps[method]), method
    assert torch.equal(voice(tupled, x, output_index=0).uncertainty, voice(plain, x).uncertainty)


# ------------------------------------------------------------------ the contract itself
def test_logits_of_rules():
    z = torch.randn(2, 3)

    class WithLogits:
        logits = z

    assert logits_of(z) is z and logits_of((z,)) is z and logits_of(WithLogits()) is z
    assert logits_of({"feat": z[:, :1], "logits": z}, "logits") is z and logits_of([z[:, :1], z], 1) is z
    with pytest.raises(ModelError, match="output_index='feat'"):  # a dict: the suggestion is a key
        logits_of({"feat": z, "logits": z})
    with pytest.raises(ModelError, match="returned one tensor"):  # indexing a tensor would pick samples
        logits_of(z, 0)
    with pytest.raises(ModelError, match="output_index=2 does not select.*tuple of 2"):
        logits_of((z, z), 2)
    with pytest.raises(ModelError, match="str at output_index=1, not a logits tensor"):
        logits_of((z, "text"), 1)


def test_scoring_state_selects_the_output_while_inside(models):
    _, tupled, x = models
    with scoring_state(tupled, output_index=0):
        assert isinstance(tupled(x), torch.Tensor)
    assert isinstance(tupled(x), tuple) and not tupled._forward_hooks
    with pytest.raises(RuntimeError), scoring_state(tupled, output_index=0):
        raise RuntimeError("boom")
    assert isinstance(tupled(x), tuple)  # removed on error too
    assert torch.equal(model_logits(tupled, x, 0), tupled(x)[0])
    with pytest.raises(ModelError, match=r"logits of shape \(6, 5, 1\)"):
        model_logits(nn.Sequential(tupled.body, nn.Flatten(2), nn.Conv1d(8, 5, 64)), x)


def test_prepare_inputs_checks_the_batch_dimension_everywhere(models):
    plain, _, x = models
    for call in (lambda: gradtrust.gradient_features(plain, x[0]), lambda: gradtrust.score(plain, x[0]),
                 lambda: explain(plain, x[0])):
        with pytest.raises(InputError, match="no batch dimension"):
            call()
    assert prepare_inputs(plain.double(), x).dtype == torch.float64


class SizeChecking(Plain):
    """Asserts its input size, as torchvision's ViT does."""

    def forward(self, x):
        assert x.shape[-1] == 8, f"Wrong image width {x.shape[-1]}"
        return super().forward(x)


def test_a_model_that_cannot_run_on_the_inputs_is_an_input_error_everywhere():
    model, x = SizeChecking().eval(), torch.randn(2, 3, 8, 6)
    for call in (lambda: gradtrust.score(model, x, "softmax"), lambda: gradtrust.gradient_features(model, x),
                 lambda: explain(model, x)):
        with pytest.raises(InputError, match=r"could not run on inputs of shape \([12], 3, 8, 6\).*Wrong image width 6"):
            call()


# ------------------------------------------------------------------ the per-model cache
def test_final_layer_is_cached_until_the_model_changes(models):
    plain, _, x = models
    gradtrust.score(plain, x, "gradtrust")
    assert cache.cached_entries(plain)[("final_layer", None)] == {"name": "fc"}
    torch.manual_seed(5)
    plain.fc = nn.Linear(8, 5).eval()  # a new head: the old entries go, and the new layer is the one read
    assert cache.cached_entries(plain) == {}
    fresh = Plain().eval()
    fresh.fc = plain.fc
    assert torch.equal(gradtrust.score(plain, x, "gradtrust")["gradtrust"],
                       gradtrust.score(fresh, x, "gradtrust")["gradtrust"])
    explain(plain, x)
    assert {namespace for namespace, _ in cache.cached_entries(plain)} >= {"final_layer", "explanation_layer"}
    clear_cache(plain, "explanation_layer")
    assert "explanation_layer" not in {namespace for namespace, _ in cache.cached_entries(plain)}
    assert ("final_layer", None) in cache.cached_entries(plain)
    clear_cache()
    assert cache.cached_entries(plain) == {}


def test_failed_layer_resolution_is_not_cached(models):
    plain, _, x = models
    with pytest.raises(UnknownNameError):
        explain(plain, x, layer="nope")
    assert not [k for k in cache.cached_entries(plain) if k[0] == "explanation_layer"]


def test_cache_entries_die_with_the_model():
    plain, x = Plain().eval(), torch.randn(2, 3, 8, 8)
    gradtrust.score(plain, x, "gradtrust,purview_final")
    explain(plain, x)
    gradtrust.gradient_features(plain, x)
    assert cache.cached_entries(plain)
    ref = weakref.ref(plain)
    del plain
    gc.collect()
    assert ref() is None  # nothing cached holds the model alive
