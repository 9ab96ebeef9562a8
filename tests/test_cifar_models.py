"""``cifar:`` specs: the architectures match the published checkpoints' parameter names and sizes, their weights load
from a file or the torch hub cache in each collection's published layout, and the networks score end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import gradtrust
from gradtrust.cli import main
from gradtrust.errors import ModelError, UnknownNameError
from gradtrust.models import available_models, load_model
from gradtrust.models.cifar_zoo import CATALOGUE, available_cifar_models, cifar_checkpoint
from gradtrust.models.state_dict import build_on_meta

# Parameter counts in millions, as the collections publish them: chenyaofo/pytorch-cifar-models' README model zoo
# tables (CIFAR-10, CIFAR-100) and akamaster/pytorch_resnet_cifar10's README table (He et al. 2016, Table 6).
PUBLISHED_PARAMS_M = {
    "resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85, "resnet110": 1.7,
    "cifar10_resnet20": 0.27, "cifar10_resnet32": 0.47, "cifar10_resnet44": 0.66, "cifar10_resnet56": 0.86,
    "cifar10_vgg11_bn": 9.76, "cifar10_vgg13_bn": 9.94, "cifar10_vgg16_bn": 15.25, "cifar10_vgg19_bn": 20.57,
    "cifar10_mobilenetv2_x0_5": 0.70, "cifar10_mobilenetv2_x0_75": 1.37, "cifar10_mobilenetv2_x1_0": 2.24,
    "cifar10_mobilenetv2_x1_4": 4.33, "cifar10_shufflenetv2_x0_5": 0.35, "cifar10_shufflenetv2_x1_0": 1.26,
    "cifar10_shufflenetv2_x1_5": 2.49, "cifar10_shufflenetv2_x2_0": 5.37, "cifar10_repvgg_a0": 7.84,
    "cifar10_repvgg_a1": 12.82, "cifar10_repvgg_a2": 26.82,
    "cifar100_resnet20": 0.28, "cifar100_resnet32": 0.47, "cifar100_resnet44": 0.67, "cifar100_resnet56": 0.86,
    "cifar100_vgg11_bn": 9.80, "cifar100_vgg13_bn": 9.99, "cifar100_vgg16_bn": 15.30, "cifar100_vgg19_bn": 20.61,
    "cifar100_mobilenetv2_x0_5": 0.82, "cifar100_mobilenetv2_x0_75": 1.48, "cifar100_mobilenetv2_x1_0": 2.35,
    "cifar100_mobilenetv2_x1_4": 4.50, "cifar100_shufflenetv2_x0_5": 0.44, "cifar100_shufflenetv2_x1_0": 1.36,
    "cifar100_shufflenetv2_x1_5": 2.58, "cifar100_shufflenetv2_x2_0": 5.55, "cifar100_repvgg_a0": 7.96,
    "cifar100_repvgg_a1": 12.94, "cifar100_repvgg_a2": 26.94,
}  # fmt: skip

# Keys read off the two repositories' module definitions (resnet.py, pytorch_cifar_models/*.py): a state dict of
# the published layout holds these names, with these shapes.
PUBLISHED_KEYS = {
    "resnet20": {"module.conv1.weight": (16, 3, 3, 3), "module.layer1.0.conv1.weight": (16, 16, 3, 3),
                 "module.layer2.0.bn2.running_var": (32,), "module.layer3.2.conv2.weight": (64, 64, 3, 3),
                 "module.linear.weight": (10, 64), "module.linear.bias": (10,)},
    "cifar10_resnet20": {"conv1.weight": (16, 3, 3, 3), "layer2.0.downsample.0.weight": (32, 16, 1, 1),
                         "layer3.0.downsample.1.running_mean": (64,), "fc.weight": (10, 64)},
    "cifar100_vgg11_bn": {"features.0.weight": (64, 3, 3, 3), "features.1.running_var": (64,),
                          "features.4.weight": (128, 64, 3, 3), "classifier.0.weight": (512, 512),
                          "classifier.6.weight": (100, 512)},
    "cifar10_mobilenetv2_x1_0": {"features.0.0.weight": (32, 3, 3, 3), "features.1.conv.0.0.weight": (32, 1, 3, 3),
                                 "features.1.conv.1.weight": (16, 32, 1, 1), "features.2.conv.0.0.weight": (96, 16, 1, 1),
                                 "features.18.0.weight": (1280, 320, 1, 1), "classifier.1.weight": (10, 1280)},
    "cifar10_shufflenetv2_x1_0": {"conv1.0.weight": (24, 3, 3, 3), "stage2.0.branch1.0.weight": (24, 1, 3, 3),
                                  "stage2.1.branch2.0.weight": (58, 58, 1, 1), "stage4.3.branch2.6.running_mean": (232,),
                                  "conv5.0.weight": (1024, 464, 1, 1), "fc.weight": (10, 1024)},
    "cifar100_repvgg_a0": {"stage0.rbr_dense.conv.weight": (48, 3, 3, 3), "stage0.rbr_1x1.bn.weight": (48,),
                           "stage1.0.rbr_identity.running_var": (48,), "stage3.13.rbr_dense.conv.weight": (192, 192, 3, 3),
                           "stage4.0.rbr_1x1.conv.weight": (1280, 192, 1, 1), "linear.weight": (100, 1280)},
}  # fmt: skip

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.201)


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch hub directory, as $TORCH_HOME/hub would be; nothing may be downloaded."""
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def refuse(*args, **kwargs):
        raise AssertionError("GradTrust tried to download something")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    return tmp_path / "torch-home" / "hub" / "checkpoints"


