"""`gradtrust.models.loading.load_model`: specs, weights, preprocessing, class names. Nothing is downloaded:
every weights file is written by the test itself, from randomly initialised networks."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
import warnings

import pytest
import torch
import torchvision
import torchvision.models as tvm
from PIL import Image
from torch import nn

from gradtrust.errors import GradTrustError, ModelError, UnknownNameError
from gradtrust.models.base import LoadedModel
from gradtrust.models.loading import file_sha256, hub_checkpoint_path, load_model, read_state_dict


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The networks here are tiny: one intra-op thread is faster than two fighting over shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Any attempt to download fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"load_model tried to download: {args[:1]}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(tvm._api, "load_state_dict_from_url", refuse, raising=False)


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch hub directory, restored afterwards."""
    monkeypatch.setattr(torch.hub, "_hub_dir", torch.hub._hub_dir)  # undo set_dir at teardown
    directory = tmp_path / "hub"
    torch.hub.set_dir(str(directory))
    return directory


def sha256_of(path) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def outputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module.eval()(x)


X_IMAGE = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------- specs


def test_torchvision_random_weights():
    loaded = load_model("torchvision:mobilenet_v3_small")
    assert isinstance(loaded, LoadedModel)
    assert not loaded.module.training
    assert loaded.num_classes == 1000 and len(loaded.class_names) == 1000
    enum = tvm.MobileNet_V3_Small_Weights.DEFAULT
    assert loaded.class_names == enum.meta["categories"]
    assert repr(loaded.transform) == repr(enum.transforms())
    assert loaded.input_kind == "image" and loaded.clip_len is None
    assert loaded.weights is None and loaded.weights_sha256 is None
    assert loaded.meta["weights_kind"] == "random" and loaded.meta["pretrained"] is False
    assert loaded.spec == "torchvision:mobilenet_v3_small"
    assert outputs(loaded.module, X_IMAGE).shape == (2, 1000)
    image = Image.new("RGB", (80, 60), (120, 30, 200))
    assert loaded.transform(image).shape == (3, 224, 224)
    description = loaded.describe()
    json.dumps(description)  # a manifest must be able to hold it
    assert description["spec"] == "torchvision:mobilenet_v3_small" and description["weights_sha256"] is None


def test_torchvision_random_with_num_classes_has_index_names():
    loaded = load_model("torchvision:squeezenet1_0", num_classes=5)
    assert loaded.num_classes == 5 and loaded.class_names == ["0", "1", "2", "3", "4"]
    assert outputs(loaded.module, X_IMAGE).shape == (2, 5)
    assert loaded.meta["num_classes_source"] == "argument"


def test_every_torchvision_name_is_accepted_by_name_check():
    from gradtrust.models.loading import available_models

    names = available_models("torchvision")
    assert "torchvision:resnet18" in names and "torchvision:r3d_18" in names and "torchvision:swin3d_t" in names
    expected = set(tvm.list_models(module=tvm)) | set(tvm.list_models(module=tvm.video))
    assert {n.split(":", 1)[1] for n in names} == expected


def test_unknown_torchvision_name_lists_close_matches():
    with pytest.raises(UnknownNameError) as info:
        load_model("torchvision:resnt18")
    message = str(info.value)
    assert "resnt18" in message and "Did you mean" in message and "torchvision:resnet18" in message
    assert "torchvision:alexnet" in message  # the full list of valid names
    assert isinstance(info.value, KeyError) and isinstance(info.value, GradTrustError)


def test_unknown_family_and_bare_name():
    with pytest.raises(UnknownNameError, match="torchvision:<name>"):
        load_model("kaggle:resnet18")
    with pytest.raises(UnknownNameError, match="torchvision:resnet18"):
        load_model("resnet18")
    with pytest.raises(ModelError, match="not found"):
        load_model("no/such/model.pt")


