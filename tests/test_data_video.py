"""Video datasets: synthetic clips written with PyAV, centred clip sampling, unreadable files, model settings."""

from __future__ import annotations

import os
import pickle
import re

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from gradtrust.data.samples import collate_samples  # noqa: E402
from gradtrust.data.video import (  # noqa: E402
    VIDEO_MODELS,
    VideoFolderDataset,
    clip_frame_indices,
    read_video_clip,
    video_clip_settings,
)
from gradtrust.errors import DataError, UnknownNameError  # noqa: E402

W, H = 64, 48
LEVEL = 12  # frame i is filled with grey level 12 * i, so the decoded level tells the frame number


def _codec(preferred: tuple[str, ...]) -> str:
    for name in preferred:
        if name in av.codecs_available:
            return name
    pytest.skip(f"none of the video encoders {preferred} is available in PyAV")


def write_clip(path, frames: int = 20, codec: str | None = None, fps: int = 30) -> None:
    codec = codec or _codec(("mpeg4", "libx264", "h264"))
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.bit_rate = 4_000_000  # flat grey frames: near-lossless at this rate
        for i in range(frames):
            img = np.full((H, W, 3), LEVEL * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def frame_numbers(clip: torch.Tensor) -> list[int]:
    """The source frame number of each frame of a (T, C, H, W) clip, from its grey level."""
    return [int(round(float(f[:, 8:-8, 8:-8].float().mean()) / LEVEL)) for f in clip]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinetics")
    (root / "abseiling").mkdir()
    (root / "zumba").mkdir()
    write_clip(root / "abseiling" / "a.mp4", 20)
    write_clip(root / "abseiling" / "b.mkv", 20, codec=_codec(("libx264", "mpeg4")))
    write_clip(root / "zumba" / "short.avi", 5)
    (root / "zumba" / "empty.webm").write_bytes(b"")
    (root / "zumba" / "garbage.mp4").write_bytes(os.urandom(4000))
    full = (root / "abseiling" / "a.mp4").read_bytes()
    (root / "zumba" / "truncated.mp4").write_bytes(full[: len(full) // 2])  # index (moov) at the end: lost
    mkv = (root / "abseiling" / "b.mkv").read_bytes()
    (root / "zumba" / "truncated.mkv").write_bytes(mkv[: len(mkv) // 2])  # header kept, frames lost
    (root / "zumba" / "notes.txt").write_text("not a video")
    return root


def test_clip_frame_indices():
    assert clip_frame_indices(20, 16, 1) == list(range(2, 18))
    assert clip_frame_indices(300, 16, 2) == list(range(134, 166, 2))
    assert clip_frame_indices(20, 16, 2) == [0, 0, 0, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 18, 18, 18]
    assert clip_frame_indices(1, 4, 2) == [0, 0, 0, 0]
    # 25 fps resampled to 15 fps: step 5/3, floor(k * 5/3) as torchvision's VideoClips does.
    assert clip_frame_indices(10, 6, 25 / 15) == [0, 1, 3, 5, 6, 8]
    with pytest.raises(ValueError):
        clip_frame_indices(0, 4, 1)


def test_decode_shape_dtype_and_centred_clip(videos):
    for name in ("a.mp4", "b.mkv"):
        path = videos / "abseiling" / name
        clip = read_video_clip(path, clip_len=16, frame_stride=1)
        assert clip.shape == (16, 3, H, W) and clip.dtype == torch.uint8
        assert frame_numbers(clip) == list(range(2, 18)), name
        assert torch.equal(clip, read_video_clip(path, clip_len=16, frame_stride=1))  # deterministic
        clip2 = read_video_clip(path, clip_len=8, frame_stride=2)
        assert frame_numbers(clip2) == [2, 4, 6, 8, 10, 12, 14, 16]
        # frame_rate: a 30 fps video sampled at 15 fps = stride 2
        assert torch.equal(read_video_clip(path, clip_len=8, frame_stride=1, frame_rate=15), clip2)


def test_short_video_padded_by_repeating_edge_frames(videos):
    clip = read_video_clip(videos / "zumba" / "short.avi", clip_len=8, frame_stride=1)
    assert clip.shape == (8, 3, H, W)
    assert frame_numbers(clip) == [0, 0, 0, 1, 2, 3, 4, 4]  # 2 grid positions before, 1 after


def test_dataset_records_unreadable_files(videos):
    ds = VideoFolderDataset(videos, clip_len=16, frame_stride=1)
    assert ds.classes == ["abseiling", "zumba"]
    names = [os.path.basename(ds.path(i)) for i in range(len(ds))]
    assert names == ["a.mp4", "b.mkv", "empty.webm", "garbage.mp4", "short.avi", "truncated.mkv", "truncated.mp4"]
    assert ds.targets.tolist() == [0, 0, 1, 1, 1, 1, 1]
    samples = [ds[i] for i in range(len(ds))]
    for s in (samples[0], samples[1], samples[4]):
        assert s.error == "" and s.input.shape == (16, 3, H, W) and s.input.dtype == torch.uint8
    for s in (samples[2], samples[3], samples[5], samples[6]):
        assert s.input is None and s.error
    assert samples[2].error == "empty file (0 bytes)"
    assert "cannot decode video" in samples[3].error
    assert "truncated" in samples[5].error  # duration says 20 frames, fewer are there
    assert "cannot decode video" in samples[6].error
    batch = collate_samples(samples)
    assert batch.inputs.shape == (3, 16, 3, H, W)
    assert [i for i, _, _ in batch.failures] == [2, 3, 5, 6]
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[0].input, samples[0].input)


def test_torchvision_r3d_transform_gives_model_input(videos):
    from torchvision.models.video import R3D_18_Weights

    transform = R3D_18_Weights.KINETICS400_V1.transforms()  # no download: only the preset
    ds = VideoFolderDataset.for_model(videos, "r3d_18", transform=transform)
    assert (ds.clip_len, ds.frame_rate) == (16, 15.0)
    s = ds[0]
    assert s.error == ""
    assert s.input.shape == (3, 16, 112, 112) and s.input.dtype == torch.float32


def test_video_clip_settings_match_torchvision_weights():
    from torchvision.models import get_model_weights

    assert set(VIDEO_MODELS) == {"r3d_18", "mc3_18", "r2plus1d_18", "s3d", "mvit_v1_b", "mvit_v2_s",
                                 "swin3d_t", "swin3d_s", "swin3d_b"}
    for name, settings in VIDEO_MODELS.items():
        meta = get_model_weights(name).KINETICS400_V1.meta
        docs = meta["_docs"]
        frame_rate = float(re.search(r"frame_rate=([\d.]+)", docs).group(1))
        clip_len = int(re.search(r"clip_len=(\d+)", docs).group(1))
        assert (settings.clip_len, settings.frame_rate) == (clip_len, frame_rate), name
        assert settings.frame_stride == round(30 / frame_rate)
        assert settings.min_temporal_size == meta.get("min_temporal_size", 1), name
        assert settings.clip_len >= settings.min_temporal_size
    assert video_clip_settings("torchvision:R3D_18") == VIDEO_MODELS["r3d_18"]
    with pytest.raises(UnknownNameError, match="known torchvision video models: r3d_18"):
        video_clip_settings("resnet50")


def test_empty_video_folder(tmp_path):
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "x.txt").write_text("x")
    with pytest.raises(DataError, match=r"No video files \(.avi, .mkv, .mov, .mp4, .webm\).*clip_001.mp4"):
        VideoFolderDataset(tmp_path)
