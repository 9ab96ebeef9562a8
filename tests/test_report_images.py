"""``gradtrust report`` reads sample images only inside the runs' data roots (issue 21): a run from someone else
could name any file in its ``path`` column (``../..``, absolute); those are left out and the page says so, unless
the user opts in with ``--allow-outside-images``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from gradtrust.cli import main
from gradtrust.reporting import build_report, load_run
from gradtrust.reporting.figures import DigitsCache, load_sample_image


def _image(path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


@pytest.fixture
def foreign_run(tmp_path):
    """A score run whose data root is ``data/``; two of its rows name files outside it."""
    root = tmp_path / "data"
    _image(root / "a" / "0.png", 10)
    _image(tmp_path / "secret" / "s.png", 200)
    _image(tmp_path / "secret" / "t.png", 220)
    paths = [
        str(root / "a" / "0.png"),
        str(tmp_path / "secret" / "s.png"),
        "../secret/t.png",
        str(root / "a" / "0.png"),
    ]
    run = tmp_path / "run"
    run.mkdir()
    n = len(paths)
    pd.DataFrame(
        {
            "index": np.arange(n),
            "path": paths,
            "label": [1] * n,
            "prediction": [0] * n,
            "correct": [False] * n,
            "softmax": [0.1, 0.97, 0.97, 0.1],
            "gradtrust": [1.0, 2.0, 3.0, 4.0],
        }
    ).to_parquet(run / "scores.parquet")
    (run / "manifest.json").write_text(
        json.dumps(
            {
                "model": {"spec": "m", "class_names": ["a", "b"]},
                "dataset": {"kind": "ImageFolderDataset", "root": str(root)},
            }
        )
    )
    return run, paths, tmp_path


def test_images_outside_the_data_root_are_not_read(foreign_run):
    run_dir, paths, tmp = foreign_run
    run = load_run(run_dir)
    cache = DigitsCache()
    assert load_sample_image(run, paths[0], cache) is not None  # inside the data root
    assert load_sample_image(run, paths[1], cache) is None  # absolute, elsewhere
    assert load_sample_image(run, str(tmp / "data" / ".." / "secret" / "t.png"), cache) is None  # .. out of it
    assert cache.refused[run.name] == [paths[1], str(tmp / "data" / ".." / "secret" / "t.png")]
    trusting = DigitsCache(allow_outside=True)
    assert load_sample_image(run, paths[1], trusting)[0, 0, 0] == 200 and not trusting.refused


def test_the_page_says_which_images_were_left_out(foreign_run, monkeypatch):
    run_dir, paths, tmp = foreign_run
    opened: list[str] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: (opened.append(str(fp)), real_open(fp, *a, **k))[1])
    report = build_report([run_dir], tmp / "report", resamples=0)
    assert not any("secret" in p for p in opened), opened
    page = (tmp / "report" / "index.html").read_text()
    assert "image file(s) were not read" in page and "secret/s.png" in page and "--allow-outside-images" in page
    assert any("were not read" in w for w in report.warnings)

    opened.clear()
    result = CliRunner().invoke(
        main, ["report", str(run_dir), "--out", str(tmp / "trusting"), "--resamples", "0", "--allow-outside-images"]
    )
    assert result.exit_code == 0, result.output
    assert any(p.endswith("s.png") for p in opened) and any(p.endswith("t.png") for p in opened)
    assert "were not read" not in (tmp / "trusting" / "index.html").read_text()
