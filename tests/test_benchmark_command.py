"""``gradtrust benchmark`` end to end on a reduced setting (two digits networks, clean + one corruption)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from gradtrust.benchmark import DEFAULT_DATA, is_complete, plan_jobs
from gradtrust.cli.benchmark import benchmark_command

MODELS = "digits:digits_tiny,digits:digits_linear"
DATA = ["digits:test", "digits:test:gaussian_noise:1"]
METHODS = "softmax,max_logit,margin,energy,gradtrust,gradtrust_topk"


def _args(out: Path, *extra: str) -> list[str]:
    args = ["--models", MODELS, "--out", str(out), "--methods", METHODS, "--resamples", "30", "--batch-size", "128"]
    for d in DATA:
        args += ["--data", d]
    return args + list(extra)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = CliRunner().invoke(benchmark_command, _args(out), catch_exceptions=False)
    return out, result


def test_benchmark_scores_every_pair_and_reports(first_run):
    out, result = first_run
    assert result.exit_code == 0, result.output
    runs = sorted(p.parent for p in (out / "runs").glob("*/*/scores.parquet"))
    assert len(runs) == 4
    for run in runs:
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["counts"]["scored"] == 901
        assert (run / "benchmark.json").is_file()
    report = out / "report"
    for name in ("index.html", "table.md", "table.csv", "selective.md", "selective.csv", "summary.md",
                 "report.json", "figures/accuracy_curves.png", "figures/f1_curves.png"):
        assert (report / name).is_file(), name
    table = pd.read_csv(report / "table.csv")
    assert len(table) == 4 and table["accuracy_pct"].is_monotonic_increasing
    assert set(table["condition"]) == {"clean", "gaussian_noise/1"}
    assert table["dataset"].nunique() == 1  # clean and corrupted copies share one table
    assert {f"{m}_auac" for m in METHODS.split(",")} <= set(table.columns)
    # Printed: one line per job, then a short summary: the tally, the headline, each distinct note once with
    # its count, where the files are. No table (it is in the files).
    out_text = result.output
    assert "| run |" not in out_text
    assert f"HTML page: {(report / 'index.html').resolve()}" in out_text
    assert "4 scored, 0 skipped" in out_text



def test_the_console_summary_is_short_and_names_each_note_once(tmp_path):
    """Every method that applies, on two runs of a network too small for Purview's initial group: the note the
    table writes for each run is printed once, with its count and without the run's name; the whole output
    is a fixed number of lines (no table)."""
    data = ["--data", "digits:test", "--data", "digits:test:gaussian_noise:1"]
    result = CliRunner().invoke(benchmark_command, ["--models", "digits:digits_linear", "--out", str(tmp_path),
                                                    "--resamples", "0", "--no-figures", *data],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    notes = [line for line in lines if line.startswith("  ")]
    assert len(notes) == 1 and notes[0].startswith("  2× Purview (initial): AUAC and AUFC n/a")
    assert "digits:" not in notes[0]
    table_md = (tmp_path / "report" / "table.md").read_text()
    assert table_md.count("Purview (initial): AUAC and AUFC n/a") == 2  # the files keep every note
    assert "|" not in result.output
    assert len(lines) == 2 + 1 + 1 + 1 + 1 + 2  # jobs, tally, headline, notes' header and note, the files


def test_second_invocation_skips_complete_runs(first_run):
    out, _ = first_run
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/*/scores.parquet")}
    result = CliRunner().invoke(benchmark_command, _args(out), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.count("skipped (already complete in") == 4
    assert "0 scored, 4 skipped" in result.output
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing rewritten
    assert (out / "report" / "table.md").is_file()


def test_changed_request_is_not_skipped(first_run, tmp_path):
    out, _ = first_run
    jobs = plan_jobs(MODELS, DATA, out, methods=METHODS, batch_size=128)
    assert all(is_complete(j) for j in jobs)
    other = plan_jobs(MODELS, DATA, out, methods="softmax", batch_size=128)
    assert not any(is_complete(j) for j in other)


def test_a_failing_model_is_reported_and_the_rest_still_reported(tmp_path):
    args = ["--models", "digits:digits_tiny,digits:no_such_net", "--data", "digits:test:blur:1", "--out",
            str(tmp_path), "--methods", "softmax,gradtrust", "--resamples", "0", "--no-figures"]
    result = CliRunner().invoke(benchmark_command, args, catch_exceptions=False)
    assert result.exit_code == 1
    assert "digits:no_such_net on digits:test:blur:1: FAILED" in result.output
    assert "1 scored, 0 skipped (already complete), 1 failed" in result.output
    table = pd.read_csv(tmp_path / "report" / "table.csv")
    assert table["model"].tolist() == ["digits:digits_tiny"]


def test_default_plan_is_every_digits_network_on_three_conditions(tmp_path):
    from gradtrust.models import available_digits_models

    jobs = plan_jobs(None, None, tmp_path)
    assert DEFAULT_DATA == ("digits:test", "digits:test:gaussian_noise:1", "digits:test:blur:1")
    assert len(jobs) == 3 * len(available_digits_models())
    assert {j.model for j in jobs} == {f"digits:{m}" for m in available_digits_models()}
    assert all(j.weights == "DEFAULT" and j.request["methods"] == "all" for j in jobs)
    assert len({j.out_dir for j in jobs}) == len(jobs)
