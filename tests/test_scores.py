"""Every trust score against an independent per-sample computation of its definition (docs/methods.md)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import gradtrust
from gradtrust.errors import InputError, ModelError, UnknownNameError
from gradtrust.scores import Pass, get_method, method_specs
from reference_scores import reference_score

SPEC_METHODS = ["softmax", "entropy", "max_logit", "margin", "odin", "mc_dropout", "gradnorm", "purview_initial",
                "purview_final", "gradtrust", "gradtrust_topk", "brier", "logit_margin", "energy", "doctor"]
# The tests read the registry: a new built-in method is checked against its reference without edits here.
BUILTIN_METHODS = [s.name for s in method_specs() if s.module == "gradtrust.scores.methods"]
GRADIENT_METHODS = [name for name in BUILTIN_METHODS if Pass.COUNTERFACTUAL_GRADIENTS in get_method(name).needs]


class SmallNet(nn.Module):
    """Conv + BatchNorm + Dropout + Linear head: every kind of pass in one fast model."""

    def __init__(self, classes: int = 7):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, stride=2, groups=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                                      nn.Flatten())
        self.head = nn.Sequential(nn.Linear(32, 16), nn.LayerNorm(16), nn.ReLU(), nn.Dropout(0.4),
                                  nn.Linear(16, classes))

    def forward(self, x):
        return self.head(self.features(x))


def _randomise_bn(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model


def small_net() -> nn.Module:
    torch.manual_seed(1)
    return _randomise_bn(SmallNet()).eval()


def vit_tiny() -> nn.Module:
    """A torchvision VisionTransformer small enough for per-sample gradients of all its parameters."""
    torch.manual_seed(2)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2,
                                                 hidden_dim=32, mlp_dim=64, num_classes=6)
    nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision zero-initialises the head
    return model.eval()


def _final(model: nn.Module) -> nn.Module:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def _reference(model, x, method, **kw):
    ids = kw.pop("sample_ids", range(x.shape[0]))
    return torch.tensor([reference_score(model, x[i:i + 1], method, layer=kw.get("layer_module", _final(model)),
                                         sample_id=sid, **{k: v for k, v in kw.items() if k != "layer_module"})
                         for i, sid in zip(range(x.shape[0]), ids, strict=False)], dtype=torch.float64)


def test_available_methods_lists_every_spec_method():
    names = gradtrust.available_methods()
    assert set(SPEC_METHODS) <= set(names)
    assert "maxlogit_pnorm" in names
    assert len(names) == len(set(names))


@pytest.mark.parametrize("method", BUILTIN_METHODS)
def test_every_score_matches_its_per_sample_definition(method):
    model, x = small_net(), torch.randn(5, 3, 12, 12)
    result = gradtrust.score(model, x, [method], sample_ids=[10, 11, 12, 13, 14])
    expected = _reference(model, x, method, sample_ids=[10, 11, 12, 13, 14])
    torch.testing.assert_close(result[method], expected, rtol=1e-4, atol=1e-8)
    assert result[method].dtype == torch.float64 and result[method].shape == (5,)


@pytest.mark.parametrize("method", [m for m in BUILTIN_METHODS  # resnet18 has no dropout
                                    if Pass.MC_DROPOUT not in get_method(m).needs])
def test_resnet18_scores_match_definition(method):
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(gradtrust.score(model, x, [method])[method], _reference(model, x, method),
                               rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("name, image", [("resnet18", 32), ("alexnet", 64), ("vit_b_16", 32)])
def test_closed_form_equals_per_sample_autograd(name, image):
    kwargs = {"image_size": image} if name == "vit_b_16" else {}
    model = getattr(torchvision.models, name)(num_classes=10, **kwargs).eval()
    final = _final(model)
    nn.init.normal_(final.weight, std=0.05)  # vit_b_16's head starts at zero: make the logits informative
    x = torch.randn(3, 3, image, image)
    closed = gradtrust.score(model, x, GRADIENT_METHODS)
    autograd = gradtrust.score(model, x, GRADIENT_METHODS, gradient_path="autograd")
    assert closed.info["gradient_path"] == "closed_form" and autograd.info["gradient_path"] == "autograd"
    for method in GRADIENT_METHODS:
        torch.testing.assert_close(closed[method], autograd[method], rtol=1e-3, atol=0)
        torch.testing.assert_close(autograd[method], _reference(model, x, method), rtol=1e-3, atol=0)


def test_layer_option_uses_autograd_on_a_convolution():
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    layer = "layer4.1.conv2"
    result = gradtrust.score(model, x, ["gradtrust", "gradnorm"], layer=layer)
    assert result.info["gradient_path"] == "autograd" and result.parameters["gradtrust"]["layer"] == layer
    module = model.get_submodule(layer)
    for method in ("gradtrust", "gradnorm"):
        torch.testing.assert_close(result[method], _reference(model, x, method, layer_module=module), rtol=1e-3, atol=0)
    # rows of a convolution are output channels, not classes: top-k counterfactual classes are undefined
    topk = gradtrust.score(model, x, ["gradtrust_topk"], layer=layer)
    assert torch.isnan(topk["gradtrust_topk"]).all() and "one gradient row per class" in topk.reasons["gradtrust_topk"][0]


def test_layer_option_on_the_final_layer_agrees_with_closed_form():
    model, x = small_net(), torch.randn(4, 3, 12, 12)
    closed = gradtrust.score(model, x, GRADIENT_METHODS)
    named = gradtrust.score(model, x, GRADIENT_METHODS, layer="head.4", gradient_path="autograd")
    for method in GRADIENT_METHODS:
        torch.testing.assert_close(closed[method], named[method], rtol=1e-3, atol=0)


def test_batched_results_equal_per_sample_results():
    model, x = small_net(), torch.randn(6, 3, 12, 12)
    ids = torch.arange(100, 106)
    batched = gradtrust.score(model, x, sample_ids=ids)
    assert set(batched) == set(gradtrust.available_methods())
    for i in range(6):
        single = gradtrust.score(model, x[i:i + 1], sample_ids=ids[i:i + 1])
        for method in batched:
            # float32 forward passes of different batch sizes differ in the last bits
            torch.testing.assert_close(single[method], batched[method][i:i + 1], rtol=1e-4, atol=1e-7)
    # a shuffled batch gives every sample the same values (MC-dropout masks are seeded per sample id)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    shuffled = gradtrust.score(model, x[perm], sample_ids=ids[perm])
    for method in batched:
        torch.testing.assert_close(shuffled[method], batched[method][perm], rtol=1e-4, atol=1e-7)


def test_purview_backends_agree_with_the_loop():
    model, x = small_net(), torch.randn(4, 3, 12, 12)
    results = {b: gradtrust.score(model, x, ["purview_initial", "purview_final"], purview_backend=b)
               for b in ("hooks", "vmap", "loop")}
    assert {r.info["purview_backend"] for r in results.values()} == {"hooks", "vmap", "loop"}
    for method in ("purview_initial", "purview_final"):
        torch.testing.assert_close(results["hooks"][method], results["loop"][method], rtol=1e-4, atol=1e-10)
        torch.testing.assert_close(results["vmap"][method], results["loop"][method], rtol=1e-4, atol=1e-10)


def test_purview_on_a_vision_transformer_uses_the_hooks_and_is_exact():
    model, x = vit_tiny(), torch.randn(3, 3, 32, 32)
    auto = gradtrust.score(model, x, ["purview_initial", "purview_final"])
    # class token, position embedding and attention projections have closed forms (docs/per_sample.md)
    assert auto.info["purview_backend"] == "hooks" and "purview_fallback" not in auto.info
    for method in ("purview_initial", "purview_final"):
        torch.testing.assert_close(auto[method], _reference(model, x, method), rtol=1e-4, atol=1e-10)


def test_purview_memory_chunking_gives_the_same_numbers():
    model, x = small_net(), torch.randn(5, 3, 12, 12)
    whole = gradtrust.score(model, x, ["purview_initial", "purview_final"])
    chunked = gradtrust.score(model, x, ["purview_initial", "purview_final"], chunk_bytes=1)
    for method in whole:
        torch.testing.assert_close(whole[method], chunked[method], rtol=1e-6, atol=0)


@pytest.mark.parametrize("methods, options", [(None, {}), ("softmax,gradtrust,gradnorm", {}),
                                              ("purview_final", {"purview_backend": "loop"}),
                                              ("gradtrust", {"layer": "features.0"})])
def test_scoring_leaves_the_model_as_it_found_it(methods, options):
    """Whatever passes run (parameters are frozen only before a graph is recorded), flags and .grad come back."""
    model, x = small_net(), torch.randn(3, 3, 12, 12)
    model.train()
    model.features[1].eval()
    model.head[0].weight.requires_grad_(False)
    existing = torch.ones_like(model.head[4].weight)
    model.head[4].weight.grad = existing
    before_flags = {n: m.training for n, m in model.named_modules()}
    before_req = {n: p.requires_grad for n, p in model.named_parameters()}
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    gradtrust.score(model, x, methods, **options)
    assert {n: m.training for n, m in model.named_modules()} == before_flags
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before_req
    assert model.head[4].weight.grad is existing
    assert all(p.grad is None for n, p in model.named_parameters() if n != "head.4.weight")
    for key, value in model.state_dict().items():  # BatchNorm running stats untouched (eval mode)
        assert torch.equal(value, before_state[key]), key
    assert not any("forward" in m.__dict__ for m in model.modules())  # dropout patches removed


def test_micro_batches_give_the_whole_batch_numbers():
    """micro_batch scores a large batch in slices: the same scores, reasons, predictions and logits."""
    model, x = small_net(), torch.randn(7, 3, 12, 12)
    x[4] = float("nan")
    whole = gradtrust.score(model, x, sample_ids=torch.arange(10, 17))
    sliced = gradtrust.score(model, x, sample_ids=torch.arange(10, 17), micro_batch=3)
    assert list(sliced) == list(whole) and sliced.skipped == whole.skipped
    for method in whole:
        torch.testing.assert_close(sliced[method], whole[method], rtol=1e-5, atol=1e-9, equal_nan=True)  # float32 rounding
        assert sliced.reasons[method] == whole.reasons[method]
    assert torch.equal(sliced.prediction, whole.prediction)
    torch.testing.assert_close(sliced.logits, whole.logits, equal_nan=True)
    assert sliced.parameters == whole.parameters


def test_scoring_restores_the_model_after_an_error():
    model = small_net().train()
    with pytest.raises(InputError):
        gradtrust.score(model, torch.randn(2, 5, 12, 12))
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_a_model_without_a_final_linear_gets_a_clear_error_naming_layer():
    model = torchvision.models.squeezenet1_1(num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(ModelError, match="layer="):
        gradtrust.score(model, x, ["gradtrust"])
    default = gradtrust.score(model, x, ["softmax", "gradtrust", "gradnorm"][0:1])
    assert "softmax" in default
    everything = gradtrust.score(model, x, purview_backend="loop", mc_samples=2)
    assert "gradtrust" in everything.skipped and "layer=" in everything.skipped["gradtrust"]
    by_conv = gradtrust.score(model, x, ["gradtrust", "gradnorm"], layer="classifier.1")
    assert torch.isfinite(by_conv["gradtrust"]).all()


def test_mc_dropout_without_dropout_is_refused():
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ModelError, match="no dropout"):
        gradtrust.score(model, x, ["mc_dropout"])
    result = gradtrust.score(model, x, ["softmax", "entropy"])
    assert "mc_dropout" not in result
    assert "mc_dropout" in gradtrust.score(model, x, purview_backend="hooks").skipped


def test_mc_dropout_on_torchscript_says_why_it_is_skipped():
    """A scripted model with dropout: the reason is TorchScript (its layers cannot be switched), not "no dropout"."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.Dropout(0.3),
                              torch.nn.Linear(8, 3)).eval()
    scripted = torch.jit.script(net)
    x = torch.randn(2, 3, 2, 2)
    with pytest.raises(ModelError, match="TorchScript: its 1 dropout layer") as raised:
        gradtrust.score(scripted, x, ["mc_dropout"])
    assert "no dropout" not in str(raised.value)
    assert "TorchScript" in gradtrust.score(scripted, x, mc_samples=2).skipped["mc_dropout"]  # all methods
    assert "mc_dropout" in gradtrust.score(net, x, ["mc_dropout"], mc_samples=2)  # the eager model has it