def published_state(name: str, module: torch.nn.Module) -> dict:
    """``module``'s weights saved the way its collection published them."""
    state = module.state_dict()
    if CATALOGUE[name].collection.startswith("akamaster"):  # trainer.py: DataParallel's state dict in a dict
        return {"state_dict": {f"module.{k}": v for k, v in state.items()}, "best_prec1": 91.73}
    return dict(state)  # chenyaofo: a plain state dict


def save_published(name: str, path, seed: int = 1) -> dict:
    """Random weights in the published layout (the architecture's own initialisation, BatchNorm's affine parameters
    and statistics drawn too, so that nothing equals a fresh network's); returns the plain state dict."""
    torch.manual_seed(seed)
    module = CATALOGUE[name].build(len(CATALOGUE[name].classes))
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1 + 0.1 * torch.randn_like(m.weight))
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    obj = published_state(name, module)
    # akamaster's files were written by torch 0.x: the legacy (non-zip) serialisation
    torch.save(obj, path, _use_new_zipfile_serialization=not CATALOGUE[name].collection.startswith("akamaster"))
    return module.state_dict()


def test_catalogue_names_and_listing():
    names = available_cifar_models()
    assert names[:5] == ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
    assert len(names) == 5 + 2 * 19 and set(names) == set(PUBLISHED_PARAMS_M)
    assert available_models("cifar") == [f"cifar:{n}" for n in names]
    assert set(available_models("cifar")) <= set(available_models())
    listed = CliRunner().invoke(main, ["models", "--family", "cifar"])
    assert listed.exit_code == 0 and listed.output.split() == [f"cifar:{n}" for n in names]


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS_M))
def test_parameter_count_matches_the_published_table(name):
    entry = CATALOGUE[name]
    module = build_on_meta(lambda: entry.build(len(entry.classes)))
    count = sum(p.numel() for p in module.parameters())
    digits = 1 if name == "resnet110" else 2
    assert round(count / 1e6, digits) == PUBLISHED_PARAMS_M[name]


@pytest.mark.parametrize("name", sorted(PUBLISHED_KEYS))
def test_state_dict_has_the_published_names(name):
    entry = CATALOGUE[name]
    module = build_on_meta(lambda: entry.build(len(entry.classes)))
    state = published_state(name, module)
    state = state.get("state_dict", state)
    for key, shape in PUBLISHED_KEYS[name].items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key