def test_video_model_transform_and_clip_len():
    loaded = load_model("torchvision:r3d_18")
    assert loaded.input_kind == "video" and loaded.clip_len == 16
    assert loaded.num_classes == 400
    assert loaded.class_names == tvm.video.R3D_18_Weights.DEFAULT.meta["categories"]
    clip = torch.randint(0, 256, (4, 3, 36, 48), dtype=torch.uint8)  # (T, C, H, W)
    ready = loaded.transform(clip)
    assert ready.shape == (3, 4, 112, 112) and ready.dtype == torch.float32  # (C, T, H, W)
    tiny = torch.rand(1, 3, 2, 32, 32)
    assert outputs(loaded.module, tiny).shape == (1, 400)


def test_reference_geometry_for_models_whose_default_weights_need_another_size():
    from gradtrust.models.torchvision_models import reference_enum

    ref = reference_enum("vit_h_14", tvm.ViT_H_14_Weights)
    assert ref.meta["min_size"] == (224, 224)  # not the 518 px DEFAULT: random vit_h_14 is built at 224
    assert reference_enum("resnet18", tvm.ResNet18_Weights) is tvm.ResNet18_Weights.DEFAULT


# ------------------------------------------------------------------------------------- local weights


def _save(state, path, kind):
    if kind == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


@pytest.mark.parametrize("kind", ["pth", "safetensors", "wrapped"])
def test_local_state_dict_gives_identical_outputs(tmp_path, kind):
    torch.manual_seed(1)
    source = tvm.squeezenet1_0(num_classes=1000).eval()
    state = source.state_dict()
    if kind == "wrapped":  # a training checkpoint of a DistributedDataParallel model
        state = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3, "best_acc": 0.5}
    path = tmp_path / ("weights.safetensors" if kind == "safetensors" else "weights.pth")
    _save(state, path, kind)

    loaded = load_model("torchvision:squeezenet1_0", weights=str(path))
    assert torch.equal(outputs(loaded.module, X_IMAGE), outputs(source, X_IMAGE))
    assert loaded.weights_sha256 == sha256_of(path) == file_sha256(path)
    assert loaded.weights == str(path.resolve())
    assert loaded.meta["weights_kind"] == "file"
    assert loaded.class_names == tvm.SqueezeNet1_0_Weights.DEFAULT.meta["categories"]
    if kind == "wrapped":
        assert loaded.meta["state_dict_key"] == "state_dict"
        assert loaded.meta["stripped_prefixes"] == ["module."]
        assert "dropped_entries" not in loaded.meta  # epoch, best_acc lie outside the state dict


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "squeezenet1_0"])  # linear head, 1x1 conv head
def test_fine_tuned_num_classes(tmp_path, arch):
    torch.manual_seed(2)
    source = tvm.get_model(arch, num_classes=7).eval()
    path = tmp_path / "finetuned.pth"
    torch.save(source.state_dict(), path)

    inferred = load_model(f"torchvision:{arch}", weights=path)  # a Path works too
    assert inferred.num_classes == 7 and inferred.class_names == [str(i) for i in range(7)]
    assert inferred.meta["num_classes_source"] == "inferred from weights"
    assert torch.equal(outputs(inferred.module, X_IMAGE), outputs(source, X_IMAGE))

    given = load_model(f"torchvision:{arch}", weights=str(path), num_classes=7)
    assert given.num_classes == 7 and given.meta["num_classes_source"] == "argument"
    assert torch.equal(outputs(given.module, X_IMAGE), outputs(source, X_IMAGE))


def test_mismatched_shapes_error_lists_keys_and_suggests_num_classes(tmp_path):
    path = tmp_path / "finetuned.pth"
    torch.save(tvm.mobilenet_v3_small(num_classes=7).state_dict(), path)
    with pytest.raises(ModelError) as info:
        load_model("torchvision:mobilenet_v3_small", weights=str(path), num_classes=10)
    message = str(info.value)
    assert "classifier.3.weight" in message and "[7, 1024]" in message and "[10, 1024]" in message
    assert "classifier.3.bias" in message
    assert "--num-classes 7" in message