def test_mc_dropout_masks_are_per_sample_and_deterministic():
    from gradtrust.scores.dropout import keep_mask

    ids = torch.arange(0, 200)
    mask = keep_mask((50,), 0.3, seed=0, sample_ids=ids, pass_index=0, layer_index=0, device=torch.device("cpu"))
    assert abs(mask.double().mean().item() - 0.7) < 0.01
    again = keep_mask((50,), 0.3, 0, ids.flip(0), 0, 0, torch.device("cpu"))
    assert torch.equal(mask, again.flip(0))
    other_pass = keep_mask((50,), 0.3, 0, ids, 1, 0, torch.device("cpu"))
    other_seed = keep_mask((50,), 0.3, 1, ids, 0, 0, torch.device("cpu"))
    assert not torch.equal(mask, other_pass) and not torch.equal(mask, other_seed)
    # masks of different samples are not correlated
    assert (mask[0] != mask[1]).any()
    model, x = small_net(), torch.randn(3, 3, 12, 12)
    a = gradtrust.score(model, x, ["mc_dropout"], seed=3)["mc_dropout"]
    b = gradtrust.score(model, x, ["mc_dropout"], seed=3)["mc_dropout"]
    c = gradtrust.score(model, x, ["mc_dropout"], seed=4)["mc_dropout"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_options_reach_the_methods():
    model, x = small_net(), torch.randn(3, 3, 12, 12)
    result = gradtrust.score(model, x, ["odin", "mc_dropout", "gradtrust_topk", "maxlogit_pnorm"],
                             odin_temperature=10.0, odin_epsilon=0.01, mc_samples=3, topk=2, pnorm_p=3.0)
    assert result.parameters["odin"] == {"odin_temperature": 10.0, "odin_epsilon": 0.01, "odin_epsilon_space": "input",
                                         "odin_input_std": None}
    assert result.parameters["gradtrust_topk"]["topk"] == 2
    for method, kw in [("odin", dict(odin_temperature=10.0, odin_epsilon=0.01)), ("mc_dropout", dict(mc_samples=3)),
                       ("gradtrust_topk", dict(topk=2)), ("maxlogit_pnorm", dict(pnorm_p=3.0))]:
        torch.testing.assert_close(result[method], _reference(model, x, method, **kw), rtol=1e-4, atol=1e-8)


def test_unknown_names_list_the_valid_ones():
    model, x = small_net(), torch.randn(2, 3, 12, 12)
    with pytest.raises(UnknownNameError, match="Valid methods: softmax"):
        gradtrust.score(model, x, ["softmx"])
    with pytest.raises(UnknownNameError, match="Did you mean softmax"):
        gradtrust.score(model, x, "softmx")
    with pytest.raises(UnknownNameError, match="odin_temperature"):
        gradtrust.score(model, x, odin_temp=3)
    with pytest.raises(UnknownNameError, match="not a module"):
        gradtrust.score(model, x, ["gradtrust"], layer="nope")
    with pytest.raises(ModelError, match="nn.Linear or"):
        gradtrust.score(model, x, ["gradtrust"], layer="head.1")
    with pytest.raises(ValueError, match="mc_samples"):
        gradtrust.score(model, x, ["mc_dropout"], mc_samples=0)


@pytest.mark.parametrize("inputs, message", [
    (torch.randn(12), "batch dimension first"),
    (torch.randn(0, 3, 12, 12), "empty batch"),
    (torch.zeros(2, 3, 12, 12, dtype=torch.uint8), "floating-point"),
    (torch.randn(2, 4, 12, 12), "could not run on inputs of shape"),
    ("not a tensor", "must be a tensor"),
])
def test_bad_inputs_get_clear_errors(inputs, message):
    with pytest.raises(InputError, match=message):
        gradtrust.score(small_net(), inputs)


class _Logits(nn.Module):
    """Returns fixed logits and features so degenerate cases can be set up exactly."""

    def __init__(self, features: torch.Tensor, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("h", features)
        self.fc = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.fc.weight.data.copy_(weight)

    def forward(self, x):
        return self.fc(self.h[x[:, 0].long()] * (1.0 + 0.0 * x[:, :1]))  # differentiable in x, as real models are


def test_logits_not_connected_to_the_input_still_score():
    """A model whose output ignores its input (no autograd path from x): ODIN leaves x unchanged and
    Purview falls back from the hook path to the exact per-sample loop."""

    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)

        def forward(self, x):
            return self.fc(torch.ones(x.shape[0], 3) * torch.arange(1.0, 4.0))

    result = gradtrust.score(Constant(), torch.randn(2, 5), ["odin", "purview_final", "softmax"])
    assert result.info["purview_backend"] in ("vmap", "loop") and torch.isfinite(result["purview_final"]).all()
    torch.testing.assert_close(result["odin"][0], result["odin"][1])


def test_non_finite_logits_give_nan_with_a_reason():
    features = torch.tensor([[1.0, 2.0, 3.0], [float("inf"), 1.0, 0.0], [float("nan"), 1.0, 2.0]])
    model = _Logits(features, torch.randn(4, 3))
    x = torch.arange(3.0).unsqueeze(1)
    result = gradtrust.score(model, x, purview_backend="loop")
    # one parameter tensor: Purview's "initial" group s[0:⌊(J−1)/2⌋] is empty, so it is undefined everywhere
    assert "too few parameter tensors" in result.reasons["purview_initial"][0]
    for method in [m for m in result if m != "purview_initial"]:
        assert torch.isfinite(result[method][0]), method
        assert torch.isnan(result[method][1:]).all(), method
        assert result.reasons[method][1] == result.reasons[method][2] == "non-finite logits"


def test_features_without_variance_make_gradient_scores_undefined():
    features = torch.tensor([[1.0, -1.0, 1.0], [0.0, 0.0, 0.0], [0.5, 2.0, -1.0]])
    model = _Logits(features, torch.randn(4, 3))
    result = gradtrust.score(model, torch.arange(3.0).unsqueeze(1), GRADIENT_METHODS)
    for method in ("gradtrust", "gradtrust_topk"):
        assert torch.isnan(result[method][:2]).all() and torch.isfinite(result[method][2])
        assert "Var_d(h_d²) = 0" in result.reasons[method][0]
    assert result["gradnorm"][1] == 0 and torch.isfinite(result["gradnorm"]).all()


def test_half_precision_models_give_float32_quality_statistics():
    model, x = small_net(), torch.randn(4, 3, 12, 12)
    full = gradtrust.score(model, x, ["softmax", "entropy", "gradtrust", "gradnorm", "purview_final"])
    half = gradtrust.score(model.to(torch.bfloat16), x, ["softmax", "entropy", "gradtrust", "gradnorm", "purview_final"])
    for method in full:
        assert half[method].dtype == torch.float64 and torch.isfinite(half[method]).all()
        torch.testing.assert_close(half[method], full[method], rtol=0.1, atol=1e-3)


def test_score_accepts_a_loaded_model_and_result_converts_to_a_dataframe():
    loaded = gradtrust.load_model("digits:digits_mlp", weights="DEFAULT")
    from gradtrust.data import DigitsDataset, collate_samples

    batch = collate_samples([DigitsDataset("test")[i] for i in range(8)])
    result = gradtrust.score(loaded, batch.inputs, sample_ids=batch.indices)
    frame = result.to_dataframe()
    assert list(frame.columns[:2]) == ["prediction", "softmax"] and len(frame) == 8
    assert (frame["prediction"].to_numpy() == batch.labels.numpy()).mean() > 0.5
    assert result.logits.dtype == torch.float32 and result.logits.shape == (8, 10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU machine)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_scores_match_cpu(dtype):
    model, x = small_net(), torch.randn(6, 3, 12, 12)
    cpu = gradtrust.score(model, x, sample_ids=torch.arange(6))
    gpu_model = small_net().cuda().to(dtype)
    gpu = gradtrust.score(gpu_model, x.cuda(), sample_ids=torch.arange(6))
    tol = dict(rtol=1e-3, atol=1e-6) if dtype == torch.float32 else dict(rtol=0.1, atol=1e-2)
    for method in cpu:
        assert gpu[method].device.type == "cpu" and torch.isfinite(gpu[method]).all(), method
        torch.testing.assert_close(gpu[method], cpu[method], **tol)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU machine)")
