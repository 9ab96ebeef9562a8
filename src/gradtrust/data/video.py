"""Kinetics-style video datasets: ``root/<class>/<clip>.mp4|.avi|.webm|.mkv|.mov``, decoded with PyAV.

Clip sampling (deterministic, one clip per video):

* the video's frames are first put on a sampling grid of step ``s`` source frames — ``s = frame_stride``,
  or, when ``frame_rate`` is given and the video's frame rate ``fps`` is known, ``s = fps / frame_rate``
  (fractional steps take ``floor(k * s)``, exactly torchvision's ``VideoClips`` resampling, so a 30 fps
  video sampled at 15 fps takes every 2nd frame and a 25 fps one frames 0, 1, 3, 5, 6, …);
* the clip is the ``clip_len`` consecutive grid positions centred in the video (when the number of
  grid positions minus ``clip_len`` is odd the clip starts half a step earlier);
* a video shorter than the clip is **padded by repeating its edge frames**: grid positions before the
  first frame repeat the first frame, those after the last repeat the last (the stride, i.e. the motion
  speed, is kept; a one-frame video gives ``clip_len`` copies of it).

Frames are decoded in order from the start (no seeking, so the result never depends on key-frame
placement); only the frames of the clip are kept in memory. The clip is returned as a ``uint8`` tensor
``(T, C, H, W)`` (``T = clip_len``, RGB) — the layout torchvision's video weights' ``transforms()``
(``VideoClassification``) takes; that transform returns a float ``(C, T, H, W)``. Without a transform the
dataset's ``input`` is that uint8 ``(T, C, H, W)`` clip. Variable frame rate videos are sampled by frame
number, not by timestamp.

A zero-byte, truncated, corrupt or non-video file, or one without a decodable video frame, gives a
``Sample`` with ``input=None`` and the reason. A stream that holds or decodes fewer frames than its
container states (the frame count, or else duration × frame rate) counts as truncated when more than
``max(2, 5 %)`` of them are missing (a smaller shortfall is sampled from the frames that are there).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from fractions import Fraction
from typing import Any, NamedTuple

import numpy as np
import torch

from gradtrust.data.images import ImageFileDataset, check_root, normalize_extensions, scan_class_folders
from gradtrust.data.samples import Sample, check_file
from gradtrust.errors import DataError, UnknownNameError

__all__ = [
    "VIDEO_EXTENSIONS",
    "VIDEO_MODELS",
    "VideoClipSettings",
    "VideoFolderDataset",
    "clip_frame_indices",
    "read_video_clip",
    "video_clip_settings",
]

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".webm", ".mkv", ".mov")
"""File name endings (case-insensitive) taken as videos."""


class VideoClipSettings(NamedTuple):
    """How the Kinetics-400 weights of a torchvision video model were evaluated.

    ``clip_len`` frames sampled at ``frame_rate`` frames per second; ``frame_stride`` is the same rate as a
    stride in source frames for Kinetics' nominal 30 fps (``30 / frame_rate``); ``min_temporal_size`` is
    the fewest frames the network accepts (``weights.meta``); ``source`` says where the numbers come from.
    """

    clip_len: int
    frame_rate: float
    frame_stride: int
    min_temporal_size: int
    source: str


# Source: torchvision 0.29, torchvision/models/video/*.py, the KINETICS400_V1 weights' meta "_docs" ("The
# accuracies are estimated on … with parameters `frame_rate=…`, `clips_per_video=…`, and `clip_len=…`")
# and meta "min_temporal_size" (absent for the ResNet-3D family, which accepts any length ≥ 1):
#   resnet.py  _COMMON_META (r3d_18, mc3_18, r2plus1d_18): frame_rate=15, clips_per_video=5, clip_len=16
#   s3d.py     S3D_Weights:            frame_rate=15, clips_per_video=1,  clip_len=128, min_temporal_size=14
#   mvit.py    MViT_V1_B/V2_S_Weights: frame_rate=7.5, clips_per_video=5, clip_len=16,  min_temporal_size=16
#              (the network's positional embedding is built for exactly 16 frames)
#   swin_transformer.py Swin3D_T/S/B_Weights (also Swin3D_B KINETICS400_IMAGENET22K_V1):
#                                      frame_rate=15, clips_per_video=12, clip_len=32, min_temporal_size=1
# frame_stride = 30 / frame_rate: Kinetics-400 videos are mostly 30 fps (some 25/24); prefer frame_rate,
# which adapts the stride to each video's own rate.
_SOURCE = "torchvision.models.video {}: KINETICS400_V1 weights meta (_docs: frame_rate, clip_len)"
VIDEO_MODELS: dict[str, VideoClipSettings] = {
    "r3d_18": VideoClipSettings(16, 15.0, 2, 1, _SOURCE.format("resnet.R3D_18_Weights")),
    "mc3_18": VideoClipSettings(16, 15.0, 2, 1, _SOURCE.format("resnet.MC3_18_Weights")),
    "r2plus1d_18": VideoClipSettings(16, 15.0, 2, 1, _SOURCE.format("resnet.R2Plus1D_18_Weights")),
    "s3d": VideoClipSettings(128, 15.0, 2, 14, _SOURCE.format("s3d.S3D_Weights")),
    "mvit_v1_b": VideoClipSettings(16, 7.5, 4, 16, _SOURCE.format("mvit.MViT_V1_B_Weights")),
    "mvit_v2_s": VideoClipSettings(16, 7.5, 4, 16, _SOURCE.format("mvit.MViT_V2_S_Weights")),
    "swin3d_t": VideoClipSettings(32, 15.0, 2, 1, _SOURCE.format("swin_transformer.Swin3D_T_Weights")),
    "swin3d_s": VideoClipSettings(32, 15.0, 2, 1, _SOURCE.format("swin_transformer.Swin3D_S_Weights")),
    "swin3d_b": VideoClipSettings(32, 15.0, 2, 1, _SOURCE.format("swin_transformer.Swin3D_B_Weights")),
}


def video_clip_settings(model_name: str) -> VideoClipSettings:
    """Frames per clip, frame rate and stride that a torchvision video model's Kinetics-400 weights expect.

    ``model_name`` is the torchvision builder name (``"r3d_18"``, ``"mvit_v2_s"``, …), optionally prefixed
    ``"torchvision:"``; case does not matter.
    """
    key = str(model_name).strip().lower()
    for prefix in ("torchvision:", "torchvision.models.video.", "torchvision."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    if key not in VIDEO_MODELS:
        raise UnknownNameError(
            f"no clip settings for video model {model_name!r}; known torchvision video models: "
            f"{', '.join(VIDEO_MODELS)}"
        )
    return VIDEO_MODELS[key]


def _as_fraction(x: float | int | Fraction) -> Fraction:
    return x if isinstance(x, Fraction) else Fraction(x).limit_denominator(1_000_000)


def clip_frame_indices(num_frames: int, clip_len: int, step: float | Fraction = 1) -> list[int]:
    """The source frame numbers of the centred clip (see the module docstring); repeats pad short videos.

    >>> clip_frame_indices(20, 4, 2)
    [6, 8, 10, 12]
    >>> clip_frame_indices(3, 5, 1)
    [0, 0, 1, 2, 2]
    """
    if num_frames < 1:
        raise DataError("num_frames must be at least 1")
    if clip_len < 1:
        raise DataError("clip_len must be at least 1")
    s = _as_fraction(step)
    if s <= 0:
        raise DataError("step must be positive")
    positions = -(-num_frames * s.denominator // s.numerator)  # ceil(num_frames / s): grid points in the video
    first = (positions - clip_len) // 2  # floor: may be negative for a short video
    grid = (min(max(first + j, 0), positions - 1) for j in range(clip_len))
    return [min(k * s.numerator // s.denominator, num_frames - 1) for k in grid]


def _video_step(stream: Any, frame_stride: int, frame_rate: float | None) -> Fraction:
    if frame_rate is None:
        return Fraction(frame_stride)
    rates = (getattr(stream, attr, None) for attr in ("average_rate", "guessed_rate", "base_rate"))
    fps = next((Fraction(rate) for rate in rates if rate), None)
    if not fps or fps <= 0:
        return Fraction(frame_stride)  # unknown frame rate: fall back to the fixed stride
    return fps / _as_fraction(frame_rate)


def _tolerance(frames: int) -> int:
    """How many frames a sound file may miss against its header: max(2, 5 %)."""
    return max(2, frames // 20)


def _frames_from_duration(container: Any, stream: Any) -> int:
    """Frames implied by the stated duration and frame rate (0 when either is unknown)."""
    rate = stream.average_rate or stream.guessed_rate
    seconds = None
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / 1_000_000  # AV_TIME_BASE
    if not rate or not seconds or seconds <= 0:
        return 0
    return int(round(seconds * float(rate)))


def _count_frames(path: str) -> int:
    """Frames of the first video stream by counting its packets (no decoding); for containers (webm,
    mkv) whose header does not state it."""
    import av

    with av.open(path, metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size)


def _decode_frames(path: str, indices: list[int], threads: int) -> tuple[dict[int, np.ndarray], int]:
    """Decode from the start, keeping the frames numbered in ``indices``; stop after the last one.

    Returns the kept frames (H, W, 3 uint8) and how many frames were decoded.
    """
    import av

    wanted = set(indices)
    last = max(indices)
    kept: dict[int, np.ndarray] = {}
    size: tuple[int, int] | None = None
    decoded = 0
    with av.open(path, metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO" if threads > 1 else "SLICE"
        stream.thread_count = max(1, threads)
        for number, frame in enumerate(container.decode(stream)):
            decoded = number + 1
            if number in wanted:
                if size is None:
                    size = (frame.width, frame.height)
                kept[number] = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
            if number >= last:
                break
    return kept, decoded


def read_video_clip(
    path: str | os.PathLike,
    clip_len: int = 16,
    frame_stride: int = 2,
    frame_rate: float | None = None,
    threads: int = 1,
) -> torch.Tensor:
    """Decode the centred clip of one video: uint8 ``(clip_len, 3, H, W)``; :class:`DataError` with the
    reason when the file cannot be read (see the module docstring for the sampling)."""
    import av

    path = check_file(path)
    try:
        with av.open(path, metadata_errors="ignore") as container:
            if not container.streams.video:
                raise DataError("no video stream in the file")
            stream = container.streams.video[0]
            if stream.codec_context is None:
                raise DataError("no decoder for the video stream")
            num_frames = int(stream.frames or 0)
            step = _video_step(stream, frame_stride, frame_rate)
            expected = 0 if num_frames > 0 else _frames_from_duration(container, stream)
        if num_frames <= 0:
            # No frame count in the header (webm, mkv): count the packets, and compare with the duration.
            num_frames = _count_frames(path)
            if expected and num_frames < expected - _tolerance(expected):
                raise DataError(f"truncated or corrupt video: its duration implies {expected} frames but the "
                                f"file holds {num_frames}")
        if num_frames <= 0:
            raise DataError("the video stream has no frames")
        indices = clip_frame_indices(num_frames, clip_len, step)
        kept, decoded = _decode_frames(path, indices, threads)
        if len(kept) < len(set(indices)):
            # The stream ended before the clip did: it holds fewer decodable frames than it states. A few
            # missing frames happen in sound files (headers counting a frame or two too many): sample again
            # from the frames there are. More is a truncated or corrupt file.
            if decoded == 0:
                raise DataError("no decodable video frame")
            if decoded < num_frames - _tolerance(num_frames):
                raise DataError(f"truncated or corrupt video: the stream has {num_frames} frames but only "
                                f"{decoded} could be decoded")
            indices = clip_frame_indices(decoded, clip_len, step)
            kept, decoded = _decode_frames(path, indices, threads)
            if len(kept) < len(set(indices)):
                raise DataError(f"video decoding is not repeatable ({decoded} frames decoded)")
    except DataError:
        raise
    except av.error.FFmpegError as exc:
        raise DataError(f"cannot decode video: {exc}") from None
    except (OSError, ValueError, RuntimeError, IndexError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot decode video: {type(exc).__name__}: {exc}") from None
    clip = np.stack([kept[i] for i in indices])  # (T, H, W, 3)
    return torch.from_numpy(clip).permute(0, 3, 1, 2).contiguous()


class VideoFolderDataset(ImageFileDataset):
    """Videos in ``root/<class_name>/<clip>.<ext>`` (Kinetics layout); one centred clip per video.

    Each non-hidden sub-folder is a class (sorted order = class index). ``transform`` gets the uint8
    ``(T, C, H, W)`` clip, e.g. ``R3D_18_Weights.KINETICS400_V1.transforms()`` (→ float ``(C, T, H, W)``).
    ``frame_stride``: step between sampled source frames, used when ``frame_rate`` is ``None`` or a video does
    not state its frame rate; ``frame_rate``: sample at this many frames per second instead (step ``fps /
    frame_rate`` per video, as torchvision's reference evaluation does). ``decode_threads``: FFmpeg threads
    per video (keep 1 when DataLoader workers run in parallel).

    Use :meth:`for_model` for the settings of a torchvision video model's Kinetics-400 weights.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable[[torch.Tensor], Any] | None = None,
        clip_len: int = 16,
        frame_stride: int = 2,
        *,
        frame_rate: float | None = None,
        extensions: Iterable[str] = VIDEO_EXTENSIONS,
        decode_threads: int = 1,
    ) -> None:
        if int(clip_len) < 1:
            raise DataError(f"clip_len must be at least 1, got {clip_len}")
        if int(frame_stride) < 1:
            raise DataError(f"frame_stride must be at least 1, got {frame_stride}")
        if frame_rate is not None and not frame_rate > 0:
            raise DataError(f"frame_rate must be positive, got {frame_rate}")
        root_path = check_root(root)
        exts = normalize_extensions(extensions)
        classes, rel_paths, labels = scan_class_folders(root_path, exts, kind="video", example="clip_001.mp4")
        super().__init__(root_path, rel_paths, labels, classes, transform=transform)
        self.extensions = exts
        self.clip_len = int(clip_len)
        self.frame_stride = int(frame_stride)
        self.frame_rate = None if frame_rate is None else float(frame_rate)
        self.decode_threads = max(1, int(decode_threads))

    @classmethod
    def for_model(
        cls,
        root: str | os.PathLike,
        model_name: str,
        transform: Callable[[torch.Tensor], Any] | None = None,
        **kwargs: Any,
    ) -> VideoFolderDataset:
        """A dataset sampling clips as the Kinetics-400 weights of ``model_name`` expect
        (:func:`video_clip_settings`: ``clip_len`` frames at ``frame_rate`` fps)."""
        settings = video_clip_settings(model_name)
        return cls(root, transform, clip_len=settings.clip_len, frame_stride=settings.frame_stride,
                   frame_rate=settings.frame_rate, **kwargs)

    def __getitem__(self, index: int) -> Sample:
        i = self._position(index)
        path, label = self.path(i), self.label(i)
        try:
            clip = read_video_clip(path, self.clip_len, self.frame_stride, self.frame_rate, self.decode_threads)
        except DataError as exc:
            return Sample(input=None, label=label, index=i, path=path, error=str(exc))
        x = self.transform(clip) if self.transform is not None else clip
        return Sample(input=x, label=label, index=i, path=path, error="")

    def __repr__(self) -> str:
        rate = f"frame_rate={self.frame_rate}" if self.frame_rate else f"frame_stride={self.frame_stride}"
        return (f"VideoFolderDataset(root={self.root!r}, samples={len(self)}, classes={len(self.classes)}, "
                f"clip_len={self.clip_len}, {rate}, transform={self.transform!r})")
