"""Image datasets: class folders, the flat ImageNet layout, mode conversion, unreadable files, class matching."""

from __future__ import annotations

import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from gradtrust.data.classes import (
    imagenet_wnid_to_index,
    is_wnid,
    load_imagenet_class_names,
    load_imagenet_wnids,
    resolve_class_indices,
)
from gradtrust.data.imagenet import FlatImageDataset, read_devkit_meta
from gradtrust.data.images import ImageFolderDataset, read_rgb_image, to_rgb
from gradtrust.data.samples import collate_samples
from gradtrust.errors import DataError

W, H = 8, 6


def _rgb(color=(10, 20, 30), size=(W, H)) -> Image.Image:
    return Image.new("RGB", size, color)


def _write_jpeg_bytes(path, color=(200, 30, 60), size=(64, 48)) -> bytes:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, format="JPEG", quality=90)
    return open(path, "rb").read()


def _pixel(img: Image.Image, xy=(0, 0)) -> tuple[int, int, int]:
    assert img.mode == "RGB"
    return img.getpixel(xy)


# --------------------------------------------------------------------------- class folder layout


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "data"
    (root / "dog").mkdir(parents=True)
    (root / "cat" / "sub").mkdir(parents=True)
    (root / "empty_class").mkdir()
    (root / ".hidden_class").mkdir()
    _rgb((255, 0, 0)).save(root / "cat" / "b.png")
    _rgb((0, 255, 0)).save(root / "cat" / "a.PNG")
    _rgb((0, 0, 255)).save(root / "cat" / "sub" / "c.bmp")
    _rgb((9, 9, 9)).save(root / ".hidden_class" / "x.png")
    _rgb((1, 2, 3)).save(root / "dog" / "z.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "dog" / ".DS_Store").write_bytes(b"\0\0")
    return root


def test_class_folder_layout_and_stable_index(folder):
    with pytest.warns(UserWarning, match="empty_class"):
        ds = ImageFolderDataset(folder)
    assert ds.classes == ["cat", "dog", "empty_class"]
    assert ds.class_to_idx == {"cat": 0, "dog": 1, "empty_class": 2}
    rel = [os.path.relpath(ds.path(i), folder) for i in range(len(ds))]
    assert rel == [os.path.join("cat", "a.PNG"), os.path.join("cat", "b.png"),
                   os.path.join("cat", "sub", "c.bmp"), os.path.join("dog", "z.png")]
    assert ds.targets.tolist() == [0, 0, 0, 1]
    s = ds[1]
    assert s.error == "" and s.index == 1 and s.label == 0 and s.path == str(folder / "cat" / "b.png")
    assert s.input.dtype == torch.float32 and s.input.shape == (3, H, W)
    assert torch.allclose(s.input[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert ds[-1].index == 3
    with pytest.raises(IndexError):
        ds[4]
    # Same order on a second scan, and after pickling.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = ImageFolderDataset(folder)
    assert [again.path(i) for i in range(len(again))] == [ds.path(i) for i in range(len(ds))]
    clone = pickle.loads(pickle.dumps(ds))
    assert [clone.path(i) for i in range(len(clone))] == [ds.path(i) for i in range(len(ds))]
    assert torch.equal(clone[2].input, ds[2].input)


def test_transform_gets_rgb_pil_image(folder):
    seen = []

    def transform(img):
        seen.append((img.mode, img.size))
        return torch.zeros(1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = ImageFolderDataset(folder, transform=transform, extensions=["png"])
    assert len(ds) == 3  # .bmp not taken
    ds[0]
    assert seen == [("RGB", (W, H))]


# --------------------------------------------------------------------------- mode conversion


def _save_and_read(tmp_path, img: Image.Image, name: str, **save) -> Image.Image:
    path = tmp_path / name
    img.save(path, **save)
    return read_rgb_image(path)


def test_grey_and_bilevel(tmp_path):
    assert _pixel(_save_and_read(tmp_path, Image.new("L", (W, H), 100), "l.png")) == (100, 100, 100)
    assert _pixel(_save_and_read(tmp_path, Image.new("1", (W, H), 1), "b.png")) == (255, 255, 255)


def test_grey_alpha(tmp_path):
    img = Image.new("LA", (2, 1), (50, 0))
    img.putpixel((1, 0), (50, 255))
    path = tmp_path / "la.png"
    img.save(path)
    white = read_rgb_image(path)
    assert _pixel(white, (0, 0)) == (255, 255, 255)  # fully transparent → white background
    assert _pixel(white, (1, 0)) == (50, 50, 50)
    dropped = read_rgb_image(path, alpha="drop")
    assert _pixel(dropped, (0, 0)) == (50, 50, 50)


def test_rgba_composited_on_white_or_dropped(tmp_path):
    img = Image.new("RGBA", (3, 1), (255, 0, 0, 0))
    img.putpixel((1, 0), (0, 0, 255, 255))
    img.putpixel((2, 0), (0, 0, 0, 128))
    path = tmp_path / "rgba.png"
    img.save(path)
    out = read_rgb_image(path)
    assert _pixel(out, (0, 0)) == (255, 255, 255)
    assert _pixel(out, (1, 0)) == (0, 0, 255)
    assert all(abs(v - 127) <= 1 for v in _pixel(out, (2, 0)))  # half-transparent black over white
    assert _pixel(read_rgb_image(path, alpha="drop"), (0, 0)) == (255, 0, 0)


@pytest.mark.parametrize("fmt", ["png", "gif"])
def test_palette_with_and_without_transparency(tmp_path, fmt):
    img = Image.new("P", (2, 1), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    img.putpixel((1, 0), 1)
    path = tmp_path / f"p_t.{fmt}"
    img.save(path, transparency=0)
    with Image.open(path) as raw:
        assert raw.mode == "P" and "transparency" in raw.info
    out = read_rgb_image(path)
    assert _pixel(out, (0, 0)) == (255, 255, 255)  # transparent palette entry → white
    assert _pixel(out, (1, 0)) == (0, 0, 255)
    assert _pixel(read_rgb_image(path, alpha="drop"), (0, 0)) == (255, 0, 0)
    plain = tmp_path / f"p.{fmt}"
    img.save(plain)
    out = read_rgb_image(plain)
    assert _pixel(out, (0, 0)) == (255, 0, 0) and _pixel(out, (1, 0)) == (0, 0, 255)


def test_cmyk_white_is_white(tmp_path):
    for name in ("c.jpg", "c.tif"):
        white = Image.new("CMYK", (W, H), (0, 0, 0, 0))
        out = _save_and_read(tmp_path, white, name)
        assert all(v >= 250 for v in _pixel(out)), name
        black = Image.new("CMYK", (W, H), (0, 0, 0, 255))
        out = _save_and_read(tmp_path, black, "k_" + name)
        assert all(v <= 5 for v in _pixel(out)), name
    cyan = _save_and_read(tmp_path, Image.new("CMYK", (W, H), (255, 0, 0, 0)), "cyan.tif")
    assert _pixel(cyan) == (0, 255, 255)


def test_16bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.array([[65535, 0, 257, 32896, 1000]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")  # 16-bit data, not 8-bit
    out = read_rgb_image(path)
    got = [out.getpixel((x, 0))[0] for x in range(5)]
    assert got == [255, 0, 1, 128, 4]  # 1000 * 255 / 65535 = 3.9; a clip to 255 would give 255s
    # Big-endian layout, converted in memory.
    big = Image.fromarray(values.astype(">u2"))
    assert big.mode == "I;16B"
    assert [to_rgb(big).getpixel((x, 0))[0] for x in range(5)] == got


def test_32bit_integer_grey(tmp_path):
    path = tmp_path / "i.tif"
    Image.fromarray(np.array([[65535, 0, 32896]], dtype=np.int32)).save(path)
    with Image.open(path) as raw:
        assert raw.mode == "I"
    out = read_rgb_image(path)
    assert [out.getpixel((x, 0)) for x in range(3)] == [(255,) * 3, (0,) * 3, (128,) * 3]
    wide = Image.fromarray(np.array([[-1000, 1_000_000, 499_500]], dtype=np.int32))
    assert [to_rgb(wide).getpixel((x, 0))[0] for x in range(3)] == [0, 255, 128]  # stretched


def test_float_grey(tmp_path):
    path = tmp_path / "f.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(path)
    with Image.open(path) as raw:
        assert raw.mode == "F"
    out = read_rgb_image(path)
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    eight_bit = Image.fromarray(np.array([[0.0, 100.0, 255.0]], dtype=np.float32))
    assert [to_rgb(eight_bit).getpixel((x, 0))[0] for x in range(3)] == [0, 100, 255]
    nan = Image.fromarray(np.array([[np.nan, 1.0]], dtype=np.float32))
    assert [to_rgb(nan).getpixel((x, 0))[0] for x in range(2)] == [0, 255]


def test_every_mode_through_the_dataset(tmp_path):
    root = tmp_path / "modes"
    (root / "a").mkdir(parents=True)
    Image.new("L", (W, H), 255).save(root / "a" / "l.png")
    Image.new("LA", (W, H), (0, 0)).save(root / "a" / "la.png")
    Image.new("RGBA", (W, H), (0, 0, 0, 0)).save(root / "a" / "rgba.png")
    Image.new("CMYK", (W, H), (0, 0, 0, 0)).save(root / "a" / "cmyk.tif")
    Image.fromarray(np.full((H, W), 65535, np.uint16)).save(root / "a" / "g16.png")
    Image.fromarray(np.full((H, W), 65535, np.int32)).save(root / "a" / "i32.tif")
    Image.fromarray(np.full((H, W), 1.0, np.float32)).save(root / "a" / "f.tif")
    p = Image.new("P", (W, H), 0)
    p.putpalette([255, 255, 255] + [0] * 765)
    p.save(root / "a" / "p.gif")
    ds = ImageFolderDataset(root)
    assert len(ds) == 8
    for i in range(len(ds)):
        s = ds[i]
        assert s.error == "", (s.path, s.error)
        assert s.input.shape == (3, H, W)
        assert torch.allclose(s.input, torch.ones(3, H, W), atol=2 / 255), s.path  # all white


# --------------------------------------------------------------------------- unreadable files


@pytest.fixture()
def broken_folder(tmp_path):
    root = tmp_path / "broken"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    _rgb((255, 255, 255)).save(root / "a" / "good1.png")
    _rgb((0, 0, 0)).save(root / "b" / "good2.png")
    (root / "a" / "empty.jpg").write_bytes(b"")
    (root / "a" / "garbage.jpg").write_bytes(b"this is not an image at all" * 10)
    data = _write_jpeg_bytes(root / "b" / "full.jpg")
    (root / "b" / "full.jpg").unlink()
    (root / "b" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    png = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(png)
    raw = png.read_bytes()
    (root / "b" / "truncated.png").write_bytes(raw[: len(raw) * 2 // 3])
    (root / "b" / "text.png").write_text("hello")
    return root


def test_unreadable_files_are_recorded_not_raised(broken_folder):
    ds = ImageFolderDataset(broken_folder)
    by_name = {os.path.basename(ds.path(i)): ds[i] for i in range(len(ds))}
    assert set(by_name) == {"good1.png", "good2.png", "empty.jpg", "garbage.jpg", "truncated.jpg",
                            "truncated.png", "text.png"}
    for name in ("good1.png", "good2.png"):
        assert by_name[name].error == "" and by_name[name].input is not None
    for name in ("empty.jpg", "garbage.jpg", "truncated.jpg", "truncated.png", "text.png"):
        s = by_name[name]
        assert s.input is None and s.error, name
        assert s.path.endswith(name) and s.label in (0, 1)
    assert by_name["empty.jpg"].error == "empty file (0 bytes)"
    assert "not a recognised image format" in by_name["garbage.jpg"].error
    assert "truncated" in by_name["truncated.jpg"].error
    assert "truncated" in by_name["truncated.png"].error or "corrupt" in by_name["truncated.png"].error


def test_collate_with_failures(broken_folder):
    ds = ImageFolderDataset(broken_folder)
    batch = collate_samples([ds[i] for i in range(len(ds))])
    assert batch.inputs.shape == (2, 3, H, W)
    assert len(batch) == 2
    assert sorted(os.path.basename(p) for p in batch.paths) == ["good1.png", "good2.png"]
    assert len(batch.failures) == 5
    for index, path, reason in batch.failures:
        assert ds.path(index) == path and reason
    assert batch.labels.tolist() == [ds.label(int(i)) for i in batch.indices]
    all_bad = collate_samples([ds[i] for i, _, _ in batch.failures])
    assert all_bad.inputs is None and len(all_bad.failures) == 5


def test_dataloader_with_two_workers(broken_folder):
    ds = ImageFolderDataset(broken_folder)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate_samples)
    seen, failed = [], []
    for batch in loader:
        seen.extend(batch.indices.tolist())
        failed.extend(i for i, _, _ in batch.failures)
        if batch.inputs is not None:
            assert batch.inputs.shape[1:] == (3, H, W)
    assert sorted(seen + failed) == list(range(len(ds)))
    assert len(failed) == 5


# --------------------------------------------------------------------------- empty layouts


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="No class sub-folders.*empty.*one sub-folder per class"):
        ImageFolderDataset(empty)
    flat = tmp_path / "flat"
    flat.mkdir()
    _rgb().save(flat / "a.png")
    with pytest.raises(DataError, match=r"1 files directly in it \('a.png'\).*FlatImageDataset"):
        ImageFolderDataset(flat)
    no_images = tmp_path / "no_images"
    (no_images / "cls").mkdir(parents=True)
    (no_images / "cls" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="No image files.*'cls'.*readme.txt"):
        ImageFolderDataset(no_images)


# --------------------------------------------------------------------------- ImageNet class list


def test_imagenet_wnid_list():
    wnids = load_imagenet_wnids()
    names = load_imagenet_class_names()
    assert len(wnids) == len(set(wnids)) == 1000
    assert wnids == sorted(wnids) and all(map(is_wnid, wnids))
    assert (wnids[0], names[0]) == ("n01440764", "tench")
    assert (wnids[-1], names[-1]) == ("n15075141", "toilet tissue")
    assert len(set(names)) == 1000
    assert imagenet_wnid_to_index()["n01443537"] == 1
    try:  # the same names, in the same order, as torchvision's ImageNet weights
        from torchvision.models import ResNet18_Weights
    except ImportError:  # pragma: no cover
        return
    assert names == ResNet18_Weights.IMAGENET1K_V1.meta["categories"]


# --------------------------------------------------------------------------- flat ImageNet layout


@pytest.fixture()
def flat(tmp_path):
    root = tmp_path / "val"
    root.mkdir()
    for i in range(1, 5):
        _rgb((i, i, i)).save(root / f"ILSVRC2012_val_{i:08d}.JPEG", format="JPEG")
    return root


def _csv(path, rows, header="ImageId,PredictionString"):
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return path


def test_flat_with_loc_val_solution_csv(flat, tmp_path):
    labels = _csv(tmp_path / "LOC_val_solution.csv", [
        "ILSVRC2012_val_00000003,n15075141 10 20 30 40 n15075141 1 2 3 4",
        "ILSVRC2012_val_00000001,n01440764 1 1 5 5",
        "ILSVRC2012_val_00000004.JPEG,n01443537 1 1 5 5",
        "ILSVRC2012_val_00000002,n01751748 1 1 5 5",
    ])
    ds = FlatImageDataset(flat, labels)
    assert len(ds) == 4
    assert [os.path.basename(ds.path(i)) for i in range(4)] == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 5)]
    index = imagenet_wnid_to_index()
    assert ds.targets.tolist() == [0, index["n01751748"], 999, 1]
    assert ds.classes == load_imagenet_wnids() and ds.class_names[0] == "tench"
    s = ds[2]
    assert s.error == "" and s.label == 999 and s.input.shape == (3, H, W)
    assert resolve_class_indices(ds.classes, None, 1000) == list(range(1000))


def test_flat_csv_problems(flat, tmp_path):
    good = [f"ILSVRC2012_val_{i:08d},n01440764 1 1 5 5" for i in range(1, 5)]
    extra = _csv(tmp_path / "extra.csv", good + ["ILSVRC2012_val_00000099,n01440764 1 1 5 5"])
    with pytest.raises(DataError, match="1 of 5 labels .* have no image.*ILSVRC2012_val_00000099.*allow_unused_labels"):
        FlatImageDataset(flat, extra)
    assert len(FlatImageDataset(flat, extra, allow_unused_labels=True)) == 4
    missing = _csv(tmp_path / "missing.csv", good[:3])
    with pytest.raises(DataError, match="1 of 4 images have no label.*ILSVRC2012_val_00000004.JPEG"):
        FlatImageDataset(flat, missing)
    bad_header = _csv(tmp_path / "bad_header.csv", good, header="id,label")
    with pytest.raises(DataError, match="Malformed labels CSV.*header.*ImageId,PredictionString"):
        FlatImageDataset(flat, bad_header)
    bad_rows = _csv(tmp_path / "bad_rows.csv", good[:2] + ["ILSVRC2012_val_00000003", "ILSVRC2012_val_00000004,n99999999 1"])
    with pytest.raises(DataError, match=r"2 bad rows.*line 4: 1 fields.*line 5: unknown class 'n99999999'"):
        FlatImageDataset(flat, bad_rows)


def test_flat_with_one_label_per_line(flat, tmp_path):
    lines = tmp_path / "labels.txt"
    lines.write_text("n01443537\n0\n999\n n15075141 \n\n")
    ds = FlatImageDataset(flat, lines)
    assert ds.targets.tolist() == [1, 0, 999, 999]
    one_based = tmp_path / "one_based.txt"
    one_based.write_text("1\n2\n1000\n3\n")
    with pytest.raises(DataError, match="out of range.*ILSVRC2012_IDs.*devkit_meta"):
        FlatImageDataset(flat, one_based)
    assert FlatImageDataset(flat, one_based, label_offset=-1).targets.tolist() == [0, 1, 999, 2]
    short = tmp_path / "short.txt"
    short.write_text("0\n1\n")
    with pytest.raises(DataError, match="2 lines but 4 images.*sorted file name order"):
        FlatImageDataset(flat, short)
    junk = tmp_path / "junk.txt"
    junk.write_text("0\ncat\n\n1\n")
    with pytest.raises(DataError, match=r"2 bad lines.*line 2 \(ILSVRC2012_val_00000002.JPEG\).*'cat'.*line 3.*empty line"):
        FlatImageDataset(flat, junk)


def test_flat_devkit_ground_truth(flat, tmp_path):
    gt = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("490\n361\n171\n822\n")
    with pytest.raises(DataError, match="devkit's own 1-based ILSVRC2012_IDs.*devkit_meta"):
        FlatImageDataset(flat, gt)
    scipy_io = pytest.importorskip("scipy.io")
    # A miniature meta.mat: ID 490 → n01751748, 361 → n09193705, 171 → n02105855, 822 → n04254680,
    # plus a non-leaf synset that must be ignored.
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"), ("num_children", "O")]
    synsets = np.array([(490, "n01751748", "sea snake", "", 0), (361, "n09193705", "alp", "", 0),
                        (171, "n02105855", "Shetland sheepdog", "", 0), (822, "n04254680", "soccer ball", "", 0),
                        (1001, "n00001740", "entity", "", 5)], dtype=dtype)
    devkit = tmp_path / "devkit"
    (devkit / "data").mkdir(parents=True)
    scipy_io.savemat(devkit / "data" / "meta.mat", {"synsets": synsets})
    assert read_devkit_meta(devkit) == {490: "n01751748", 361: "n09193705", 171: "n02105855", 822: "n04254680"}
    ds = FlatImageDataset(flat, gt, devkit_meta=devkit)
    index = imagenet_wnid_to_index()
    assert ds.targets.tolist() == [index[w] for w in ("n01751748", "n09193705", "n02105855", "n04254680")]


def test_flat_empty_or_class_folders(tmp_path):
    root = tmp_path / "val"
    (root / "n01440764").mkdir(parents=True)
    labels = tmp_path / "l.txt"
    labels.write_text("0\n")
    with pytest.raises(DataError, match="No image files.*1 sub-folders.*ImageFolderDataset"):
        FlatImageDataset(root, labels)
    with pytest.raises(DataError, match="does not exist"):
        FlatImageDataset(root, tmp_path / "none.csv")


# --------------------------------------------------------------------------- class matching


def test_resolve_wnid_subset_for_imagenet_model(tmp_path):
    root = tmp_path / "subset"
    for wnid in ("n15075141", "n01443537", "n01440764"):
        (root / wnid).mkdir(parents=True)
        _rgb().save(root / wnid / "x.png")
    ds = ImageFolderDataset(root)
    assert ds.classes == ["n01440764", "n01443537", "n15075141"]
    names = load_imagenet_class_names()
    assert resolve_class_indices(ds.classes, names, 1000) == [0, 1, 999]
    assert resolve_class_indices(ds.classes, None, 1000) == [0, 1, 999]
    with pytest.raises(DataError, match="outside ImageNet-1k.*n00000001"):
        resolve_class_indices(["n01440764", "n00000001"], names, 1000)
    # A model whose class names are WordNet IDs (in its own order) is matched by name.
    assert resolve_class_indices(["n01440764", "n01443537"], ["n01443537", "n01440764", "n02000000"], 3) == [1, 0]


def test_resolve_by_name_identity_and_mismatch():
    model = ["abseiling", "air drumming", "answering questions", "applauding"]
    assert resolve_class_indices(["applauding", "abseiling"], model, 4) == [3, 0]
    assert resolve_class_indices(["Air_Drumming", "applauding"], model, 4) == [1, 3]  # loose match
    assert resolve_class_indices(["d0", "d1", "d2", "d3"], model, 4) == [0, 1, 2, 3]  # identity
    assert resolve_class_indices(["0", "1", "2"], None, 3) == [0, 1, 2]
    with pytest.raises(DataError, match=r"dataset has 5 classes \('a', 'b'.*model has 4 outputs.*'abseiling'"):
        resolve_class_indices(["a", "b", "c", "d", "e"], model, 4)
    with pytest.raises(DataError, match="2 dataset classes match model class names but 1 do not: 'zzz'"):
        resolve_class_indices(["abseiling", "applauding", "zzz"], model, 4)
    # Same count, but the names that do match sit at other positions: folder order would be wrong.
    with pytest.raises(DataError, match="'applauding' is dataset label 0 but model output 3"):
        resolve_class_indices(["applauding", "x", "y", "z"], model, 4)
    with pytest.raises(DataError, match="outputs but 3 class names"):
        resolve_class_indices(["a"], ["a", "b", "c"], 4)


def test_class_mismatch_between_folder_dataset_and_model(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = ImageFolderDataset(folder)
    with pytest.raises(DataError, match=r"dataset has 3 classes \('cat', 'dog', 'empty_class'\); the model has 10 outputs"):
        resolve_class_indices(ds.classes, [str(i) for i in range(10)], 10)


def test_a_1000_class_model_on_three_folders_says_to_pass_num_classes(folder):
    """timm/torchvision ImageNet heads have 1000 outputs; a 3-folder dataset needs a 3-class head: say how."""
    from gradtrust.data.classes import load_imagenet_class_names

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = ImageFolderDataset(folder)
    with pytest.raises(DataError, match=r"pass --num-classes 3 .*num_classes=3"):
        resolve_class_indices(ds.classes, load_imagenet_class_names(), 1000)
    with pytest.raises(DataError, match=r"pass --num-classes 3 "):
        resolve_class_indices(ds.classes, None, 1000)


def test_non_ascii_paths_round_trip(tmp_path):
    root = tmp_path / "données"
    (root / "café").mkdir(parents=True)
    (root / "naïve").mkdir()
    _rgb().save(root / "café" / "crème brûlée.png")
    _rgb().save(root / "naïve" / "日本.png")
    ds = ImageFolderDataset(root)
    assert ds.classes == ["café", "naïve"]
    assert ds.path(0) == str(root / "café" / "crème brûlée.png")
    assert ds.path(1) == str(root / "naïve" / "日本.png")
    assert ds[1].error == ""
