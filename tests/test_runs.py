"""The one run engine (gradtrust.runs): identity (the data's content, the weights), conflicts named in full,
--force on every command that writes a folder, the resume message, and resume equal to an uninterrupted run
for every dataset-scale kind."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from gradtrust.cli import main
from gradtrust.data.open import open_dataset
from gradtrust.models import load_model
from gradtrust.models.state_dict import file_sha256
from gradtrust.runs import RunConflictError, RunFolder, score_dataset
from gradtrust.runs.identity import files_sha256
from runs_helpers import new_weights, replace_image, setup, write_image


def _cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# ------------------------------------------------------------------------------------------ the folder


def test_conflict_names_every_difference_with_both_values_in_full(tmp_path):
    long_old, long_new = "a" * 200, "a" * 199 + "b"
    RunFolder(tmp_path / "r", "score", "f/1", {"x": {"path": long_old}, "n": 1}).claim()
    other = RunFolder(tmp_path / "r", "score", "f/1", {"x": {"path": long_new}, "n": 2})
    with pytest.raises(RunConflictError) as info:
        other.claim()
    message = str(info.value)
    assert f'x.path: "{long_old}" → "{long_new}"' in message and "n: 1 → 2" in message and "--force" in message
    assert other.claim(force=True) is False  # replaced: a fresh run
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["kind"] == "score" and run["format"] == "f/1" and run["identity"]["n"] == 2
    assert other.claim() is True  # the same identity: resumed
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "manifest.json").write_text("{}")
    with pytest.raises(RunConflictError, match="no run.json"):
        RunFolder(tmp_path / "foreign", "score", "f/1", {}).claim()


def test_content_hash_follows_the_bytes_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADTRUST_CACHE_DIR", str(tmp_path / "cache"))
    paths = []
    for i in range(3):
        write_image(tmp_path / f"{i}.png", seed=i)
        paths.append(str(tmp_path / f"{i}.png"))
    first = files_sha256(paths)
    cache = json.loads(next((tmp_path / "cache" / "file-sha256").glob("*.json")).read_text())
    assert cache["1.png"][2] == file_sha256(paths[1])  # (size, mtime_ns, sha256) per file
    assert files_sha256(paths) == first
    assert files_sha256(paths[::-1]) != first  # the order is part of it
    write_image(tmp_path / "1.png", seed=42)  # same size, other pixels
    assert os.path.getsize(paths[1]) == os.path.getsize(paths[0])
    assert files_sha256(paths) != first
    # the cache is trusted for an unchanged (size, mtime): a planted hash shows that no file was read
    file = next((tmp_path / "cache" / "file-sha256").glob("*.json"))
    table = json.loads(file.read_text())
    table["0.png"][2] = "planted"
    file.write_text(json.dumps(table))
    assert files_sha256(paths[:1]) == hashlib.sha256(b"planted\n").hexdigest()


# ------------------------------------------------------------------ replaced image / weights, per command


def test_score_refuses_a_replaced_image_or_new_weights(tmp_path, monkeypatch, capsys):
    spec, weights, data = setup(tmp_path, monkeypatch)
    model = load_model(spec, str(weights), 2)
    out = tmp_path / "run"
    kwargs = dict(methods="softmax,gradtrust", batch_size=2, chunk_size=4, progress=False)
    score_dataset(model, open_dataset(str(data), model), out, **kwargs)
    # a resumed run says what it resumes, before any work
    (out / "chunks" / "chunk-000000004.parquet").unlink()
    capsys.readouterr()
    summary = score_dataset(model, open_dataset(str(data), model), out, **kwargs)
    assert "resuming: 4 of 8 samples already scored" in capsys.readouterr().err and summary.resumed_chunks == 1
    fresh = pd.read_parquet(out / "scores.parquet")

    replace_image(data)
    with pytest.raises(RunConflictError, match=r"dataset\.content_sha256: \"[0-9a-f]{64}\" → \"[0-9a-f]{64}\""):
        score_dataset(model, open_dataset(str(data), model), out, **kwargs)
    score_dataset(model, open_dataset(str(data), model), out, force=True, **kwargs)
    changed = pd.read_parquet(out / "scores.parquet")
    assert (changed["softmax"] != fresh["softmax"]).sum() == 1  # the replaced image only

    # the convolution kernel strategy changes the last bits, so it is part of the identity
    from gradtrust.per_sample import CONV_STRATEGIES

    with pytest.raises(RunConflictError, match=rf'options\.conv_strategy: "auto" → "{CONV_STRATEGIES[0]}"'):
        score_dataset(model, open_dataset(str(data), model), out, options={"conv_strategy": CONV_STRATEGIES[0]},
                      **kwargs)

    new_weights(weights)
    other = load_model(spec, str(weights), 2)
    with pytest.raises(RunConflictError, match=r"model\.weights_sha256: \"[0-9a-f]{64}\" → \"[0-9a-f]{64}\""):
        score_dataset(other, open_dataset(str(data), other), out, **kwargs)


def test_explain_refuses_a_replaced_image(tmp_path, monkeypatch):
    spec, weights, data = setup(tmp_path, monkeypatch)
    args = ["explain", "--model", spec, "--weights", str(weights), "--num-classes", "2", "--data", str(data),
            "--out", str(tmp_path / "ex"), "--batch-size", "4", "--device", "cpu", "--no-progress"]
    assert _cli(*args).exit_code == 0
    manifest = json.loads((tmp_path / "ex" / "manifest.json").read_text())
    assert manifest["kind"] == "explain" and manifest["format"] == "gradtrust.explanations/1"
    replace_image(data)
    refused = _cli(*args)
    assert refused.exit_code != 0 and "dataset.content_sha256" in refused.output
    assert _cli(*args, "--force").exit_code == 0


def test_introspect_fit_refuses_other_data_or_settings_without_force(tmp_path, monkeypatch):
    spec, weights, data = setup(tmp_path, monkeypatch)
    args = ["introspect", "fit", "--model", spec, "--weights", str(weights), "--num-classes", "2", "--train",
            str(data), "--out", str(tmp_path / "h"), "--epochs", "1", "--hidden", "4", "--device", "cpu",
            "--chunk-size", "4", "--no-progress"]
    first = _cli(*args)
    assert first.exit_code == 0, first.output
    replace_image(data)
    refused = _cli(*args)
    assert refused.exit_code != 0 and "train.content_sha256" in refused.output and "--force" in refused.output
    assert _cli(*args, "--force").exit_code == 0
    other = _cli(*args[:-3], "--epochs", "2", "--no-progress")
    assert other.exit_code != 0 and "settings.epochs: 1 → 2" in other.output
    assert _cli(*args[:-3], "--epochs", "2", "--force", "--no-progress").exit_code == 0


def _detect_args(tmp_path, spec, weights, data, *extra):
    return ["detect", "--model", spec, "--weights", str(weights), "--data", str(data), "--challenge", "noise:1",
            "--out", str(tmp_path / "det"), "--detectors", "logistic", "--baselines", "softmax", "--bootstrap", "5",
            "--batch-size", "4", *extra]


def test_detect_refuses_a_replaced_image(tmp_path, monkeypatch):
    spec, weights, data = setup(tmp_path, monkeypatch)
    (data / "0" / "9-broken.png").write_bytes(b"not an image")
    first = _cli(*_detect_args(tmp_path, spec, weights, data))
    assert first.exit_code == 0, first.output
    manifest = json.loads((tmp_path / "det" / "manifest.json").read_text())
    assert manifest["kind"] == "detect"
    assert [(f["path"].endswith("9-broken.png"), bool(f["reason"])) for f in manifest["failures"]] == [(True, True)]
    replace_image(data)
    refused = _cli(*_detect_args(tmp_path, spec, weights, data))
    assert refused.exit_code != 0 and "identity.data.content_sha256" in refused.output
    assert _cli(*_detect_args(tmp_path, spec, weights, data, "--force")).exit_code == 0


def test_gradcon_fit_and_score_refuse_other_results_without_force(tmp_path, monkeypatch):
    _, _, data = setup(tmp_path, monkeypatch)
    fit = ["gradcon", "fit", "--data", str(data), "--inlier", "0", "--out", str(tmp_path / "m"), "--epochs", "1",
           "--no-progress"]
    assert _cli(*fit).exit_code == 0
    other = _cli(*fit[:-3], "--epochs", "2", "--no-progress")
    assert other.exit_code != 0 and "params.epochs: 1 → 2" in other.output
    score = ["gradcon", "score", "--model", str(tmp_path / "m"), "--data", str(data), "--out", str(tmp_path / "s"),
             "--resamples", "0", "--no-progress"]
    assert _cli(*score).exit_code == 0
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["kind"] == "gradcon" and manifest["format"] == "gradtrust.gradcon/1"
    gamma = _cli(*score, "--gamma", "0.5")
    assert gamma.exit_code != 0 and "detector.gamma: 0.12 → 0.5" in gamma.output
    replace_image(data)
    refused = _cli(*score)
    assert refused.exit_code != 0 and "data.content_sha256" in refused.output
    refit = _cli(*fit)
    assert refit.exit_code != 0 and "data.content_sha256" in refit.output
    assert _cli(*score, "--force").exit_code == 0 and _cli(*fit, "--force").exit_code == 0


def test_benchmark_rechecks_the_identity(tmp_path, monkeypatch):
    from gradtrust.benchmark import plan_jobs, run_jobs

    spec, weights, data = setup(tmp_path, monkeypatch)
    jobs = plan_jobs(spec, str(data), tmp_path / "bench", weights=str(weights), methods="softmax", batch_size=4)

    def statuses() -> list[str]:
        return [o.status for o in run_jobs(jobs, device="cpu", echo=lambda *a, **k: None)]

    assert statuses() == ["scored"]
    assert statuses() == ["skipped"]
    replace_image(data)
    assert statuses() == ["failed"]  # not "already complete": the run engine refuses the changed data
    assert statuses() == ["failed"] and run_jobs(jobs, device="cpu", force=True, echo=print)[0].status == "scored"
    assert statuses() == ["skipped"]
    new_weights(weights)
    assert statuses() == ["failed"]


# -------------------------------------------------------------- resume equals an uninterrupted run, per kind


def _drop_last_chunk(folder) -> None:
    chunks = sorted((folder / "chunks").glob("chunk-*.parquet"))
    chunks[-1].write_bytes(chunks[-1].read_bytes()[:100])  # as a kill during a non-atomic write would leave it


def test_explain_introspect_detect_gradcon_resume_equal_to_uninterrupted(tmp_path, monkeypatch, capsys):
    from gradtrust.explanations.run import explain_dataset

    spec, weights, data = setup(tmp_path, monkeypatch)
    model = load_model(spec, str(weights), 2)
    for out in ("ex-whole", "ex-resumed"):
        explain_dataset(model, open_dataset(str(data), model), tmp_path / out, batch_size=2, chunk_size=4,
                        progress=False)
    _drop_last_chunk(tmp_path / "ex-resumed")
    capsys.readouterr()
    explain_dataset(model, open_dataset(str(data), model), tmp_path / "ex-resumed", batch_size=2, chunk_size=4,
                    progress=False)
    assert "resuming: 4 of 8 samples already explained" in capsys.readouterr().err
    assert (tmp_path / "ex-whole" / "explanations.parquet").read_bytes() == \
        (tmp_path / "ex-resumed" / "explanations.parquet").read_bytes()

    fit = ["introspect", "fit", "--model", spec, "--weights", str(weights), "--num-classes", "2", "--train",
           str(data), "--epochs", "1", "--hidden", "4", "--chunk-size", "4", "--device", "cpu", "--no-progress"]
    assert _cli(*fit, "--out", str(tmp_path / "h-whole")).exit_code == 0
    assert _cli(*fit, "--out", str(tmp_path / "h-resumed")).exit_code == 0
    _drop_last_chunk(tmp_path / "h-resumed" / "features")
    again = _cli(*fit, "--out", str(tmp_path / "h-resumed"))
    assert again.exit_code == 0 and "resumed: 1 chunk(s)" in again.output
    assert (tmp_path / "h-whole" / "weights.safetensors").read_bytes() == \
        (tmp_path / "h-resumed" / "weights.safetensors").read_bytes()

    det_whole, det_resumed = tmp_path / "det-whole", tmp_path / "det-resumed"
    for out in (det_whole, det_resumed):
        assert _cli(*_detect_args(tmp_path, spec, weights, data, "--out", str(out))).exit_code == 0
    from gradtrust.detection import experiment

    def made_again(*args, **kwargs):
        raise AssertionError("a finished challenge set was made again")

    with monkeypatch.context() as patched:  # a finished set is read back: its inputs (attacks…) are not made again
        patched.setattr(experiment, "make_challenge", made_again)
        assert _cli(*_detect_args(tmp_path, spec, weights, data, "--out", str(det_whole))).exit_code == 0
    sets = sorted((det_resumed / "build" / "sets").iterdir())
    assert [s.name for s in sets] == ["gaussian_noise_1", "known"]
    for set_dir in sets:
        (set_dir / "set.parquet").unlink()
    _drop_last_chunk(sets[0])
    assert _cli(*_detect_args(tmp_path, spec, weights, data, "--out", str(det_resumed))).exit_code == 0
    assert (det_whole / "table.csv").read_text() == (det_resumed / "table.csv").read_text()

    assert _cli("gradcon", "fit", "--data", str(data), "--inlier", "0", "--out", str(tmp_path / "m"), "--epochs", "1",
                "--no-progress").exit_code == 0
    from gradtrust.gradcon import GradCON
    from gradtrust.gradcon.data import load_labelled
    from gradtrust.gradcon.scoring import score_to_run

    detector = GradCON.load(tmp_path / "m")
    detector.chunk_size = 1  # batches of 8 · chunk_size = 8 images, chunks of 4: two chunks
    images = load_labelled(str(data))
    for out in ("g-whole", "g-resumed"):
        score_to_run(detector, images, 0, tmp_path / out, resamples=0, chunk_size=4)
    _drop_last_chunk(tmp_path / "g-resumed")
    score_to_run(detector, images, 0, tmp_path / "g-resumed", resamples=0, chunk_size=4)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "g-whole" / "anomaly_scores.parquet"),
                                  pd.read_parquet(tmp_path / "g-resumed" / "anomaly_scores.parquet"), check_exact=True)
    assert np.array_equal(np.load(tmp_path / "g-whole" / "reconstructions.npz")["reconstruction"],
                          np.load(tmp_path / "g-resumed" / "reconstructions.npz")["reconstruction"])


def test_the_identity_names_the_convolution_rule_with_auto():
    """``conv_strategy="auto"`` is a fixed rule: its version is part of a run's identity (another rule may round
    differently); a forced strategy needs no rule."""
    from gradtrust.per_sample import conv_strategy
    from gradtrust.runs.identity import identity_differences, options_identity

    auto = options_identity({"conv_strategy": "auto", "chunk_bytes": 1})
    assert auto == {"conv_strategy": "auto", "conv_strategy_rule": conv_strategy.RULE}
    assert options_identity({"conv_strategy": "gram"}) == {"conv_strategy": "gram"}
    assert identity_differences({**auto, "conv_strategy_rule": conv_strategy.RULE + 1}, auto) == [
        f"conv_strategy_rule: {conv_strategy.RULE + 1} → {conv_strategy.RULE}"]
