"""``gradtrust benchmark --suite cifar10c``: the clean CIFAR-10 test split and CIFAR-10-C corruptions × severities, one
run each through the run engine, resumable, then the report's tables per severity — on tiny synthetic files in the
release's exact formats (tests/data_formats.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from data_formats import CORRUPTIONS_19, write_cifar10, write_cifar_c
from gradtrust.benchmark import suite_data
from gradtrust.cli.benchmark import benchmark_command
from gradtrust.errors import InputError

METHODS = "softmax,energy,gradtrust"


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    """One folder holding cifar-10-batches-py/ (10 test images) and CIFAR-10-C/ (every corruption, 10 per severity)."""
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root, per_batch=10)
    write_cifar_c(root, per_severity=10, corruptions=CORRUPTIONS_19)
    return root


def test_suite_expands_to_clean_plus_every_corruption_and_severity(cifar_root, tmp_path):
    specs = suite_data("cifar10c", [str(cifar_root)])
    assert len(specs) == 1 + 19 * 5
    assert specs[0] == f"cifar10:{cifar_root}:test"
    assert specs[1:6] == [f"cifar10c:{cifar_root}:gaussian_noise:{s}" for s in range(1, 6)]
    assert {s.split(":")[2] for s in specs[1:]} == set(CORRUPTIONS_19)
    apart = suite_data("cifar10c", [f"cifar10:{cifar_root}", f"cifar10c:{cifar_root / 'CIFAR-10-C'}"], "fog", "2,4")
    assert apart == [
        f"cifar10:{cifar_root}:test",
        f"cifar10c:{cifar_root / 'CIFAR-10-C'}:fog:2",
        f"cifar10c:{cifar_root / 'CIFAR-10-C'}:fog:4",
    ]
    with pytest.raises(InputError, match="cifar10c:DIR"):
        suite_data("cifar10c", [f"cifar10:{cifar_root}"])
    with pytest.raises(InputError, match="unknown corruption"):
        suite_data("cifar10c", [str(cifar_root)], "fogg")
    with pytest.raises(InputError, match="severities are 1-5"):
        suite_data("cifar10c", [str(cifar_root)], "fog", "6")


def _args(root, out, *extra):
    return [
        "--suite",
        "cifar10c",
        "--models",
        "cifar:resnet20,cifar:cifar10_resnet20",
        "--weights",
        "random",
        "--data",
        str(root),
        "--corruptions",
        "fog,snow",
        "--severities",
        "1,3",
        "--methods",
        METHODS,
        "--resamples",
        "0",
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def suite_run(cifar_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    result = CliRunner().invoke(benchmark_command, _args(cifar_root, out), catch_exceptions=False)
    return out, result


def test_suite_scores_one_run_each_and_reports_per_severity(suite_run):
    out, result = suite_run
    assert result.exit_code == 0, result.output
    runs = sorted(p.parent for p in (out / "runs").glob("*/*/scores.parquet"))
    assert len(runs) == 2 * (1 + 2 * 2)
    conditions = {}
    for run in runs:
        manifest = json.loads((run / "manifest.json").read_text())
        dataset = manifest["dataset"]
        assert manifest["counts"]["scored"] == 10
        conditions[run] = (manifest["model"]["spec"], dataset.get("corruption", "clean"), dataset.get("severity", 0))
    assert sorted(conditions.values())[:5] == [
        ("cifar:cifar10_resnet20", "clean", 0),
        ("cifar:cifar10_resnet20", "fog", 1),
        ("cifar:cifar10_resnet20", "fog", 3),
        ("cifar:cifar10_resnet20", "snow", 1),
        ("cifar:cifar10_resnet20", "snow", 3),
    ]
    report = out / "report"
    assert (report / "severity.md").is_file() and (report / "severity.csv").is_file()
    assert not (report / "figures").exists()  # a suite draws no figures unless asked (two per run)
    assert "Per corruption severity" in (report / "index.html").read_text()
    assert f"Per corruption severity: {(report / 'severity.md').resolve()}" in result.output
    text = (report / "severity.md").read_text()
    assert "# Accuracy and trust scores per corruption severity" in text
    assert "| model | clean | severity 1 | severity 3 |" in text

    # Each severity's accuracy is the mean over the corruptions of the runs' accuracies, read here from the files.
    frame = pd.read_csv(report / "severity.csv", dtype={"severity": str})
    for model in ("cifar:resnet20", "cifar:cifar10_resnet20"):
        accuracy = {}
        for run, (m, _corruption, severity) in conditions.items():
            if m == model:
                scores = pd.read_parquet(run / "scores.parquet")
                accuracy.setdefault(str(severity) if severity else "clean", []).append(scores["correct"].mean())
        rows = frame[(frame["model"] == model) & (frame["quantity"] == "accuracy")]
        got = dict(zip(rows["severity"].astype(str), rows["value"], strict=True))
        assert got.keys() == {"clean", "1", "3"}
        for column, values in accuracy.items():
            assert got[column] == pytest.approx(np.mean(values), abs=1e-12)
        auac = frame[(frame["model"] == model) & (frame["quantity"] == "auac") & (frame["method"] == "gradtrust")]
        assert set(auac["runs"].astype(int)) == {1, 2}  # clean: one run; each severity: fog and snow
        # AUAC per severity = the mean of the per-run AUACs of the report's main table (table.csv)
        table = pd.read_csv(report / "table.csv")
        mine = table[table["run"].str.startswith(model + " ·") | (table["run"] == model)]
        for level in ("1", "3"):
            per_run = mine[mine["condition"].str.endswith(f"/{level}")]["gradtrust_auac"]
            assert len(per_run) == 2
            got_auac = float(auac[auac["severity"] == level]["value"].iloc[0])
            assert got_auac == pytest.approx(per_run.mean(), abs=1e-9)


def test_suite_rerun_skips_every_complete_run(suite_run, cifar_root):
    out, _ = suite_run
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/*/scores.parquet")}
    result = CliRunner().invoke(benchmark_command, _args(cifar_root, out), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "0 scored, 10 skipped" in result.output
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_suite_without_models_or_data_is_a_one_line_error(cifar_root, tmp_path):
    from gradtrust.cli import main

    result = CliRunner().invoke(
        main, ["benchmark", "--suite", "cifar10c", "--data", str(cifar_root), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "needs --models" in result.output
    result = CliRunner().invoke(
        main,
        [
            "benchmark",
            "--suite",
            "cifar10c",
            "--models",
            "cifar:resnet20",
            "--data",
            f"cifar10:{cifar_root}",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2 and "cifar10c:DIR" in result.output


def _fake_result(model: str, corruption: str | None, severity: int | None, accuracy: float, auac: float):
    """What :func:`severity_frame` reads of an evaluated run: the model, the manifest's dataset, the methods."""
    from types import SimpleNamespace

    dataset = {"kind": "cifar10c", "corruption": corruption, "severity": severity} if corruption else {"kind": "x"}
    run = SimpleNamespace(model=model, manifest={"dataset": dataset}, methods=["gradtrust"])
    values = {"auac": auac, "auroc": float("nan")}
    return SimpleNamespace(
        run=run, accuracy=accuracy, methods={"gradtrust": None}, value=lambda method, metric: values[metric]
    )


