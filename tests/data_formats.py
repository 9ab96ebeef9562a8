"""Writers of small synthetic files in the exact formats the data sets ship in (tests only; nothing is downloaded).

Each writer returns what it wrote (images in ``(N, H, W, C)`` order and labels), so that a test can compare what
the reader gives back with what went in.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CORRUPTIONS_19 = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
    "speckle_noise",
    "gaussian_blur",
    "spatter",
    "saturate",
)


class Python2Pickler(pickle._Pickler):  # noqa: SLF001 - the pure-Python pickler's dispatch table is the way in
    """Writes ``bytes`` as Python 2 ``str`` opcodes (``SHORT_BINSTRING``/``BINSTRING``), as the CIFAR release's
    cPickle files hold them (Python 3's protocol 2 would write ``_codecs.encode`` calls instead)."""

    dispatch = dict(pickle._Pickler.dispatch)  # noqa: SLF001

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + len(obj).to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def dump_py2(value, path: Path) -> None:
    with open(path, "wb") as f:
        Python2Pickler(f, protocol=2).dump(value)


def rng_images(n: int, seed: int, shape=(32, 32, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def _batch_dict(images: np.ndarray, labels: list[int], label_key: bytes, batch_label: bytes) -> dict:
    """The release's dict: bytes keys, b'data' (N, 3072) = red plane, green plane, blue plane per row."""
    return {
        b"batch_label": batch_label,
        label_key: labels,
        b"data": np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072)),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
    }


def write_cifar10(parent: Path, per_batch: int = 4) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``parent/cifar-10-batches-py/`` with data_batch_1..5, test_batch, batches.meta (pickle protocol 2)."""
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out = {"train": ([], []), "test": ([], [])}
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        images = rng_images(per_batch, seed=k)
        labels = [(k + i) % 10 for i in range(per_batch)]
        dump_py2(_batch_dict(images, labels, b"labels", f"batch {k}".encode()), folder / name)
        split = "test" if name == "test_batch" else "train"
        out[split][0].append(images)
        out[split][1].append(labels)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    dump_py2({b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072}, folder / "batches.meta")
    return {s: (np.concatenate(x), np.concatenate(y)) for s, (x, y) in out.items()}


def write_cifar100(parent: Path, n: int = 6) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``parent/cifar-100-python/`` with train, test, meta (fine and coarse labels)."""
    folder = parent / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for k, name in enumerate(["train", "test"]):
        images = rng_images(n, seed=20 + k)
        fine = [(7 * i + k) % 100 for i in range(n)]
        batch = _batch_dict(images, fine, b"fine_labels", name.encode())
        batch[b"coarse_labels"] = [f // 5 for f in fine]
        dump_py2(batch, folder / name)
        out[name] = (images, np.asarray(fine))
    from gradtrust.data.cifar import CIFAR100_CLASSES

    dump_py2(
        {
            b"fine_label_names": [c.encode() for c in CIFAR100_CLASSES],
            b"coarse_label_names": [f"super{i}".encode() for i in range(20)],
        },
        folder / "meta",
    )
    return out


def write_cifar_c(
    parent: Path, name: str = "CIFAR-10-C", per_severity: int = 3, corruptions=("fog",), classes: int = 10
) -> dict[str, np.ndarray]:
    """``parent/<name>/<corruption>.npy`` (5 severities stacked) and ``labels.npy``."""
    folder = parent / name
    folder.mkdir(parents=True)
    labels = np.tile(np.arange(per_severity) % classes, 5).astype(np.uint8)
    np.save(folder / "labels.npy", labels)
    out = {"labels": labels}
    for k, c in enumerate(corruptions):
        images = rng_images(5 * per_severity, seed=40 + k)
        np.save(folder / f"{c}.npy", images)
        out[c] = images
    return out


def write_svhn(path: Path, n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """An SVHN ``.mat`` (X (32, 32, 3, N), y (N, 1) with 10 for the digit 0) via scipy.io.savemat."""
    from scipy.io import savemat

    images = rng_images(n, seed=50)
    digits = np.array([(i * 3) % 10 for i in range(n)])
    y = np.where(digits == 0, 10, digits).reshape(-1, 1).astype(np.uint8)
    savemat(path, {"X": images.transpose(1, 2, 3, 0), "y": y})
    return images, digits


def _idx(array: np.ndarray) -> bytes:
    magic = (0x08 << 8) | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder: Path, n: int = 6, gz: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The four IDX files (``.gz`` or raw) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for k, (split, prefix) in enumerate((("train", "train"), ("test", "t10k"))):
        images = rng_images(n, seed=60 + k, shape=(28, 28))
        labels = (np.arange(n) + k) % 10
        for kind, data in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            raw = _idx(np.asarray(data))
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
            else:
                (folder / name).write_bytes(raw)
        out[split] = (images, labels)
    return out


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_hf_folder(
    folder: Path,
    n: int = 5,
    names=("cat", "dog", "frog"),
    image_column: str = "img",
    label_column: str = "label",
    shards: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """A ``Dataset.save_to_disk`` folder: ``data-0000k-of-0000N.arrow`` (Arrow IPC streams, an Image struct column
    {bytes, path} and a ClassLabel column), ``dataset_info.json``, ``state.json``."""
    import pyarrow as pa

    folder.mkdir(parents=True)
    images = rng_images(n, seed=70, shape=(8, 8, 3))
    labels = np.arange(n) % len(names)
    features = {image_column: {"_type": "Image"}, label_column: {"names": list(names), "_type": "ClassLabel"}}
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema(
        [(image_column, image_type), (label_column, pa.int64())],
        metadata={"huggingface": json.dumps({"info": {"features": features}})},
    )
    files = []
    for k, rows in enumerate(np.array_split(np.arange(n), shards)):
        name = f"data-{k:05d}-of-{shards:05d}.arrow"
        table = pa.table(
            {
                image_column: pa.array([{"bytes": png_bytes(images[i]), "path": None} for i in rows], image_type),
                label_column: pa.array(labels[rows], pa.int64()),
            },
            schema=schema,
        )
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            writer.write_table(table, max_chunksize=2)
        files.append({"filename": name})
    (folder / "dataset_info.json").write_text(json.dumps({"citation": "", "description": "", "features": features}))
    (folder / "state.json").write_text(
        json.dumps(
            {
                "_data_files": files,
                "_fingerprint": "0123456789abcdef",
                "_format_columns": None,
                "_format_kwargs": {},
                "_format_type": None,
                "_output_all_columns": False,
                "_split": "test",
            }
        )
    )
    return images, labels


def write_wds(folder: Path, shards: int = 3, per_shard: int = 4, label: str = "cls") -> tuple[np.ndarray, np.ndarray]:
    """``folder/shard-00000{0..}.tar``: per sample ``<key>.png`` + ``<key>.cls`` (or ``.json`` {"label": …})."""
    folder.mkdir(parents=True, exist_ok=True)
    n = shards * per_shard
    images = rng_images(n, seed=80, shape=(8, 8, 3))
    labels = np.arange(n) % 3
    for s in range(shards):
        with tarfile.open(folder / f"shard-{s:06d}.tar", "w") as tar:
            for i in range(s * per_shard, (s + 1) * per_shard):
                key = f"sample{i:05d}"
                text = json.dumps({"label": int(labels[i])}) if label == "json" else str(int(labels[i]))
                for field, data in (("png", png_bytes(images[i])), (label, text.encode())):
                    info = tarfile.TarInfo(f"{key}.{field}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return images, labels


def write_wnid_folders(folder: Path, wnids, per_class: int = 2, size: int = 8) -> None:
    """``folder/<wnid>/<i>.png`` for each WordNet ID (the ImageNet-A/R/O and ImageNet-C class folders)."""
    for k, wnid in enumerate(wnids):
        (folder / wnid).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng_images(1, seed=100 * k + i, shape=(size, size, 3))[0]).save(folder / wnid / f"{i}.png")
