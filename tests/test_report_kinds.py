"""``gradtrust report`` over one run folder of each kind (score, explain, detect, introspect, GradCON): one page with
a section per kind, no dead anchor, the failed files listed; the page is written whole or not at all."""

from __future__ import annotations

import errno
import html
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from gradtrust.cli import main
from gradtrust.data.digits import DigitsDataset
from gradtrust.errors import GradTrustError, InputError
from gradtrust.explanations.run import explain_dataset
from gradtrust.models import load_model
from gradtrust.reporting import build_report
from gradtrust.reporting.kinds import discover_runs, kind_of
from gradtrust.runner import score_dataset

BROKEN = {3: "cannot identify image file 'broken.png'", 7: "truncated file"}


class FlawedDigits(torch.utils.data.Dataset):
    """The first ``n`` digits test images, with the positions of ``BROKEN`` unreadable (as a bad file is)."""

    def __init__(self, n: int) -> None:
        self.base, self.n = DigitsDataset("test"), n
        self.classes = self.base.classes

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        sample = self.base[i]
        return sample._replace(input=None, error=BROKEN[i]) if i in BROKEN else sample

    def describe(self) -> dict:
        return {"kind": "flawed-digits", "samples": self.n}


def _cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _gradcon_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name, count in {"a": 6, "b": 5}.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img = np.clip(200 + rng.normal(0, 20, (8, 8)), 0, 255) if name == "a" else rng.normal(40, 20, (8, 8))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="L").save(root / name / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kinds")
    tiny, cnn = load_model("digits:digits_tiny", "DEFAULT"), load_model("digits:digits_cnn", "DEFAULT")
    score_dataset(tiny, FlawedDigits(60), root / "score", methods="softmax,gradtrust", progress=False)
    explain_dataset(cnn, FlawedDigits(12), root / "explain", methods=("gradcam",), progress=False)
    detect = _cli("detect", "--model", "digits:digits_mlp", "--out", str(root / "detect"), "--max-samples", "40",
                  "--bootstrap", "10", "--detectors", "logistic", "--baselines", "softmax", "--challenge",
                  "noise:3,ood=patches")
    assert detect.exit_code == 0, detect.output
    fit = _cli("introspect", "fit", "--model", "digits:digits_linear", "--train", "digits:train", "--out",
               str(root / "h"), "--epochs", "1", "--hidden", "4", "--no-progress")
    assert fit.exit_code == 0, fit.output
    intro = _cli("introspect", "score", "--introspective", str(root / "h"), "--data", "digits:test", "--out",
                 str(root / "introspect"), "--methods", "softmax", "--batch-size", "512", "--no-progress")
    assert intro.exit_code == 0, intro.output
    data = _gradcon_folder(root / "gradcon_data")
    assert _cli("gradcon", "fit", "--data", str(data), "--inlier", "a", "--out", str(root / "gradcon_model"),
                "--epochs", "1", "--batch-size", "4", "--grayscale", "--no-progress").exit_code == 0
    assert _cli("gradcon", "score", "--model", str(root / "gradcon_model"), "--data", str(data), "--out",
                str(root / "gradcon"), "--resamples", "10", "--no-progress").exit_code == 0
    return {k: root / k for k in ("score", "explain", "detect", "introspect", "gradcon")}


@pytest.fixture(scope="module")
def page(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("page") / "report"
    report = build_report(list(runs.values()), out, resamples=20, max_images=4)
    return report, report.files["html"].read_text(encoding="utf-8")


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.images = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a" and (attrs.get("href") or "").startswith("#"):
            self.links.append(attrs["href"][1:])
        self.images += tag == "img"


def _section(text: str, anchor: str) -> str:
    """The HTML from the heading with ``id=anchor`` to the next ``<h2``."""
    start = text.index(f'id="{anchor}"')
    end = text.find("<h2", start)
    return text[start:end if end >= 0 else len(text)]


def test_kinds_come_from_the_manifest_and_fall_back_to_the_file_layout(runs, tmp_path):
    found, problems = discover_runs(runs.values())
    assert not problems
    assert {k: len(v) for k, v in found.items()} == {"score": 3, "explain": 1, "detect": 1, "introspect": 1,
                                                    "gradcon": 1, "decisions": 0}  # introspect's feed_forward/ and introspective/
    both = tmp_path / "both"
    shutil.copytree(runs["explain"], both)
    shutil.copy(runs["score"] / "scores.parquet", both / "scores.parquet")
    manifest = {k: v for k, v in json.loads((both / "manifest.json").read_text()).items() if k != "kind"}
    (both / "manifest.json").write_text(json.dumps(manifest))  # as written before runs stated their kind
    assert kind_of(both) == "score"  # no kind stated: the layout's first data file
    (both / "manifest.json").write_text(json.dumps({**manifest, "kind": "explain"}))
    assert kind_of(both) == "explain"
    (both / "manifest.json").write_text(json.dumps({**manifest, "kind": "gradcon"}))  # its data file is missing
    assert kind_of(both) == "score"


def test_one_page_with_a_section_per_kind_and_no_dead_anchor(page):
    report, text = page
    parser = _Anchors()
    parser.feed(text)
    assert parser.links and not set(parser.links) - parser.ids
    for anchor in ("table", "explain", "detect", "introspect", "anomaly", "failures"):
        assert anchor in parser.links, anchor
    assert ("from 3 score runs, 1 explain run, 1 detect run, 1 introspect run, 1 GradCON run." in text)
    assert parser.images == len(report.figures) + 2  # + the detect run's own ROC and profile figures
    assert "<pre" not in _section(text, "detect")
    on_disk = json.loads(report.files["json"].read_text())
    assert on_disk["inputs"] == report.inputs and set(on_disk["kinds"]) == {"score", "explain", "detect", "introspect",
                                                                            "gradcon"}


def test_detection_section_shows_the_runs_aurocs_with_their_intervals(page, runs):
    report, text = page
    detect = _section(text, "detect")
    table = pd.read_csv(runs["detect"] / "table.csv")
    assert detect.count("<table") == 2 * table["model"].nunique()
    for _, row in table.iterrows():
        cell = f"{100 * row['auroc']:.1f} [{100 * row['auroc_low']:.1f}, {100 * row['auroc_high']:.1f}]"
        assert f"<td>{cell}</td>" in detect, cell
    assert detect.count("data:image/png;base64,") == 2  # the run's ROC curves and gradient profiles
    assert (runs["detect"] / "report" / "index.html").is_file()  # gradtrust detect writes the same page


def test_explain_and_introspect_sections_hold_their_tables(page, runs):
    report, text = page
    explain = _section(text, "explain")
    frame = pd.read_parquet(runs["explain"] / "explanations.parquet")
    assert "<td>12</td><td>10</td><td>2</td>" in explain  # samples, explained, failed
    assert f"<td>{100 * frame['correct'].mean():.2f}</td>" in explain and "data:image/png;base64," in explain
    intro = pd.read_parquet(runs["introspect"] / "introspection.parquet")
    f_right = intro["prediction"] == intro["label"]
    h_right = intro["introspective_prediction"] == intro["label"]
    expected = [len(intro), f_right.mean(), h_right.mean(), (intro["prediction"] == intro["introspective_prediction"]).mean(),
                (~f_right & h_right).mean(), (f_right & ~h_right).mean()]
    cells = f"<td>{expected[0]}</td>" + "".join(f"<td>{100 * v:.2f}</td>" for v in expected[1:])
    assert cells in _section(text, "introspect")


def test_failed_files_are_listed_with_their_reasons(page, runs):
    report, text = page
    failures = _section(text, "failures")
    for i, reason in BROKEN.items():
        assert f"<td>{i}</td><td><code>digits/test/clean/{i:04d}</code></td><td>{html.escape(reason)}</td>" in failures
    assert failures.count("2 failed") == 2  # the score run and the explain run
    listed = json.loads(report.files["json"].read_text())["failed_files"]
    assert sorted(Path(f["source"]).name for f in listed) == ["explain", "score"]


def test_failures_are_capped_with_a_count(runs, tmp_path):
    run = tmp_path / "many"
    shutil.copytree(runs["score"], run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["failures"] = [{"index": 1000 + i, "path": f"bad/{i}.png", "reason": "unreadable"} for i in range(45)]
    manifest["counts"]["failed"] = 45
    (run / "manifest.json").write_text(json.dumps(manifest))
    text = build_report([run], tmp_path / "out", resamples=0, figures=False).files["html"].read_text()
    assert _section(text, "failures").count("bad/") == 20 and "… and 25 more" in text


def test_an_explain_folder_alone_is_reported(runs, tmp_path):
    result = _cli("report", str(runs["explain"]), "--out", str(tmp_path / "out"), "--resamples", "0")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "out" / "index.html").read_text()
    assert 'id="explain"' in text and "not a score run" not in result.output and "1 explain" in result.output
    parser = _Anchors()
    parser.feed(text)
    assert not set(parser.links) - parser.ids


def test_a_failure_while_writing_leaves_the_old_report_whole(runs, tmp_path, monkeypatch):
    out = tmp_path / "report"
    build_report([runs["score"]], out, resamples=0, figures=False)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("gradtrust.reporting.html.score_html", full_disk)
    with pytest.raises(GradTrustError, match="No space left on device.*Free space or choose a writable --out"):
        build_report([runs["score"]], out, resamples=0, figures=False)
    monkeypatch.setattr("gradtrust.reporting.html.score_html", lambda report: 1 / 0)  # any other failure
    with pytest.raises(ZeroDivisionError):
        build_report([runs["score"]], out, resamples=0, figures=False)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temporary folder left behind


def test_cli_full_disk_and_read_only_folders_exit_2_with_one_line(runs, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("gradtrust.reporting.report.tempfile.mkdtemp", refuse)
    result = CliRunner().invoke(main, ["report", str(runs["score"]), "--out", str(tmp_path / "ro"), "--no-figures"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "cannot write the report into" in result.output and "Read-only file system" in result.output
    monkeypatch.undo()
    monkeypatch.setattr(pd.DataFrame, "to_csv", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "disk full")))
    result = CliRunner().invoke(main, ["report", str(runs["score"]), "--out", str(tmp_path / "full"), "--no-figures",
                                       "--resamples", "0"])
    assert result.exit_code == 2 and "disk full" in result.output and not (tmp_path / "full").exists()


def test_a_report_of_other_inputs_is_replaced_only_with_force(runs, tmp_path):
    out = tmp_path / "report"
    build_report([runs["score"]], out, resamples=0, figures=False)
    build_report([runs["score"]], out, resamples=0, figures=False)  # the same inputs: rebuilt
    with pytest.raises(InputError, match="holds the report of other inputs.*--force"):
        build_report([runs["explain"]], out, resamples=0, figures=False)
    assert 'id="table"' in (out / "index.html").read_text()
    result = CliRunner().invoke(main, ["report", str(runs["explain"]), "--out", str(out), "--resamples", "0"])
    assert result.exit_code == 2 and "--force" in result.output
    result = CliRunner().invoke(main, ["report", str(runs["explain"]), "--out", str(out), "--resamples", "0", "--force"])
    assert result.exit_code == 0, result.output
    text = (out / "index.html").read_text()
    assert 'id="explain"' in text and 'id="table"' not in text and not (out / "table.md").exists()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="holds no report"):
        build_report([runs["score"]], other, resamples=0, figures=False, force=True)
    assert (other / "notes.txt").read_text() == "keep me"


def test_an_explain_run_alone_gallery_ranks_by_voice_or_names_no_ranking(runs):
    from gradtrust.reporting.explanations import explain_run, select_gallery
    from gradtrust.reporting.kinds import read_manifest

    table = pd.read_parquet(runs["explain"] / "explanations.parquet")
    run = explain_run(runs["explain"], read_manifest(runs["explain"]), table)
    assert run.model == "digits:digits_cnn" and run.class_name(3) == "3" and run.methods == []
    chosen, trust = select_gallery(run, table["index"].to_numpy())
    assert trust == "" and {label for _, label in chosen} <= {"right", "wrong"}  # without VOICE: no trust to rank by
    snr = np.linspace(0, 1, len(table))
    ranked = explain_run(runs["explain"], read_manifest(runs["explain"]), table.assign(voice_snr=snr))
    chosen, trust = select_gallery(ranked, table["index"].to_numpy())
    right = np.flatnonzero(ranked.correct)
    assert trust == "voice_snr" and chosen[0] == (int(right[-1]), "most trusted right")  # highest SNR first