def test_zero_pad_shortcut_is_option_a():
    """He et al. 2016 §4.1 option A: subsample by 2, new channels zero, the old ones unchanged."""
    from gradtrust.models.cifar_nets import ZeroPadShortcut

    x = torch.randn(2, 16, 8, 8)
    y = ZeroPadShortcut(32)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()


# One architecture of each kind from each collection, and both data sets (the others share their modules).
ROUND_TRIP = [
    "resnet20",
    "resnet110",
    "cifar10_resnet20",
    "cifar100_resnet56",
    "cifar10_vgg11_bn",
    "cifar100_vgg16_bn",
    "cifar10_mobilenetv2_x0_5",
    "cifar100_mobilenetv2_x0_75",
    "cifar10_shufflenetv2_x0_5",
    "cifar100_shufflenetv2_x1_0",
    "cifar10_repvgg_a0",
    "cifar100_repvgg_a0",
]


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_published_layout_loads_back_from_a_file_and_the_hub_cache(name, tmp_path, hub_dir):
    entry = cifar_checkpoint(name)
    saved = save_published(name, tmp_path / entry.file_name)
    from_file = load_model(f"cifar:{name}", tmp_path / entry.file_name)
    hub_dir.mkdir(parents=True)
    (hub_dir / entry.file_name).write_bytes((tmp_path / entry.file_name).read_bytes())
    from_hub = load_model(f"cifar:{name}", "DEFAULT")
    in_spec = load_model(f"cifar:{name}:{tmp_path / entry.file_name}", "DEFAULT")  # as `benchmark --models` passes
    for loaded in (from_file, from_hub, in_spec):
        state = loaded.module.state_dict()
        assert state.keys() == saved.keys()
        assert all(torch.equal(state[k], saved[k]) for k in saved)
        assert loaded.num_classes == len(entry.classes) and loaded.class_names == list(entry.classes)
        assert loaded.weights_sha256 == from_file.weights_sha256
        assert loaded.meta["pretrained"] is True and loaded.meta["family"] == "cifar"
    assert from_hub.meta["weights_source"] == "torch hub cache"
    assert from_hub.weights == str((hub_dir / entry.file_name).resolve())
    if entry.collection.startswith("akamaster"):
        assert from_file.meta["state_dict_key"] == "state_dict"
        assert from_file.meta["stripped_prefixes"] == ["module."]


def test_missing_published_file_says_where_to_put_it(hub_dir):
    with pytest.raises(ModelError) as err:
        load_model("cifar:cifar10_resnet20", "DEFAULT")
    message = str(err.value)
    assert str(hub_dir / "cifar10_resnet20-4118986f.pt") in message
    assert (
        "https://github.com/chenyaofo/pytorch-cifar-models/releases/download/resnet/cifar10_resnet20-4118986f.pt"
        in message
    )
    assert "$TORCH_HOME" in message
    with pytest.raises(ModelError, match=r"resnet56-4bfd9763\.th"):
        load_model("cifar:resnet56", "default")
    with pytest.raises(ModelError, match=r"pretrained_models/resnet56-4bfd9763\.th"):
        load_model("cifar:resnet56", "default")


def test_spec_and_weights_errors(tmp_path):
    with pytest.raises(UnknownNameError, match="cifar:cifar10_resnet20"):
        load_model("cifar:cifar10_resnet02")
    with pytest.raises(ModelError, match="weights file not found"):
        load_model(f"cifar:resnet20:{tmp_path / 'absent.th'}")
    with pytest.raises(ModelError, match="weights file not found"):
        load_model("cifar:resnet20", str(tmp_path / "absent.th"))
    with pytest.raises(ModelError, match="weights file not found: resnet20-12fca82f.th"):  # akamaster's suffix
        load_model("cifar:resnet20", "resnet20-12fca82f.th")
    with pytest.raises(UnknownNameError, match="DEFAULT"):
        load_model("cifar:resnet20", "IMAGENET1K_V1")
    save_published("resnet20", tmp_path / "a.th")
    save_published("resnet20", tmp_path / "b.th")
    with pytest.raises(ModelError, match="give one of them"):
        load_model(f"cifar:resnet20:{tmp_path / 'a.th'}", tmp_path / "b.th")
    with pytest.raises(ModelError, match="do not match|do not fit"):  # an option-A file is no option-B network
        load_model("cifar:cifar10_resnet20", tmp_path / "a.th")