def test_weights_of_another_architecture_are_refused(tmp_path):
    other = tmp_path / "squeezenet1_1.pth"
    torch.save(tvm.squeezenet1_1().state_dict(), other)  # same keys as squeezenet1_0, other shapes
    with pytest.raises(ModelError, match="wrong shape") as info:
        load_model("torchvision:squeezenet1_0", weights=str(other))
    assert "features.0.weight" in str(info.value)

    foreign = tmp_path / "mobilenet.pth"
    torch.save(tvm.mobilenet_v3_small().state_dict(), foreign)
    with pytest.raises(ModelError, match="missing keys") as info:
        load_model("torchvision:squeezenet1_0", weights=str(foreign))
    assert "unexpected keys" in str(info.value)


def test_bad_weights_files(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model("torchvision:squeezenet1_0", weights=str(tmp_path / "missing.pth"))
    pickled = tmp_path / "pickled_model.pth"
    torch.save(tvm.squeezenet1_0(), pickled)  # a whole model object, not a state dict
    with pytest.raises(ModelError, match="SqueezeNet.*weights_only=True"):
        load_model("torchvision:squeezenet1_0", weights=str(pickled))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="cannot read"):
        read_state_dict(garbage)


# --------------------------------------------------------------------------------- weights enums (hub)


def test_default_weights_absent_from_hub_says_where_and_from_where(hub_dir):
    enum = tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1
    expected = hub_dir / "checkpoints" / os.path.basename(enum.url)
    for weights in ("DEFAULT", "IMAGENET1K_V1", "MobileNet_V3_Small_Weights.IMAGENET1K_V1"):
        with pytest.raises(ModelError) as info:
            load_model("torchvision:mobilenet_v3_small", weights=weights)
        message = str(info.value)
        assert str(expected) in message and enum.url in message
    assert hub_checkpoint_path(enum) == expected
    assert not expected.exists()


def test_local_copy_of_an_official_checkpoint_is_recognised(tmp_path):
    enum = tvm.SqueezeNet1_1_Weights.IMAGENET1K_V1
    path = tmp_path / os.path.basename(enum.url)  # e.g. downloaded by hand into a project folder
    torch.save(tvm.squeezenet1_1().state_dict(), path)
    with pytest.warns(UserWarning, match="SHA-256"):
        loaded = load_model("torchvision:squeezenet1_1", weights=str(path))
    assert loaded.meta["weights_enum"] == "SqueezeNet1_1_Weights.IMAGENET1K_V1"
    assert loaded.weights == str(path.resolve()) and loaded.weights_sha256 == sha256_of(path)