def test_severity_tables_average_the_corruptions_by_hand():
    from gradtrust.reporting.severity import severity_frame, severity_markdown

    results = [
        _fake_result("m", None, None, 0.9, 80.0),
        _fake_result("m", "fog", 1, 0.5, 40.0),
        _fake_result("m", "snow", 1, 0.7, 60.0),
        _fake_result("m", "fog", 2, 0.3, 20.0),
        _fake_result("other", None, None, 0.8, 70.0),
    ]  # no corrupted run: not in the tables
    frame = severity_frame(results)
    acc = frame[frame["quantity"] == "accuracy"].set_index("severity")
    assert list(acc.index) == ["clean", "1", "2"] and set(frame["model"]) == {"m"}
    assert acc["value"].to_dict() == pytest.approx({"clean": 0.9, "1": 0.6, "2": 0.3})
    assert acc["runs"].to_dict() == {"clean": 1, "1": 2, "2": 1}
    auac = frame[frame["quantity"] == "auac"].set_index("severity")["value"].to_dict()
    assert auac == pytest.approx({"clean": 80.0, "1": 50.0, "2": 20.0})
    text = severity_markdown(frame)
    assert "| m | 90.00 | 60.00 | 30.00 |" in text and "| GradTrust | 80.00 | 50.00 | 20.00 |" in text
    assert "| GradTrust | n/a | n/a | n/a |" in text  # AUROC undefined on every run
    two_clean = severity_frame([*results, _fake_result("m", None, None, 0.1, 1.0)])
    clean = two_clean[(two_clean["quantity"] == "accuracy") & (two_clean["severity"] == "clean")]
    assert np.isnan(clean["value"].iloc[0])  # which clean run is the baseline is ambiguous: n/a
    assert severity_frame([_fake_result("m", None, None, 0.9, 80.0)]) is None