def test_cuda_graph_replay_gives_the_op_by_op_numbers():
    """The forward-pass scores replayed from a captured CUDA graph equal those run op by op, bit for bit, on
    new data (the static inputs are refreshed), on a second batch shape and with a NaN logit."""
    from gradtrust.scores.graphs import captured_graphs

    torch.manual_seed(0)
    model = small_net().cuda()
    methods = ["softmax", "entropy", "max_logit", "margin", "brier", "logit_margin", "energy", "doctor",
               "maxlogit_pnorm", "gradtrust", "gradtrust_topk", "gradnorm", "odin"]  # odin is never captured
    for batch in (6, 6, 5, 6):
        x = torch.randn(batch, 3, 12, 12, device="cuda")
        if batch == 5:
            x[2] = float("nan")
        graphed = gradtrust.score(model, x, methods)
        eager = gradtrust.score(model, x, methods, cuda_graphs=False)
        assert list(graphed) == methods
        for method in methods:
            torch.testing.assert_close(graphed[method], eager[method], rtol=0, atol=0, equal_nan=True)
            assert graphed.reasons[method] == eager.reasons[method]
        assert torch.equal(graphed.prediction, eager.prediction)
        torch.testing.assert_close(graphed.logits, eager.logits, rtol=0, atol=0, equal_nan=True)
    assert captured_graphs(model) == 2  # batch shapes 6 and 5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU machine)")