def test_lightning_checkpoint_prefix(tmp_path):
    source = tvm.squeezenet1_1(num_classes=3).eval()
    path = tmp_path / "epoch=3.ckpt"
    state = {f"model.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"lr": 0.1}}, path)
    loaded = load_model("torchvision:squeezenet1_1", weights=str(path))
    assert loaded.meta["stripped_prefixes"] == ["model."] and loaded.num_classes == 3
    assert torch.equal(outputs(loaded.module, X_IMAGE), outputs(source, X_IMAGE))


def test_unknown_or_foreign_weights_enum(hub_dir):
    with pytest.raises(UnknownNameError, match="IMAGENET1K_V1"):
        load_model("torchvision:mobilenet_v3_small", weights="IMAGENET1K_V7")
    with pytest.raises(ModelError, match="MobileNet_V3_Small_Weights"):
        load_model("torchvision:mobilenet_v3_small", weights="ResNet18_Weights.IMAGENET1K_V1")
    with pytest.raises(ModelError, match="1000 classes"):
        load_model("torchvision:mobilenet_v3_small", weights="DEFAULT", num_classes=7)
    with pytest.raises(ModelError, match="feature extraction"):
        load_model("torchvision:vgg16", weights="IMAGENET1K_FEATURES")


def test_default_weights_present_in_hub_are_loaded(hub_dir):
    enum = tvm.MobileNet_V3_Small_Weights.DEFAULT
    torch.manual_seed(3)
    source = tvm.mobilenet_v3_small().eval()
    path = hub_dir / "checkpoints" / os.path.basename(enum.url)
    path.parent.mkdir(parents=True)
    torch.save(source.state_dict(), path)

    with pytest.warns(UserWarning, match="does not match the official"):  # not the real file: random weights
        loaded = load_model("torchvision:mobilenet_v3_small", weights="DEFAULT")
    assert loaded.meta["sha256_matches_official"] is False
    assert loaded.weights == "MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    assert loaded.weights_sha256 == sha256_of(path)
    assert loaded.class_names == enum.meta["categories"]
    assert repr(loaded.transform) == repr(enum.transforms())
    assert loaded.meta["weights_url"] == enum.url and loaded.meta["weights_file"] == str(path)
    assert torch.equal(outputs(loaded.module, X_IMAGE), outputs(source, X_IMAGE))


def test_googlenet_hub_checkpoint_with_aux_heads(hub_dir):
    """Official GoogLeNet files hold the auxiliary heads and expect transform_input=True."""
    enum = tvm.GoogLeNet_Weights.DEFAULT
    torch.manual_seed(4)
    source = tvm.GoogLeNet(aux_logits=True, transform_input=True, init_weights=False).eval()
    path = hub_dir / "checkpoints" / os.path.basename(enum.url)
    path.parent.mkdir(parents=True)
    torch.save(source.state_dict(), path)

    with pytest.warns(UserWarning, match="SHA-256"):
        loaded = load_model("torchvision:googlenet", weights="IMAGENET1K_V1")
    assert loaded.module.aux1 is None and loaded.module.aux_logits is False
    assert loaded.meta["transform_input"] is True
    assert torch.equal(outputs(loaded.module, X_IMAGE), outputs(source, X_IMAGE))


# ------------------------------------------------------------------------------- model files, timm


def test_torchscript_file(tmp_path):
    torch.manual_seed(5)
    source = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 6)).eval()
    x = torch.rand(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in recent torch
        traced = torch.jit.trace(source, x)
    path = tmp_path / "model.ts"
    traced.save(str(path))

    loaded = load_model(str(path))
    assert loaded.meta["family"] == "torchscript"
    assert loaded.input_kind == "tensor" and loaded.transform is None
    assert loaded.num_classes == 6 and loaded.class_names == [str(i) for i in range(6)]
    assert loaded.weights_sha256 == sha256_of(path)
    assert torch.equal(outputs(loaded.module, x), outputs(source, x))
    assert load_model(path, num_classes=6).num_classes == 6  # pathlib.Path spec


def test_pickled_model_file_and_state_dict_given_as_model(tmp_path):
    source = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    path = tmp_path / "whole_model.pt"
    torch.save(source, path)
    with pytest.raises(ModelError, match="--trust-model-file"):  # unpickling a module is opt-in (issue 12)
        load_model(str(path))
    loaded = load_model(str(path), trust_model_file=True)
    assert loaded.meta["family"] == "pickle" and loaded.num_classes == 3
    x = torch.rand(4, 3, 2, 2)
    assert torch.equal(outputs(loaded.module, x), outputs(source, x))

    state_path = tmp_path / "state.pt"
    torch.save(source.state_dict(), state_path)
    with pytest.raises(ModelError, match="state dict, not a model"):
        load_model(str(state_path))


def test_module_object_with_state_dict(tmp_path):
    torch.manual_seed(6)
    trained = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    path = tmp_path / "w.safetensors"
    _save(trained.state_dict(), path, "safetensors")
    loaded = load_model(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), weights=str(path))
    x = torch.rand(4, 12)
    assert torch.equal(outputs(loaded.module, x), outputs(trained, x))
    assert loaded.weights_sha256 == sha256_of(path) and loaded.num_classes == 3


def test_timm_random_model_and_transform():
    pytest.importorskip("timm")
    loaded = load_model("timm:resnet10t", num_classes=5)
    assert loaded.num_classes == 5 and loaded.class_names == ["0", "1", "2", "3", "4"]
    assert loaded.meta["family"] == "timm" and loaded.meta["weights_kind"] == "random"
    ready = loaded.transform(Image.new("RGB", (50, 40), (10, 200, 30)))
    assert ready.shape == (3, 224, 224)  # timm test size of resnet10t
    assert outputs(loaded.module, ready[None, :, :64, :64]).shape == (1, 5)