def test_fine_tuned_head_is_read_from_the_file(tmp_path):
    module = CATALOGUE["cifar10_resnet20"].build(7)
    torch.save(module.state_dict(), tmp_path / "seven.pt")
    loaded = load_model("cifar:cifar10_resnet20", tmp_path / "seven.pt")
    assert loaded.num_classes == 7 and loaded.class_names == [str(i) for i in range(7)]


def test_preprocessing_is_the_training_normalisation():
    """A 32×32 image becomes ``(x / 255 − mean) / std`` per channel, unresized (computed here with NumPy)."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    for spec, mean, std in (
        ("cifar:cifar10_resnet20", CIFAR10_MEAN, CIFAR10_STD),
        ("cifar:cifar100_resnet20", (0.507, 0.4865, 0.4409), (0.2673, 0.2564, 0.2761)),
        ("cifar:resnet20", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ):
        model = load_model(spec)
        got = model.transform(Image.fromarray(pixels)).numpy()
        expected = ((pixels / 255.0 - np.array(mean)) / np.array(std)).transpose(2, 0, 1)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
        assert model.meta["normalization_std"] == list(std)
    big = load_model("cifar:resnet20").transform(Image.fromarray(np.zeros((64, 48, 3), np.uint8)))
    assert big.shape == (3, 32, 32)


@pytest.mark.parametrize(
    "name",
    [
        "resnet20",
        "cifar100_resnet20",
        "cifar10_vgg11_bn",
        "cifar10_mobilenetv2_x0_5",
        "cifar100_shufflenetv2_x0_5",
        "cifar10_repvgg_a0",
    ],
)
def test_scores_end_to_end(name, tmp_path):
    """Published-layout weights → every trust score defined on a small batch (MC dropout where there is dropout)."""
    entry = cifar_checkpoint(name)
    save_published(name, tmp_path / entry.file_name)
    model = load_model(f"cifar:{name}", tmp_path / entry.file_name)
    methods = None if name == "resnet20" else "softmax,energy,gradtrust,gradnorm,purview_initial,purview_final"
    images = torch.stack([model.transform(Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8))) for i in range(3)])
    result = gradtrust.score(model, images, methods)
    assert len(result.methods) >= (6 if methods else 10)
    for method in result.methods:
        values = result[method].tolist()
        assert len(values) == 3 and all(math.isfinite(v) for v in values), method


def test_score_command_on_an_image_folder(tmp_path):
    """``gradtrust score --model cifar:… --weights FILE`` reads 32×32 PNGs through the model's preprocessing."""
    save_published("resnet20", tmp_path / "resnet20-12fca82f.th")
    data = tmp_path / "images"
    for label in ("cat", "dog"):
        (data / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((32, 32, 3), 60 * i + 10, np.uint8)).save(data / label / f"{i}.png")
    result = CliRunner().invoke(
        main,
        [
            "score",
            "--model",
            "cifar:resnet20",
            "--weights",
            str(tmp_path / "resnet20-12fca82f.th"),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "--methods",
            "softmax,gradtrust",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    import pandas as pd

    scores = pd.read_parquet(tmp_path / "run" / "scores.parquet")
    assert len(scores) == 4 and scores["gradtrust"].notna().all()
    assert sorted(scores["label"]) == [3, 3, 5, 5]  # the folders matched to CIFAR-10's cat and dog outputs
