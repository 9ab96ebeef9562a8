"""The ``--data`` specs for data sets in their distributed formats (``gradtrust.data.specs``).

Every format is written here by the test, byte for byte as the release ships it (``tests/data_formats.py``), then
read back through the API and ``gradtrust score``; missing and malformed files must give a clear ``DataError``.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import sys
import tarfile
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from data_formats import (
    CORRUPTIONS_19,
    dump_py2,
    write_cifar10,
    write_cifar100,
    write_cifar_c,
    write_hf_folder,
    write_mnist,
    write_svhn,
    write_wds,
    write_wnid_folders,
)
from gradtrust.cli import main
from gradtrust.data import (
    COMMON_CORRUPTIONS,
    CIFARDataset,
    WebDatasetShards,
    available_datasets,
    expand_braces,
    open_data_spec,
)
from gradtrust.data.arrays import image_to_tensor
from gradtrust.data.open import open_dataset
from gradtrust.errors import DataError, UnknownNameError
from gradtrust.models import LoadedModel, model_for_dataset, restrict_outputs
from gradtrust.runs.identity import dataset_identity

NETS = """
from torch import nn

def build(num_classes=10, channels=3):
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, num_classes))
"""


@pytest.fixture
def nets(tmp_path, monkeypatch) -> str:
    """The ``module:factory`` spec of a tiny convolutional classifier for any image size; file hashes cached in tmp."""
    package = tmp_path / "spec_nets"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(NETS))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "spec_nets", raising=False)
    monkeypatch.setenv("GRADTRUST_CACHE_DIR", str(tmp_path / "cache"))
    return "spec_nets:build"


def pixels(sample) -> np.ndarray:
    """A default-transform sample back to uint8 (H, W, C)."""
    return (sample.input * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def score(*args: str):
    return CliRunner().invoke(main, ["score", *args, "--no-progress"], catch_exceptions=False)


def one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


# --------------------------------------------------------------------------- the registry


def test_cli_and_api_list_the_same_names_and_every_layout():
    result = CliRunner().invoke(main, ["datasets", "--names"])
    assert result.exit_code == 0, result.output
    assert result.output.split() == available_datasets()
    expected = {
        "cifar10",
        "cifar100",
        "cifar10c",
        "cifar100c",
        "imagenet-c",
        "imagenet-a",
        "imagenet-r",
        "imagenet-o",
        "svhn",
        "mnist",
        "textures",
        "ood",
        "hf-datasets",
        "wds",
    }
    assert expected <= set(available_datasets())
    listing = CliRunner().invoke(main, ["datasets"]).output
    for name in expected:
        assert f"\n{name}:" in f"\n{listing}"
    assert "data_batch_1" in listing and "t10k-images-idx3-ubyte" in listing and "dataset_info.json" in listing
    one = CliRunner().invoke(main, ["datasets", "svhn"])
    assert one.output.startswith("svhn:FILE.mat") and "cifar10" not in one.output
    one_line_error(CliRunner().invoke(main, ["datasets", "cifar11"]), "unknown data spec 'cifar11'", "cifar10")


def test_spec_fields_options_and_errors(tmp_path):
    with pytest.raises(UnknownNameError, match="known: cifar10"):
        open_data_spec("cifar11:/x")
    with pytest.raises(DataError, match=r"expected cifar10c:DIR:<corruption>:<severity>"):
        open_data_spec(f"cifar10c:{tmp_path}:fog")
    with pytest.raises(DataError, match="unknown option 'colour'"):
        open_data_spec(f"mnist:{tmp_path}:colour=1")
    with pytest.raises(DataError, match="no path given"):
        open_data_spec("svhn:")
    from types import SimpleNamespace

    with pytest.raises(DataError, match="holds images, but the model r3d takes videos"):
        open_data_spec(f"cifar10:{tmp_path}", model=SimpleNamespace(input_kind="video", spec="r3d"))


def test_a_registered_spec_is_known_to_open_dataset_and_the_cli(tmp_path, monkeypatch):
    from gradtrust.data import specs

    monkeypatch.setattr(specs, "_REGISTRY", dict(specs._REGISTRY))  # noqa: SLF001 - undone after the test
    write_cifar10(tmp_path)
    spec = specs.DataSpec(
        "mycifar",
        "mycifar:DIR",
        "CIFAR-10 by another name",
        "DIR/cifar-10-batches-py/…",
        "gradtrust.data.cifar:open_cifar10",
        1,
        2,
    )
    specs.register_data_spec(spec)
    assert specs.register_data_spec(spec) is spec  # the same declaration again is fine
    with pytest.raises(DataError, match="already registered"):
        specs.register_data_spec(specs.DataSpec("mycifar", "x", "y", "z", "gradtrust.data.cifar:open_cifar100"))
    with pytest.raises(DataError, match="other than 'digits'"):
        specs.register_data_spec(specs.DataSpec("digits", "x", "y", "z", "m:f"))
    assert "mycifar" in available_datasets()
    assert len(open_dataset(f"mycifar:{tmp_path}", None)) == 4
    assert CliRunner().invoke(main, ["datasets", "mycifar"]).output.startswith("mycifar:DIR")


def test_the_nineteen_corruptions_are_the_releases_file_names():
    assert COMMON_CORRUPTIONS == CORRUPTIONS_19
    assert len(set(COMMON_CORRUPTIONS)) == 19


# --------------------------------------------------------------------------- CIFAR pickles


@pytest.mark.parametrize("inside", [False, True])
def test_cifar10_pickle_batches_read_back_pixels_labels_and_names(tmp_path, inside):
    written = write_cifar10(tmp_path)
    root = tmp_path / "cifar-10-batches-py" if inside else tmp_path
    for split, n in (("test", 4), ("train", 20)):
        ds = open_data_spec(f"cifar10:{root}:{split}")
        images, labels = written[split]
        assert len(ds) == n and ds.classes[:2] == ["airplane", "automobile"]
        assert [ds[i].label for i in range(n)] == labels.tolist()
        for i in (0, n - 1):
            np.testing.assert_array_equal(pixels(ds[i]), images[i])
            assert ds[i].input.dtype == torch.float32 and ds[i].input.shape == (3, 32, 32)
            assert torch.equal(image_to_tensor(ds.image(i)), ds[i].input)  # the PIL image a transform gets
    train = open_data_spec(f"cifar10:{root}:train")
    assert train.path(5).endswith(os.path.join("cifar-10-batches-py", "data_batch_2") + "#1")
    assert open_data_spec(f"cifar10:{root}").settings == {"split": "test"}


def test_cifar100_fine_labels_and_a_transform(tmp_path):
    written = write_cifar100(tmp_path)
    ds = CIFARDataset(tmp_path, "train", "cifar100", transform=lambda image: image.size)
    assert ds.classes[:3] == ["apple", "aquarium_fish", "baby"] and len(ds.classes) == 100
    assert ds.labels.tolist() == written["train"][1].tolist()
    assert ds[0].input == (32, 32)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_that_names_code_is_refused_and_never_run(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    dump_py2({b"data": _Payload()}, folder / "test_batch")
    with pytest.raises(DataError, match=r"not a CIFAR python pickle: .*system.*only NumPy arrays"):
        open_data_spec(f"cifar10:{tmp_path}")
    assert not (tmp_path / "pwned").exists()


def test_cifar_missing_and_malformed_files_name_what_is_expected(tmp_path):
    with pytest.raises(DataError, match=r"does not hold data_batch_1, .*data_batch_5.*test_batch"):
        open_data_spec(f"cifar10:{tmp_path}:train")
    with pytest.raises(DataError, match=r"does not hold train.*cifar-100-python"):
        open_data_spec(f"cifar100:{tmp_path}:train")
    with pytest.raises(DataError, match="split must be 'train' or 'test'"):
        open_data_spec(f"cifar10:{tmp_path}:val")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match=r"b'data' must be a uint8 array \(N, 3072\)"):
        open_data_spec(f"cifar10:{tmp_path}")
    (folder / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="not a CIFAR python pickle"):
        open_data_spec(f"cifar10:{tmp_path}")


# --------------------------------------------------------------------------- CIFAR-C


def test_cifar10c_severities_are_stacked_blocks(tmp_path):
    written = write_cifar_c(tmp_path, per_severity=3, corruptions=("fog", "snow"))
    for severity in (1, 3, 5):
        ds = open_data_spec(f"cifar10c:{tmp_path}:fog:{severity}")
        rows = slice(3 * (severity - 1), 3 * severity)
        assert len(ds) == 3
        np.testing.assert_array_equal(np.stack([pixels(ds[i]) for i in range(3)]), written["fog"][rows])
        assert ds.labels.tolist() == written["labels"][rows].tolist()
        assert ds.path(0).endswith(f"fog.npy#{rows.start}")
        assert isinstance(ds.images, np.memmap)
    snow = open_data_spec(f"cifar10c:{tmp_path / 'CIFAR-10-C'}:snow:2")
    np.testing.assert_array_equal(pixels(snow[0]), written["snow"][3])
    assert snow.classes[0] == "airplane"


def test_cifar100c_and_its_errors(tmp_path):
    write_cifar_c(tmp_path, name="CIFAR-100-C", per_severity=2, classes=100)
    ds = open_data_spec(f"cifar100c:{tmp_path}:fog:4")
    assert len(ds) == 2 and len(ds.classes) == 100 and ds.classes[0] == "apple"
    with pytest.raises(DataError, match="unknown corruption 'mist'; one of gaussian_noise"):
        open_data_spec(f"cifar100c:{tmp_path}:mist:1")
    with pytest.raises(DataError, match="severity must be 1, 2, 3, 4 or 5, got '6'"):
        open_data_spec(f"cifar100c:{tmp_path}:fog:6")
    with pytest.raises(DataError, match=r"does not hold shot_noise.npy, labels.npy.*CIFAR-100-C"):
        open_data_spec(f"cifar100c:{tmp_path}:shot_noise:1")
    folder = tmp_path / "CIFAR-100-C"
    np.save(folder / "fog.npy", np.zeros((7, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match="a multiple of 5"):
        open_data_spec(f"cifar100c:{tmp_path}:fog:1")
    np.save(folder / "fog.npy", np.array([{"x": 1}] * 10, dtype=object))  # a pickled object array
    with pytest.raises(DataError, match="not a NumPy .npy array file"):
        open_data_spec(f"cifar100c:{tmp_path}:fog:1")


# --------------------------------------------------------------------------- SVHN and MNIST


def test_svhn_mat_label_10_is_digit_0(tmp_path):
    images, digits = write_svhn(tmp_path / "test_32x32.mat")
    ds = open_data_spec(f"svhn:{tmp_path / 'test_32x32.mat'}")
    assert ds.labels.tolist() == digits.tolist() and 0 in digits
    np.testing.assert_array_equal(pixels(ds[2]), images[2])
    assert ds.classes == [str(d) for d in range(10)]
    with pytest.raises(DataError, match=r"takes the .mat file, not the folder .*holds test_32x32.mat"):
        open_data_spec(f"svhn:{tmp_path}")
    with pytest.raises(DataError, match=r"svhn: .* does not hold train_32x32.mat"):
        open_data_spec(f"svhn:{tmp_path / 'train_32x32.mat'}")
    from scipy.io import savemat

    savemat(tmp_path / "bad.mat", {"X": np.zeros((4, 4), np.uint8)})
    with pytest.raises(DataError, match=r"must hold X \(32, 32, 3, N\) and y"):
        open_data_spec(f"svhn:{tmp_path / 'bad.mat'}")
    (tmp_path / "junk.mat").write_bytes(b"\x00" * 300)
    with pytest.raises(DataError, match="not a MATLAB .mat file|must hold X"):
        open_data_spec(f"svhn:{tmp_path / 'junk.mat'}")


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_gzipped_or_raw(tmp_path, gz):
    written = write_mnist(tmp_path / "MNIST" / "raw", gz=gz)
    for split in ("train", "test"):
        ds = open_data_spec(f"mnist:{tmp_path}:{split}")  # torchvision's MNIST/raw/ under DIR
        images, labels = written[split]
        assert ds.labels.tolist() == labels.tolist()
        assert ds[1].input.shape == (1, 28, 28)
        np.testing.assert_array_equal(pixels(ds[1])[..., 0], images[1])
    rgb = open_data_spec(f"mnist:{tmp_path / 'MNIST' / 'raw'}:test:rgb=1")
    assert rgb[0].input.shape == (3, 28, 28) and torch.equal(rgb[0].input[0], rgb[0].input[2])
    assert rgb.image(0).mode == "RGB" and torch.equal(image_to_tensor(rgb.image(0)), rgb[0].input)


def test_mnist_errors_name_the_files(tmp_path):
    with pytest.raises(DataError, match=r"does not hold t10k-images-idx3-ubyte\[.gz\], t10k-labels-idx1-ubyte"):
        open_data_spec(f"mnist:{tmp_path}")
    write_mnist(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes((0x803).to_bytes(4, "big") + b"\x00" * 8)
    with pytest.raises(DataError, match="magic number 0x00000803, expected 0x00000801"):
        open_data_spec(f"mnist:{tmp_path}")
    raw = (tmp_path / "t10k-images-idx3-ubyte").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(gzip.compress(raw[:-5]))
    with pytest.raises(DataError, match="header says"):
        open_data_spec(f"mnist:{tmp_path}:test")


# --------------------------------------------------------------------------- Hugging Face datasets folders


def test_hf_datasets_folder_read_with_pyarrow(tmp_path):
    images, labels = write_hf_folder(tmp_path / "hf", n=5, shards=2)
    ds = open_data_spec(f"hf-datasets:{tmp_path / 'hf'}")
    assert ds.classes == ["cat", "dog", "frog"] and ds.labels.tolist() == labels.tolist()
    for i in range(5):
        np.testing.assert_array_equal(pixels(ds[i]), images[i])
    assert ds.path(4).endswith("data-00001-of-00002.arrow#1")
    again = pickle.loads(pickle.dumps(ds))  # a DataLoader worker under spawn: maps the files again
    np.testing.assert_array_equal(pixels(again[3]), images[3])
    assert sorted(os.path.basename(f) for f in ds.source_files()) == [
        "data-00000-of-00002.arrow",
        "data-00001-of-00002.arrow",
    ]


def test_hf_datasets_dict_splits_and_column_options(tmp_path):
    root = tmp_path / "dd"
    train = write_hf_folder(root / "train", n=4, image_column="picture", label_column="y")
    write_hf_folder(root / "test", n=3, image_column="picture", label_column="y")
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    ds = open_data_spec(f"hf-datasets:{root}:train")
    assert len(ds) == 4 and ds.image_column == "picture" and ds.label_column == "y"
    np.testing.assert_array_equal(pixels(ds[2]), train[0][2])
    assert len(open_data_spec(f"hf-datasets:{root}:test:image=picture:label=y")) == 3
    with pytest.raises(DataError, match="holds the splits train, test; name one"):
        open_data_spec(f"hf-datasets:{root}")
    with pytest.raises(DataError, match="no split 'validation'"):
        open_data_spec(f"hf-datasets:{root}:validation")
    with pytest.raises(DataError, match="no image column 'photo'.*picture, y"):
        open_data_spec(f"hf-datasets:{root}:test:image=photo")
    with pytest.raises(DataError, match="no label column 'fine'"):
        open_data_spec(f"hf-datasets:{root}:test:label=fine")


def test_hf_datasets_missing_and_malformed_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"state.json does not exist.*data-00000-of-00001.arrow, dataset_info.json"):
        open_data_spec(f"hf-datasets:{tmp_path / 'empty'}")
    write_hf_folder(tmp_path / "hf")
    (tmp_path / "hf" / "data-00000-of-00001.arrow").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not an Arrow IPC stream"):
        open_data_spec(f"hf-datasets:{tmp_path / 'hf'}")
    (tmp_path / "hf" / "data-00000-of-00001.arrow").unlink()
    with pytest.raises(DataError, match=r"data-00000-of-00001.arrow \(listed in state.json\) missing"):
        open_data_spec(f"hf-datasets:{tmp_path / 'hf'}")


# --------------------------------------------------------------------------- WebDataset shards


def test_brace_expansion():
    assert expand_braces("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_braces("{x,y}-{8..10}") == ["x-8", "x-9", "x-10", "y-8", "y-9", "y-10"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    assert len(expand_braces("imagenet-val-{000000..000063}.tar")) == 64


@pytest.mark.parametrize("label", ["cls", "json"])
def test_wds_shards_group_members_by_key(tmp_path, label):
    images, labels = write_wds(tmp_path, shards=3, per_shard=4, label=label)
    spec = f"wds:{tmp_path}/shard-{{000000..000002}}.tar" + (":label=json" if label == "json" else "")
    ds = open_data_spec(spec)
    assert len(ds) == 12 and ds.labels.tolist() == labels.tolist() and ds.preferred_chunk_size == 4
    for i in (0, 5, 11):
        np.testing.assert_array_equal(pixels(ds[i]), images[i])
    assert ds.path(5).endswith("shard-000001.tar#sample00005")
    assert len(ds.source_files()) == 3


def test_wds_errors(tmp_path):
    write_wds(tmp_path, shards=2)
    with pytest.raises(DataError, match=r"1 of 3 shards do not exist: .*shard-000002.tar"):
        open_data_spec(f"wds:{tmp_path}/shard-{{000000..000002}}.tar")
    with tarfile.open(tmp_path / "zipped.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "shard-000000.tar", arcname="x.png")
    with pytest.raises(DataError, match="not an uncompressed tar file"):
        WebDatasetShards(str(tmp_path / "zipped.tar.gz"))
    with pytest.raises(DataError, match="no samples with an image"):
        open_data_spec(f"wds:{tmp_path}/shard-000000.tar:image=webp")
    with pytest.raises(DataError, match="is not an integer"):
        open_data_spec(f"wds:{tmp_path}/shard-000000.tar:label=png")


def test_wds_score_run_cuts_chunks_at_shard_borders(tmp_path, nets):
    write_wds(tmp_path / "shards", shards=3, per_shard=4)
    out = tmp_path / "run"
    result = score(
        "--model",
        nets,
        "--num-classes",
        "3",
        "--data",
        f"wds:{tmp_path}/shards/shard-{{000000..000002}}.tar",
        "--out",
        str(out),
        "--methods",
        "softmax,gradtrust",
        "--batch-size",
        "3",
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "chunks").iterdir()) == [f"chunk-{k:09d}.parquet" for k in (0, 4, 8)]
    assert json.loads((out / "manifest.json").read_text())["layout"]["chunk_size"] == 4
    frame = pd.read_parquet(out / "scores.parquet")
    assert frame["label"].tolist() == (np.arange(12) % 3).tolist()


# --------------------------------------------------------------------------- ImageNet-A/R/O/C, Textures, OOD folders

#: Hand-written from the ILSVRC2012 class index (sorted WordNet IDs): the model output of each class.
KNOWN_INDICES = {
    "n01440764": 0,
    "n01443537": 1,
    "n01498041": 6,
    "n01531178": 11,
    "n01534433": 13,
    "n02085620": 151,
    "n04592741": 908,
    "n15075141": 999,
}


@pytest.mark.parametrize("variant", ["imagenet-a", "imagenet-r", "imagenet-o"])
def test_imagenet_subsets_map_to_the_1000_outputs_by_wordnet_id(tmp_path, variant):
    write_wnid_folders(tmp_path, KNOWN_INDICES)
    ds = open_data_spec(f"{variant}:{tmp_path}")
    assert ds.classes == sorted(KNOWN_INDICES)
    assert ds.output_subset == [KNOWN_INDICES[w] for w in sorted(KNOWN_INDICES)]
    expected = [-1] * 16 if variant == "imagenet-o" else [k for k in range(8) for _ in range(2)]
    assert ds.targets.tolist() == expected


def test_restricted_model_gives_the_subsets_logits_and_scores_on_them(tmp_path, nets):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 12), torch.nn.ReLU(), torch.nn.Linear(12, 1000)
    )
    loaded = LoadedModel(
        module=net.eval(), transform=None, class_names=[f"c{i}" for i in range(1000)], num_classes=1000, spec="net"
    )
    write_wnid_folders(tmp_path / "r", KNOWN_INDICES)
    ds = open_dataset(f"imagenet-r:{tmp_path / 'r'}", loaded)
    small = model_for_dataset(loaded, ds)
    assert small.num_classes == 8 and small.class_names == sorted(KNOWN_INDICES)
    x = torch.rand(4, 3, 8, 8)
    idx = [KNOWN_INDICES[w] for w in sorted(KNOWN_INDICES)]
    torch.testing.assert_close(small.module(x), net(x)[:, idx], rtol=1e-5, atol=1e-6)  # a narrower matmul: last bits
    assert loaded.module[3].out_features == 1000  # the loaded model is left as it was
    assert model_for_dataset(small, ds) is small
    assert restrict_outputs(loaded, [5, 2]).class_names == ["c5", "c2"]

    from gradtrust.runs import score_dataset

    summary = score_dataset(small, ds, tmp_path / "run", methods="softmax,gradtrust", progress=False)
    frame = pd.read_parquet(summary.scores_path)
    assert frame["label"].tolist() == [k for k in range(8) for _ in range(2)]
    assert frame["prediction"].between(0, 7).all() and frame["gradtrust"].notna().all()
    with torch.no_grad():
        full = net(torch.stack([ds[i].input for i in range(len(ds))]))
    assert frame["prediction"].tolist() == full[:, idx].argmax(1).tolist()


def test_score_cli_scores_imagenet_o_on_the_subsets_logits(tmp_path, nets):
    write_wnid_folders(tmp_path / "o", KNOWN_INDICES)
    out = tmp_path / "run"
    result = score(
        "--model",
        nets,
        "--num-classes",
        "1000",
        "--data",
        f"imagenet-o:{tmp_path / 'o'}",
        "--out",
        str(out),
        "--methods",
        "softmax,gradtrust",
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["num_classes"] == 8
    assert manifest["model"]["meta"]["output_subset"]["indices"] == [KNOWN_INDICES[w] for w in sorted(KNOWN_INDICES)]
    frame = pd.read_parquet(out / "scores.parquet")
    assert frame["label"].tolist() == [-1] * 16 and frame["prediction"].between(0, 7).all()
    assert frame["gradtrust"].notna().all()


def test_imagenet_c_folders_and_errors(tmp_path):
    write_wnid_folders(tmp_path / "fog" / "3", ["n01440764", "n15075141"])
    ds = open_data_spec(f"imagenet-c:{tmp_path}:fog:3")
    assert ds.classes == ["n01440764", "n15075141"] and ds.output_subset is None and len(ds) == 4
    assert ds.corruption == "fog" and ds.severity == 3
    with pytest.raises(DataError, match=r"fog/2 does not exist.*<corruption>/<severity 1-5>/<wnid>"):
        open_data_spec(f"imagenet-c:{tmp_path}:fog:2")
    with pytest.raises(DataError, match="unknown corruption 'haze'"):
        open_data_spec(f"imagenet-c:{tmp_path}:haze:2")
    write_wnid_folders(tmp_path / "a", ["n01440764", "n99999999"])
    with pytest.raises(DataError, match="not ImageNet-1k WordNet IDs: 'n99999999'"):
        open_data_spec(f"imagenet-a:{tmp_path / 'a'}")


def test_textures_and_ood_folders_are_unlabelled(tmp_path, nets):
    write_wnid_folders(tmp_path / "dtd" / "images", ["banded", "woven"])
    write_wnid_folders(tmp_path / "LSUN_resize" / "LSUN_resize", ["x"], per_class=3)
    textures = open_data_spec(f"textures:{tmp_path}")
    assert len(textures) == 4 and textures.targets.tolist() == [-1] * 4
    lsun = open_data_spec(f"ood:{tmp_path / 'LSUN_resize'}")
    assert len(lsun) == 3 and lsun.targets.tolist() == [-1] * 3
    with pytest.raises(DataError, match="textures: no images/ folder"):
        open_data_spec(f"textures:{tmp_path / 'LSUN_resize'}")
    out = tmp_path / "run"
    result = score(
        "--model",
        nets,
        "--num-classes",
        "10",
        "--data",
        f"ood:{tmp_path / 'LSUN_resize'}",
        "--out",
        str(out),
        "--methods",
        "softmax,energy",
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out / "scores.parquet")
    assert frame["label"].tolist() == [-1] * 3 and not frame["correct"].any()


# --------------------------------------------------------------------------- identity and the CLI end to end


def test_identity_follows_the_files_content(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADTRUST_CACHE_DIR", str(tmp_path / "cache"))
    write_cifar_c(tmp_path, per_severity=2)
    first = dataset_identity(open_data_spec(f"cifar10c:{tmp_path}:fog:1"))
    assert first["kind"] == "cifar10c" and first["corruption"] == "fog" and first["severity"] == 1
    assert dataset_identity(open_data_spec(f"cifar10c:{tmp_path}:fog:2"))["fingerprint"] != first["fingerprint"]
    path = tmp_path / "CIFAR-10-C" / "fog.npy"
    array = np.load(path)
    np.save(path, 255 - array)  # same size, other pixels
    os.utime(path, ns=(1, 1))
    again = dataset_identity(open_data_spec(f"cifar10c:{tmp_path}:fog:1"))
    assert again["fingerprint"] == first["fingerprint"] and again["content_sha256"] != first["content_sha256"]


def test_score_cli_end_to_end_on_cifar10_and_svhn_and_resume_refusal(tmp_path, nets):
    written = write_cifar10(tmp_path / "c")
    out = tmp_path / "run"
    args = [
        "--model",
        nets,
        "--num-classes",
        "10",
        "--data",
        f"cifar10:{tmp_path / 'c'}:test",
        "--out",
        str(out),
        "--methods",
        "softmax,gradtrust",
    ]
    result = score(*args)
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out / "scores.parquet")
    assert frame["label"].tolist() == written["test"][1].tolist()
    assert frame["path"].iloc[0].endswith("test_batch#0")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"]["kind"] == "cifar10" and manifest["dataset"]["split"] == "test"
    assert len(manifest["dataset"]["content_sha256"]) == 64
    assert score(*args).exit_code == 0  # the same run again: complete, nothing changed
    other = [
        "--model",
        nets,
        "--num-classes",
        "10",
        "--data",
        f"cifar10:{tmp_path / 'c'}:train",
        "--out",
        str(out),
        "--methods",
        "softmax,gradtrust",
    ]
    one_line_error(score(*other), "dataset.")

    images, digits = write_svhn(tmp_path / "test_32x32.mat")
    result = score(
        "--model",
        nets,
        "--num-classes",
        "10",
        "--data",
        f"svhn:{tmp_path / 'test_32x32.mat'}",
        "--out",
        str(tmp_path / "svhn"),
        "--methods",
        "softmax",
    )
    assert result.exit_code == 0, result.output
    assert pd.read_parquet(tmp_path / "svhn" / "scores.parquet")["label"].tolist() == digits.tolist()


def test_score_cli_errors_for_specs(tmp_path, nets):
    base = ["--model", nets, "--num-classes", "10", "--out", str(tmp_path / "o")]
    one_line_error(score(*base, "--data", f"cifar10:{tmp_path}"), "cifar10:", "does not hold test_batch")
    write_cifar10(tmp_path)
    labels = tmp_path / "labels.txt"
    labels.write_text("0\n")
    one_line_error(
        score(*base, "--data", f"cifar10:{tmp_path}", "--labels", str(labels)),
        "--labels applies to a flat image folder",
    )


def test_benchmark_takes_specs_and_reports_corruptions_of_one_data_set_in_one_table(tmp_path, nets, monkeypatch):
    from gradtrust.benchmark import plan_jobs
    from gradtrust.cli.benchmark import benchmark_command

    write_cifar_c(tmp_path / "data", per_severity=4, corruptions=("fog", "snow"))
    monkeypatch.chdir(tmp_path)
    data = ["cifar10c:data:fog:1", "cifar10c:data:snow:2"]
    jobs = plan_jobs(nets, data, tmp_path / "bench", weights="random")
    assert [j.request["data"] for j in jobs] == data and [j.labels for j in jobs] == [None, None]
    assert jobs[0].out_dir.name.startswith("cifar10c-fog-1-") and jobs[1].out_dir.name.startswith("cifar10c-snow-2-")
    args = [
        "--models",
        nets,
        "--weights",
        "random",
        "--out",
        str(tmp_path / "bench"),
        "--methods",
        "softmax,gradtrust",
        "--resamples",
        "0",
        "--no-figures",
        "--batch-size",
        "4",
    ]
    for d in data:
        args += ["--data", d]
    result = CliRunner().invoke(benchmark_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "bench" / "report" / "table.csv")
    assert set(table["condition"]) == {"fog/1", "snow/2"} and table["dataset"].nunique() == 1
    again = CliRunner().invoke(benchmark_command, args, catch_exceptions=False)
    assert "0 scored, 2 skipped" in again.output, again.output


def test_gradcon_and_explain_read_specs(tmp_path, nets):
    from gradtrust.gradcon.data import load_labelled

    written = write_mnist(tmp_path / "mnist")
    data = load_labelled(f"mnist:{tmp_path / 'mnist'}:train", grayscale=True)
    assert tuple(data.images.shape) == (6, 1, 28, 28) and data.labels.tolist() == written["train"][1].tolist()
    np.testing.assert_array_equal((data.images[2, 0] * 255).round().byte().numpy(), written["train"][0][2])
    assert data.description["kind"] == "mnist" and data.classes == [str(d) for d in range(10)]

    write_cifar10(tmp_path / "c")
    out = tmp_path / "explain"
    result = CliRunner().invoke(
        main,
        [
            "explain",
            "--model",
            nets,
            "--num-classes",
            "10",
            "--data",
            f"cifar10:{tmp_path / 'c'}",
            "--out",
            str(out),
            "--no-progress",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "explained 4 of 4 samples" in result.output


@pytest.mark.slow
def test_torchrun_ranks_take_whole_shards(tmp_path, nets):
    import subprocess

    import torch.distributed as dist

    from gradtrust.runs.chunks import read_chunk_meta

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    write_wds(tmp_path / "shards", shards=4, per_shard=3)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
        PYTHONPATH=os.pathsep.join([str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]),
    )
    args = [
        "-m",
        "gradtrust",
        "score",
        "--model",
        nets,
        "--num-classes",
        "3",
        "--data",
        f"wds:{tmp_path}/shards/shard-{{000000..000003}}.tar",
        "--methods",
        "softmax,gradtrust",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
    ]
    one = subprocess.run(
        [sys.executable, *args, str(tmp_path / "one")], capture_output=True, text=True, env=env, timeout=300
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nnodes",
            "1",
            "--nproc_per_node",
            "2",
            *args,
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    chunks = sorted((tmp_path / "two" / "chunks").glob("chunk-*.parquet"))
    metas = [read_chunk_meta(c) for c in chunks]
    # chunk k = shard k (samples 3k … 3k + 2), written by rank k mod 2
    assert [(m["start"], m["stop"], m["written_by"]["rank"]) for m in metas] == [
        (0, 3, 0),
        (3, 6, 1),
        (6, 9, 0),
        (9, 12, 1),
    ]
    assert (tmp_path / "one" / "scores.parquet").read_bytes() == (tmp_path / "two" / "scores.parquet").read_bytes()