def test_timm_local_weights_infer_num_classes(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(7)
    source = timm.create_model("test_vit", pretrained=False, num_classes=7).eval()
    path = tmp_path / "model.safetensors"
    _save(source.state_dict(), path, "safetensors")

    loaded = load_model("timm:test_vit", weights=str(path))
    assert loaded.num_classes == 7 and loaded.meta["num_classes_source"] == "inferred from weights"
    x = torch.rand(1, 3, 160, 160)
    assert torch.equal(outputs(loaded.module, x), outputs(source, x))
    assert loaded.weights_sha256 == sha256_of(path)
    with pytest.raises(ModelError, match="local file"):
        load_model("timm:test_vit", weights="DEFAULT")
    with pytest.raises(UnknownNameError, match="timm:test_vit"):
        load_model("timm:test_vitt")


def test_timm_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(ModelError, match=r"gradtrust\[timm\]"):
        load_model("timm:resnet10t")


# ---------------------------------------------------------------------------- digits, device, misc


def _digits_or_skip():
    try:
        return importlib.import_module("gradtrust.models.digits")
    except ImportError as exc:
        pytest.skip(f"gradtrust.models.digits is not available yet: {exc}")


def test_digits_models():
    digits = _digits_or_skip()
    name = digits.available_digits_models()[0]
    random_model = load_model(f"digits:{name}")
    assert random_model.input_kind == "tensor" and random_model.transform is None
    assert random_model.class_names == [str(c) for c in digits.DIGITS_CLASSES]
    assert random_model.meta["weights_kind"] == "random" and random_model.weights_sha256 is None
    bundled = load_model(f"digits:{name}", weights="DEFAULT")
    assert bundled.weights == "bundled"
    assert bundled.weights_sha256 == hashlib.sha256(digits.digits_weights_file(name).read_bytes()).hexdigest()
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(outputs(bundled.module, x), outputs(digits.build_digits_model(name), x))
    with pytest.raises(UnknownNameError, match="Valid names"):
        load_model("digits:no_such_net")


def test_device_and_num_classes_validation():
    with pytest.raises(ModelError, match="device"):
        load_model("torchvision:squeezenet1_0", device="no-such-device")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="cuda"):
            load_model("torchvision:squeezenet1_0", device="cuda")
    with pytest.raises(ModelError, match="num_classes"):
        load_model("torchvision:squeezenet1_0", num_classes=0)
    with pytest.raises(ModelError, match="num_classes"):
        load_model("torchvision:squeezenet1_0", num_classes=2.5)


def test_torchvision_version_recorded():
    loaded = load_model("torchvision:squeezenet1_0")
    assert loaded.meta["torchvision_version"] == torchvision.__version__
    assert loaded.describe()["meta"]["torch_version"] == torch.__version__


def test_model_sources_are_found_by_family(monkeypatch):
    """specs.SOURCES decides what ``<family>:<name>`` loads and what available_models lists."""
    from gradtrust.errors import ModelError
    from gradtrust.models import load_model
    from gradtrust.models.base import LoadedModel
    from gradtrust.models.specs import SOURCES, ModelSource, available_models, register_source

    assert set(SOURCES) == {"torchvision", "timm", "digits", "cifar"}
    seen = []

    def load(name, weights, num_classes):
        seen.append((name, weights, num_classes))
        return LoadedModel(module=torch.nn.Linear(2, 3), transform=None, class_names=["a", "b", "c"],
                           num_classes=3, spec="", input_kind="tensor")

    monkeypatch.setitem(SOURCES, "digits", ModelSource("digits", load, lambda: ["tiny_fake"]))
    loaded = load_model("digits:tiny_fake", num_classes=3)
    assert seen == [("tiny_fake", None, 3)] and loaded.spec == "digits:tiny_fake"
    assert available_models("digits") == ["digits:tiny_fake"]
    listed = available_models()
    assert "digits:tiny_fake" in listed and not any(s.startswith("timm:") for s in listed)  # timm only when asked
    with pytest.raises(ModelError, match="SPEC_FAMILIES"):
        register_source(ModelSource("onnx", load, list))