def test_a_method_cuda_cannot_capture_runs_op_by_op(monkeypatch):
    """A capture that fails (here: a host synchronisation inside a method) leaves the right numbers."""
    import gradtrust.scores.methods as methods_module
    from gradtrust.scores.graphs import captured_graphs

    original = methods_module.F.energy

    def synchronising_energy(logits):
        float(logits.sum().item())  # not allowed while CUDA records a graph
        return original(logits)

    monkeypatch.setattr(methods_module.F, "energy", synchronising_energy)
    model, x = small_net().cuda(), torch.randn(4, 3, 12, 12, device="cuda")
    for _ in range(2):
        graphed = gradtrust.score(model, x, ["softmax", "energy"])
        eager = gradtrust.score(model, x, ["softmax", "energy"], cuda_graphs=False)
        for method in ("softmax", "energy"):
            torch.testing.assert_close(graphed[method], eager[method], rtol=0, atol=0)
    assert captured_graphs(model) == 0


def test_graph_cut_without_odin_changes_no_number():
    """Without ODIN the graph starts at the first layer's output (its backward-to-input is skipped);
    Purview and the layer path must give what the full graph (with ODIN) gives."""
    model = torchvision.models.resnet18(num_classes=10).eval()  # in-place ReLU right after the cut
    x = torch.randn(2, 3, 32, 32)
    full = gradtrust.score(model, x, ["purview_initial", "purview_final", "gradtrust", "odin"], layer="conv1")
    cut = gradtrust.score(model, x, ["purview_initial", "purview_final", "gradtrust"], layer="conv1")
    for method in ("purview_initial", "purview_final", "gradtrust"):
        torch.testing.assert_close(cut[method], full[method], rtol=1e-5, atol=0)
    torch.testing.assert_close(cut["gradtrust"], _reference(model, x, "gradtrust", layer_module=model.conv1),
                               rtol=1e-3, atol=0)


class _TwoBranches(nn.Module):
    """Two convolutions fed by the input alone: the graph must start at both, not only at the first."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 2, 3), nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.cat([self.a(x).mean((2, 3)), self.b(x).mean((2, 3))], 1))


def test_purview_hooks_cover_parallel_branches_fed_by_the_input():
    torch.manual_seed(0)
    model, x = _TwoBranches().eval(), torch.randn(3, 1, 6, 6)
    hooks = gradtrust.score(model, x, ["purview_initial", "purview_final"], purview_backend="hooks")
    loop = gradtrust.score(model, x, ["purview_initial", "purview_final"], purview_backend="loop")
    for name in ("purview_initial", "purview_final"):
        torch.testing.assert_close(hooks[name], loop[name], rtol=1e-5, atol=1e-10)
