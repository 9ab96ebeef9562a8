"""The tutorials' protocols on data sets in their distributed formats (tiny synthetic files, tests/data_formats.py):
GradCON one model per class on ``cifar10:DIR`` and ``mnist:DIR``; detection with the known set ``cifar10:DIR:test``
and challenge sets from ``cifar10c:`` and SVHN; introspection fitted on ``cifar10:DIR:train`` and scored on
``cifar10c:``. Numbers are checked against scikit-learn on the stored runs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from data_formats import write_cifar10, write_cifar_c, write_mnist, write_svhn
from gradtrust.cli import main
from gradtrust.errors import InputError
from gradtrust.gradcon.benchmark import split_specs


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tutorial-data")
    write_cifar10(folder, per_batch=8)  # 40 train, 8 test images
    write_cifar_c(folder, per_severity=8, corruptions=("fog", "snow"))
    write_svhn(folder / "test_32x32.mat", n=8)
    write_mnist(folder / "mnist", n=20)
    return folder


def test_gradcon_benchmark_splits():
    assert split_specs("digits") == ("digits:train", "digits:test")
    assert split_specs("cifar10:/d") == ("cifar10:/d:train", "cifar10:/d:test")
    assert split_specs("cifar10:/d:test") == ("cifar10:/d:train", "cifar10:/d:test")
    assert split_specs("mnist:/m:rgb=1") == ("mnist:/m:rgb=1:train", "mnist:/m:rgb=1:test")
    with pytest.raises(InputError, match="cifar10:DIR"):
        split_specs("svhn:/x.mat")
    with pytest.raises(InputError, match="cifar10:DIR"):
        split_specs("cifar10")


@pytest.mark.parametrize("kind", ["cifar10", "mnist"])
def test_gradcon_benchmark_one_model_per_class(kind, root, tmp_path):
    data = f"cifar10:{root}" if kind == "cifar10" else f"mnist:{root / 'mnist'}"
    out = tmp_path / "bench"
    result = CliRunner().invoke(
        main,
        [
            "gradcon",
            "benchmark",
            "--data",
            data,
            "--classes",
            "0,1",
            "--epochs",
            "1",
            "--resamples",
            "20",
            "--no-progress",
            "--no-report",
            "--out",
            str(out),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "table.csv")
    names = ["airplane", "automobile"] if kind == "cifar10" else ["0", "1"]
    assert list(table["class"].astype(str)) == [*names, "mean"]
    n_test = 8 if kind == "cifar10" else 20
    assert set(table["n_test"]) == {n_test}
    for c in (0, 1):
        saved = json.loads((out / "models" / "gradcon" / f"class_{c}" / "estimator.json").read_text())
        assert saved["metadata"]["data"] == f"{data}:train"
        frame = pd.read_parquet(out / "runs" / "gradcon" / f"class_{c}" / "anomaly_scores.parquet")
        assert len(frame) == n_test and frame["inlier"].sum() == (frame["label"] == c).sum() > 0
        row = table.iloc[c]
        assert row["auroc_gradcon"] == pytest.approx(roc_auc_score(frame["inlier"], frame["score"]), abs=1e-12)
    assert f"test images of {data} scored" in (out / "table.md").read_text()


def test_detect_known_cifar10_against_cifar10c_and_svhn(root, tmp_path):
    """Known = ``cifar10:DIR:test``; challenges = a CIFAR-10-C corruption and SVHN, as out-of-distribution sets."""
    challenges = f"ood=cifar10c:{root}:fog:3,ood=svhn:{root / 'test_32x32.mat'}"
    result = CliRunner().invoke(
        main,
        [
            "detect",
            "--model",
            "cifar:resnet20",
            "--data",
            f"cifar10:{root}:test",
            "--challenge",
            challenges,
            "--detectors",
            "logistic",
            "--baselines",
            "softmax,energy",
            "--resamples",
            "10",
            "--out",
            str(tmp_path / "d"),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "d" / "table.csv")
    assert set(table["challenge"]) == {f"ood:cifar10c:{root}:fog:3", f"ood:svhn:{root / 'test_32x32.mat'}"}
    assert set(table["method"]) == {"purview_logistic", "softmax", "energy"}
    assert table["auroc"].between(0, 1).all() and set(table["n_known"]) == {4}


def test_introspect_fit_on_cifar10_train_scored_on_cifar10c(root, tmp_path):
    fit = CliRunner().invoke(
        main,
        [
            "introspect",
            "fit",
            "--model",
            "cifar:cifar10_resnet20",
            "--data",
            f"cifar10:{root}:train",
            "--epochs",
            "2",
            "--out",
            str(tmp_path / "h"),
            "--no-progress",
        ],
        catch_exceptions=False,
    )
    assert fit.exit_code == 0, fit.output
    score = CliRunner().invoke(
        main,
        [
            "introspect",
            "score",
            "--introspective",
            str(tmp_path / "h"),
            "--data",
            f"cifar10c:{root}:snow:5",
            "--methods",
            "softmax",
            "--out",
            str(tmp_path / "s"),
            "--no-progress",
        ],
        catch_exceptions=False,
    )
    assert score.exit_code == 0, score.output
    both = pd.read_parquet(tmp_path / "s" / "introspection.parquet")
    assert len(both) == 8
    labels = np.load(root / "CIFAR-10-C" / "labels.npy")[32:40]  # severity 5 = the fifth block of 8
    assert list(both["label"]) == list(labels)
    manifest = json.loads((tmp_path / "s" / "introspective" / "manifest.json").read_text())
    assert manifest["dataset"]["corruption"] == "snow" and manifest["dataset"]["severity"] == 5
