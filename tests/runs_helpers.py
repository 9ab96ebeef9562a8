"""Small things the run-engine tests share: a tiny image classifier as a ``module:factory`` spec, its weights
file, and a class folder of 8x8 PNGs whose files keep their byte size when their content is replaced."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image

NETS = """
from torch import nn

def build(num_classes=2):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, num_classes))

def build_mlp(num_classes=2):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 8), nn.ReLU(), nn.Linear(8, num_classes))
"""


def write_image(path: Path, seed: int) -> None:
    """An 8x8 RGB PNG, stored uncompressed: every such file has the same size, whatever its pixels."""
    pixels = (np.random.default_rng(seed).random((8, 8, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, compress_level=0)


def setup(tmp: Path, monkeypatch, per_class: int = 4) -> tuple[str, Path, Path]:
    """``(model spec, weights file, data folder)``; the factory's module is importable here and in child
    processes (``sys.path``, ``PYTHONPATH``); the file-hash cache lives in ``tmp``."""
    package = tmp / "runs_nets"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text(textwrap.dedent(NETS))
    monkeypatch.syspath_prepend(str(tmp))
    monkeypatch.delitem(sys.modules, "runs_nets", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp), *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.setenv("GRADTRUST_CACHE_DIR", str(tmp / "cache"))
    torch.manual_seed(0)
    from runs_nets import build  # type: ignore[import-not-found]

    weights = tmp / "weights.pt"
    torch.save(build().state_dict(), weights)
    data = tmp / "data"
    for c in "01":
        (data / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            write_image(data / c / f"{i}.png", seed=10 * int(c) + i)
    return "runs_nets:build", weights, data


def replace_image(data: Path) -> Path:
    """Overwrite one image by another of the same size (new pixels); returns it."""
    path = data / "1" / "0.png"
    size = path.stat().st_size
    write_image(path, seed=999)
    assert path.stat().st_size == size
    return path


def new_weights(weights: Path) -> None:
    """Overwrite the weights file by other weights of the same shapes."""
    state = torch.load(weights)
    torch.save({k: v + 0.5 for k, v in state.items()}, weights)
