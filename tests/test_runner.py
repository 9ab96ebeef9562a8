"""``score_dataset`` / ``gradtrust score`` on real files: image folders with unreadable files, the flat ImageNet
layout, video clips, unknown labels, chunk files, resume after ``kill -9`` and after lost chunks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from gradtrust.cli import main
from gradtrust.data import Sample
from gradtrust.data.open import describe_dataset, open_dataset, parse_digits_spec
from gradtrust.errors import DataError
from gradtrust.models import load_model
from gradtrust.runs import RunConflictError, default_chunk_size, score_dataset
from gradtrust.runs.chunks import ChunkBatchSampler, ChunkLayout, read_chunk_meta


def run_cli(*args: str):
    return CliRunner().invoke(main, ["score", *args, "--no-progress"], catch_exceptions=False)


def subprocess_env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


def write_jpeg(path: Path, seed: int, size: int = 32) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, quality=90)


def image_folder(root: Path, classes: list[str], per_class: int, size: int = 32) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            write_jpeg(root / name / f"{i:03d}.jpg", seed=1000 * c + i, size=size)
    return root


def without_execution(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k != "execution"}


# --------------------------------------------------------------------------- layout


def test_chunk_layout_batches_never_cross_chunks():
    layout = ChunkLayout(num_samples=23, chunk_size=8, batch_size=3)
    assert layout.num_chunks == 3 and layout.bounds(2) == (16, 23)
    sampler = ChunkBatchSampler(layout, [2, 0])
    assert list(sampler) == [[16, 17, 18], [19, 20, 21], [22], [0, 1, 2], [3, 4, 5], [6, 7]]
    assert len(sampler) == 6
    assert [p[3] for p in sampler.plan()] == [False, False, True, False, False, True]
    assert default_chunk_size(64) == 1024 and default_chunk_size(100) == 1100 and default_chunk_size(4096) == 4096


# --------------------------------------------------------------------------- open_dataset


def test_open_dataset_errors(tmp_path):
    digits_model = load_model("digits:digits_linear", "DEFAULT")
    image_model = load_model(nn.Linear(4, 2))
    image_model.input_kind = "image"
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(tmp_path / "missing", digits_model)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        open_dataset(tmp_path / "file.txt", digits_model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        open_dataset(tmp_path / "empty", digits_model)
    (tmp_path / "flat").mkdir()
    write_jpeg(tmp_path / "flat" / "a.jpg", 0)
    with pytest.raises(DataError, match="--labels"):
        open_dataset(tmp_path / "flat", digits_model)
    with pytest.raises(DataError, match="unknown digits split"):
        open_dataset("digits:val", digits_model)
    with pytest.raises(DataError, match="unknown digits corruption"):
        open_dataset("digits:test:fog", digits_model)
    with pytest.raises(DataError, match="needs a corruption"):
        parse_digits_spec("digits:test:clean:2")
    with pytest.raises(DataError, match="1×8×8"):
        open_dataset("digits", image_model)
    with pytest.raises(DataError, match="--labels"):
        open_dataset("digits", digits_model, labels="labels.csv")
    noisy = open_dataset("digits:train:gaussian_noise:3", digits_model)
    assert len(noisy) == 896 and noisy.classes == [str(d) for d in range(10)]
    info = noisy.describe()
    assert info["split"] == "train" and info["severity"] == 3 and info["spec"] == "digits:train:gaussian_noise:3"


def test_dataset_fingerprint_follows_file_content(tmp_path):
    root = image_folder(tmp_path / "imgs", ["a", "b"], 2)
    model = load_model(nn.Linear(4, 2))
    first = open_dataset(root, model).describe()
    assert first["kind"] == "ImageFolderDataset" and first["root"] == str(root) and first["samples"] == 4
    assert open_dataset(root, model).describe()["fingerprint"] == first["fingerprint"]
    write_jpeg(root / "b" / "001.jpg", seed=99, size=40)  # same name, other content and size
    assert open_dataset(root, model).describe()["fingerprint"] != first["fingerprint"]


# --------------------------------------------------------------------------- image folders


def test_image_folder_resnet18_records_unreadable_files(tmp_path):
    root = image_folder(tmp_path / "imgs", ["cat", "dog", "fish"], 2)
    (root / "cat" / "zero.jpg").write_bytes(b"")
    (root / "dog" / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(600))
    write_jpeg(tmp_path / "big.jpg", seed=5, size=64)
    data = (tmp_path / "big.jpg").read_bytes()
    (root / "fish" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"

    result = run_cli("--model", "torchvision:resnet18", "--num-classes", "3", "--data", str(root), "--out", str(out),
                     "--batch-size", "2", "--chunk-size", "4", "--workers", "2")
    assert result.exit_code == 0, result.output
    assert "scored 6 of 9 samples, 3 failed" in result.output

    frame = pd.read_parquet(out / "scores.parquet")
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(frame) == 6 and frame["index"].is_monotonic_increasing
    assert set(frame["path"].map(lambda p: Path(p).name)) == {"000.jpg", "001.jpg"}
    assert frame["label"].tolist() == [0, 0, 1, 1, 2, 2]  # folder order = output order (3 = 3 outputs)
    assert manifest["counts"]["failed"] == 3 and manifest["counts"]["scored"] == 6
    reasons = {Path(f["path"]).name: f["reason"] for f in manifest["failures"]}
    assert reasons["zero.jpg"] == "empty file (0 bytes)"
    assert reasons["corrupt.jpg"].startswith("not a recognised image format")
    assert reasons["truncated.jpg"].startswith("truncated or corrupt image")
    # The failures are stored with their chunk (chunk files' Parquet metadata).
    chunk_files = sorted((out / "chunks").glob("chunk-*.parquet"))
    assert [p.name for p in chunk_files] == ["chunk-000000000.parquet", "chunk-000000004.parquet",
                                             "chunk-000000008.parquet"]
    stored = [f for p in chunk_files for f in read_chunk_meta(p)["failures"]]
    assert sorted(Path(f[1]).name for f in stored) == sorted(reasons)
    assert "mc_dropout" in manifest["skipped"] and "mc_dropout" not in frame.columns  # resnet18: no dropout
    assert manifest["model"]["meta"]["weights_kind"] == "random"
    assert manifest["class_map"] == [0, 1, 2]
    assert manifest["score_info"]["final_layer"] == "fc"
    assert np.isfinite(frame["gradtrust"]).all()


def test_flat_imagenet_layout_and_class_mismatch_before_any_work(tmp_path):
    flat = tmp_path / "val"
    flat.mkdir()
    wnids = ["n01440764", "n01443537", "n15075141"]  # output 0, 1 and 999 of an ImageNet-1k model
    for i in range(3):
        write_jpeg(flat / f"ILSVRC2012_val_{i + 1:08d}.JPEG", seed=i)
    labels = tmp_path / "LOC_val_solution.csv"
    labels.write_text("ImageId,PredictionString\n" + "".join(
        f"ILSVRC2012_val_{i + 1:08d},{w} 1 1 20 20\n" for i, w in enumerate(wnids)))

    out = tmp_path / "out"
    result = run_cli("--model", "torchvision:resnet18", "--data", str(flat), "--labels", str(labels),
                     "--out", str(out), "--methods", "softmax,gradtrust")
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out / "scores.parquet")
    assert frame["label"].tolist() == [0, 1, 999]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"]["kind"] == "FlatImageDataset" and manifest["dataset"]["labels_file"] == str(labels)
    assert manifest["model"]["num_classes"] == 1000

    mismatch = tmp_path / "mismatch"
    result = run_cli("--model", "torchvision:resnet18", "--num-classes", "3", "--data", str(flat), "--labels",
                     str(labels), "--out", str(mismatch))
    assert result.exit_code == 2
    assert "Error: the dataset's classes do not match the model's outputs" in result.output
    assert "1000 classes" in result.output and "3 outputs" in result.output
    assert not mismatch.exists()  # refused before anything was written


# --------------------------------------------------------------------------- video


def _write_clip(path: Path, frames: int, level: int) -> None:
    import av

    codec = next((c for c in ("mpeg4", "libx264", "h264") if c in av.codecs_available), None)
    if codec is None:
        pytest.skip("no video encoder in PyAV")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=30)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(frames):
            img = np.full((32, 32, 3), (level + 9 * i) % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_video_folder_r3d_18_end_to_end(tmp_path):
    root = tmp_path / "kinetics"
    (root / "abseiling").mkdir(parents=True)
    (root / "zumba").mkdir()
    _write_clip(root / "abseiling" / "a.mp4", frames=6, level=20)
    _write_clip(root / "zumba" / "b.mp4", frames=4, level=200)
    (root / "zumba" / "broken.mp4").write_bytes(np.random.default_rng(1).bytes(3000))
    out = tmp_path / "out"
    result = run_cli("--model", "torchvision:r3d_18", "--num-classes", "2", "--data", str(root), "--out", str(out),
                     "--methods", "softmax,gradtrust,gradnorm", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out / "scores.parquet")
    manifest = json.loads((out / "manifest.json").read_text())
    assert frame["label"].tolist() == [0, 1] and len(frame) == 2
    assert np.isfinite(frame[["softmax", "gradtrust", "gradnorm"]].to_numpy()).all()
    assert manifest["dataset"]["kind"] == "VideoFolderDataset" and manifest["dataset"]["clip_len"] == 16
    assert manifest["model"]["input_kind"] == "video"
    assert [Path(f["path"]).name for f in manifest["failures"]] == ["broken.mp4"]


# --------------------------------------------------------------------------- API: labels, chunks, resume


class _Vectors(Dataset):
    """Four-dimensional inputs; odd positions have no label (−1); position 5 is unreadable."""

    classes = ["neg", "pos"]

    def __len__(self) -> int:
        return 21

    def __getitem__(self, i: int) -> Sample:
        if i == 5:
            return Sample(None, 0, i, f"vec/{i}", "unreadable on purpose")
        x = torch.from_numpy(np.random.default_rng(i).standard_normal(4).astype(np.float32))
        return Sample(x, -1 if i % 2 else (i // 2) % 2, i, f"vec/{i}", "")


def _vector_model():
    torch.manual_seed(3)
    return load_model(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 2)))


def test_api_unknown_labels_chunks_and_in_process_resume(tmp_path):
    model, data = _vector_model(), _Vectors()
    out = tmp_path / "out"
    options = {"mc_samples": 4, "seed": 7}
    summary = score_dataset(model, data, out, methods=None, options=options, batch_size=3, chunk_size=6,
                            progress=False, dataset_info={"name": "vectors"})
    assert summary.num_samples == 21 and summary.num_scored == 20 and summary.num_failed == 1
    assert summary.resumed_chunks == 0 and summary.scores_path == out / "scores.parquet"
    assert summary.methods[:2] == ["softmax", "entropy"] and "mc_dropout" in summary.methods
    frame = pd.read_parquet(summary.scores_path)
    labelled = frame[frame["label"] >= 0]
    assert (frame.loc[frame["label"] < 0, "correct"] == False).all()  # noqa: E712 - unknown label: not correct
    assert summary.accuracy == pytest.approx((labelled["label"] == labelled["prediction"]).mean())
    manifest = json.loads(summary.manifest_path.read_text())
    assert manifest["counts"]["labelled"] == len(labelled)
    assert manifest["dataset"]["info"] == {"name": "vectors"} and manifest["dataset"]["kind"] == "_Vectors"
    assert manifest["methods"]["mc_dropout"] == {"mc_samples": 4, "seed": 7}
    # how the report names each method, without the registry (gradtrust.catalogue.learn)
    assert manifest["method_info"]["mc_dropout"] == {"display_name": "MCD", "in_paper": True}
    assert set(manifest["method_info"]) == set(manifest["methods"])
    assert manifest["failures"] == [{"index": 5, "path": "vec/5", "reason": "unreadable on purpose"}]
    assert sorted(p.name for p in (out / "chunks").iterdir()) == [f"chunk-{s:09d}.parquet" for s in (0, 6, 12, 18)]
    run = json.loads((out / "run.json").read_text())
    assert run["identity"]["layout"] == {"chunk_size": 6, "batch_size": 3}

    # Lose one chunk and the merged files, leave a half-written temporary file: the rerun redoes that chunk only.
    (out / "chunks" / "chunk-000000006.parquet").unlink()
    (out / "scores.parquet").unlink()
    (out / "manifest.json").unlink()
    (out / "chunks" / ".chunk-000000006.parquet.tmp-1-abc").write_bytes(b"partial")
    again = score_dataset(_vector_model(), _Vectors(), out, options=options, batch_size=3, chunk_size=6,
                          progress=False, dataset_info={"name": "vectors"})
    assert again.resumed_chunks == 3
    assert not list((out / "chunks").glob(".*"))
    pd.testing.assert_frame_equal(pd.read_parquet(again.scores_path), frame, check_exact=True)
    assert without_execution(json.loads(again.manifest_path.read_text())) == without_execution(manifest)

    # A different run in the same folder is refused, whatever differs; force discards the old one.
    with pytest.raises(RunConflictError, match=r"options.mc_samples: 4 → 5.*--force"):
        score_dataset(_vector_model(), _Vectors(), out, options={"mc_samples": 5, "seed": 7}, batch_size=3,
                      chunk_size=6, progress=False)
    torch.manual_seed(4)
    other_init = load_model(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 2)))
    with pytest.raises(RunConflictError, match="model.parameters_sha256"):
        score_dataset(other_init, _Vectors(), out, options=options, batch_size=3, chunk_size=6, progress=False)
    forced = score_dataset(other_init, _Vectors(), out, options=options, batch_size=3, chunk_size=6,
                           progress=False, force=True)
    assert forced.resumed_chunks == 0


def test_api_checks_before_writing(tmp_path):
    model = _vector_model()
    with pytest.raises(DataError, match="do not match"):
        score_dataset(model, open_dataset("digits", load_model("digits:digits_tiny", "DEFAULT")), tmp_path / "a",
                      progress=False)
    with pytest.raises(Exception, match="mc_samples must be an integer >= 1"):
        score_dataset(model, _Vectors(), tmp_path / "b", options={"mc_samples": 0}, progress=False)
    with pytest.raises(Exception, match="unknown scoring option"):
        score_dataset(model, _Vectors(), tmp_path / "c", options={"temperature": 1}, progress=False)
    assert not any((tmp_path / name).exists() for name in "abc")
    assert describe_dataset(_Vectors())["samples"] == 21


# --------------------------------------------------------------------------- resume after kill -9


def _tiny_cnn_file(path: Path) -> Path:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(256, 32), nn.ReLU(), nn.Dropout(0.2),
                        nn.Linear(32, 4))
    torch.save(net, path)
    return path


@pytest.mark.slow
def test_resume_after_kill_9_gives_identical_scores(tmp_path):
    root = image_folder(tmp_path / "imgs", ["c0", "c1", "c2", "c3"], 80)
    (root / "c2" / "zero.jpg").write_bytes(b"")
    model_file = _tiny_cnn_file(tmp_path / "net.pt")
    killed, reference = tmp_path / "killed", tmp_path / "reference"

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "gradtrust", "score", "--model", str(model_file), "--data", str(root),
                "--out", str(out), "--batch-size", "8", "--chunk-size", "16", "--option", "mc_samples=30",
                "--no-progress", "--trust-model-file"]  # a whole pickled module: opt-in since issue 12

    total_chunks = -(-321 // 16)
    proc = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=subprocess_env())
    try:
        deadline = time.monotonic() + 180
        while not list((killed / "chunks").glob("chunk-*.parquet")):
            assert proc.poll() is None, "the run ended before its first chunk was written"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    done = len(list((killed / "chunks").glob("chunk-*.parquet")))
    assert 1 <= done < total_chunks and not (killed / "scores.parquet").exists()

    resumed = subprocess.run(command(killed), capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed {done} complete chunks" in resumed.stdout
    uninterrupted = subprocess.run(command(reference), capture_output=True, text=True, env=subprocess_env(),
                                   timeout=300)
    assert uninterrupted.returncode == 0, uninterrupted.stderr

    got, want = pd.read_parquet(killed / "scores.parquet"), pd.read_parquet(reference / "scores.parquet")
    assert len(want) == 320 and "mc_dropout" in want.columns and "purview_final" in want.columns
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    got_manifest = json.loads((killed / "manifest.json").read_text())
    want_manifest = json.loads((reference / "manifest.json").read_text())
    assert without_execution(got_manifest) == without_execution(want_manifest)
    assert got_manifest["execution"]["resumed_chunks"] >= done
    assert got_manifest["counts"]["failed"] == 1


@pytest.mark.slow  # two processes scoring 12 small images with every method (~20 s on a shared machine)
def test_the_same_score_command_twice_gives_the_same_bytes(tmp_path):
    """The README's promise: the same command, run twice in separate processes, writes a byte-identical
    scores.parquet. A random-weight resnet18 (every convolution kind: stem, 3×3, strided, 1×1 downsample) with
    every method; per-layer convolution strategies timed at run time made purview_* differ in the last bits."""
    root = image_folder(tmp_path / "imgs", ["a", "b", "c"], 4, size=40)
    outs = [tmp_path / "first", tmp_path / "second"]
    for out in outs:
        done = subprocess.run([sys.executable, "-m", "gradtrust", "score", "--model", "torchvision:resnet18",
                               "--weights", "random", "--num-classes", "3", "--input-size", "32", "--data",
                               str(root), "--out", str(out), "--batch-size", "6", "--no-progress"],
                              capture_output=True, text=True, env=subprocess_env(), timeout=600)
        assert done.returncode == 0, done.stderr
    first, second = ((out / "scores.parquet").read_bytes() for out in outs)
    assert "purview_final" in pd.read_parquet(outs[0] / "scores.parquet").columns
    assert first == second
