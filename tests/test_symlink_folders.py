"""Class folders with symbolic links (issue 12, item 5): links to files and folders are followed, a link
cycle is walked once, and no file is listed twice (real paths); a link into another class folder does not
relabel its files."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from gradtrust.data.images import ImageFolderDataset

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")


def test_symlink_loops_and_duplicates(tmp_path):
    root = tmp_path / "data"
    outside = tmp_path / "elsewhere"
    for d in (root / "a", root / "b", outside):
        d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for path in (root / "a" / "x.png", root / "b" / "y.png", outside / "z.png"):
        Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(path)
    os.symlink("..", root / "a" / "up")                      # a cycle back to the dataset root
    os.symlink(root / "a", root / "b" / "to_a")               # a link into another class folder
    os.symlink(root / "a" / "x.png", root / "b" / "x_link.png")  # a second path to a/x.png
    os.symlink(outside / "z.png", root / "b" / "z.png")       # a linked file outside the dataset: followed
    with pytest.warns(UserWarning, match="symbolic links"):
        ds = ImageFolderDataset(root)
    listed = {os.path.relpath(ds.path(i), root): ds.label(i) for i in range(len(ds))}
    assert listed == {"a/x.png": 0, "b/y.png": 1, "b/z.png": 1}
    reals = [os.path.realpath(ds.path(i)) for i in range(len(ds))]
    assert len(set(reals)) == len(reals)
