"""``gradtrust benchmark``: score several models (default: every bundled digits network) on several datasets
(default: :data:`DEFAULT_DATA`), then write the report. Layout of ``--out``::

    <out>/runs/<model>/<data>/   one score run each (scores.parquet, manifest.json, run.json, chunks/,
                                 benchmark.json = the request that produced it)
    <out>/report/                the report (index.html, table.md, …; see docs/reporting.md)

A complete run is skipped (:func:`is_complete`), an interrupted one resumed by the run engine; a (model, data)
pair that cannot be scored is reported and skipped, and the report covers the rest.

Suites (``--suite``, :data:`SUITES`) are the tutorials' protocols as data lists: ``cifar10c`` = the CIFAR-10 test
split and every CIFAR-10-C corruption at every severity (1 + 19 × 5 runs per model), ``cifar100c`` the same for
CIFAR-100; the report then adds the tables per severity (``severity.md``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from gradtrust.reporting.runs import slugify

__all__ = ["BenchmarkJob", "DEFAULT_DATA", "SUITES", "Suite", "default_models", "plan_jobs", "run_benchmark",
           "suite_data"]

#: The built-in conditions: the clean digits test split and two corrupted copies (severity 1, seed 0).
DEFAULT_DATA = ("digits:test", "digits:test:gaussian_noise:1", "digits:test:blur:1")
DEFAULT_OUT = "gradtrust-benchmark"
REQUEST_FILE = "benchmark.json"
RANDOM_INIT_SEED = 0


@dataclass(frozen=True)
class Suite:
    """A corruption protocol: the ``clean`` data spec's test split, then the ``corrupted`` release (a data spec
    ``<corrupted>:DIR:<corruption>:<severity>``) at every corruption and severity."""

    name: str
    clean: str
    corrupted: str
    summary: str


SUITES = {s.name: s for s in (
    Suite("cifar10c", "cifar10", "cifar10c", "CIFAR-10 test + CIFAR-10-C, 19 corruptions x severities 1-5"),
    Suite("cifar100c", "cifar100", "cifar100c", "CIFAR-100 test + CIFAR-100-C, 19 corruptions x severities 1-5"),
)}


def suite_data(name: str, data, corruptions=None, severities=None) -> list[str]:
    """The data specs of suite ``name``: ``<clean>:DIR:test``, then ``<corrupted>:DIR:<c>:<s>`` for every corruption
    (default: all 19 of the release) and severity (default 1-5), corruption-major. ``data`` says where the files
    are: ``<clean>:DIR`` and ``<corrupted>:DIR`` (each once), or one folder holding both."""
    from gradtrust.data.cifar import COMMON_CORRUPTIONS, SEVERITY_LEVELS
    from gradtrust.errors import InputError, UnknownNameError

    if name not in SUITES:
        raise UnknownNameError(f"unknown suite {name!r}; valid: {', '.join(SUITES)}")
    suite = SUITES[name]
    roots: dict[str, str] = {}
    for d in _split(data):
        family, sep, rest = d.partition(":")
        if sep and family in (suite.clean, suite.corrupted) and rest.split(":")[0]:
            roots[family] = rest.split(":")[0]
        elif os.path.isdir(d):
            roots.setdefault(suite.clean, d)
            roots.setdefault(suite.corrupted, d)
        else:
            raise InputError(f"--suite {name} takes --data {suite.clean}:DIR and --data {suite.corrupted}:DIR (or "
                             f"one folder holding both), not {d!r}")
    missing = [f for f in (suite.clean, suite.corrupted) if f not in roots]
    if missing:
        raise InputError(f"--suite {name} needs to know where {' and '.join(missing)} are: --data "
                         f"{suite.clean}:DIR --data {suite.corrupted}:DIR, or one --data DIR holding both "
                         "(`gradtrust datasets` shows each layout)")
    chosen = _split(corruptions) or list(COMMON_CORRUPTIONS)
    unknown = [c for c in chosen if c not in COMMON_CORRUPTIONS]
    if unknown:
        raise InputError(f"unknown corruption(s) {', '.join(unknown)}; valid: {', '.join(COMMON_CORRUPTIONS)}")
    levels = [int(v) for v in _split(severities)] if severities else list(SEVERITY_LEVELS)
    if not set(levels) <= set(SEVERITY_LEVELS):
        raise InputError(f"severities are 1-5, got {levels}")
    clean = f"{suite.clean}:{os.path.abspath(roots[suite.clean])}:test"
    corrupted = os.path.abspath(roots[suite.corrupted])
    return [clean] + [f"{suite.corrupted}:{corrupted}:{c}:{level}" for c in chosen for level in levels]


def default_models() -> list[str]:
    """Every bundled digits network, as a model spec."""
    from gradtrust.models.digits import available_digits_models

    return [f"digits:{name}" for name in available_digits_models()]


@dataclass
class BenchmarkJob:
    """One (model, data) pair to score into ``out_dir``."""

    model: str
    weights: str | None
    data: str
    labels: str | None
    out_dir: Path
    request: dict

    @property
    def name(self) -> str:
        return f"{self.model} on {self.data}"


def _split(values) -> list[str]:
    """Specs from a string, or from repeated options, each possibly comma-separated."""
    if isinstance(values, (str, os.PathLike)):
        values = [os.fspath(values)]
    out: list[str] = []
    for v in values or ():
        v = str(v)
        out += [v] if os.path.exists(v) else [p.strip() for p in v.split(",") if p.strip()]
    return list(dict.fromkeys(out))


def _is_builtin(data: str) -> bool:
    """The built-in digits, or a data spec (``cifar10c:DIR:fog:3``): not a folder of the user's."""
    from gradtrust.data.specs import is_data_spec

    return (data.split(":")[0] == "digits" or is_data_spec(data)) and not os.path.exists(data)


def _data_slug(data: str) -> str:
    if _is_builtin(data) and data.split(":")[0] != "digits":  # name, settings and a digest of the whole spec
        fields = data.split(":")
        digest = hashlib.sha256(data.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        return slugify("-".join([fields[0], *fields[2:]])) + f"-{digest}"
    if _is_builtin(data):
        return slugify(data.replace(":", "-"))
    path = os.path.abspath(data)
    digest = hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{slugify(os.path.basename(path.rstrip(os.sep)) or 'data')}-{digest}"


def _model_slug(spec: str, weights: str | None) -> str:
    slug = slugify(spec.replace(":", "-"))
    if weights not in (None, "DEFAULT", "default"):
        slug += "-" + slugify(Path(str(weights)).stem if os.path.exists(str(weights)) else str(weights))
    return slug


def plan_jobs(models, data, out: Path, *, weights: str | None = None, labels: str | None = None,
              methods: str | None = None, batch_size: int = 64) -> list[BenchmarkJob]:
    """Every (model, data) pair, in model order then data order, with its run folder and request."""
    models = _split(models) or default_models()
    data = _split(data) or list(DEFAULT_DATA)
    w = "DEFAULT" if weights is None else None if weights.strip().lower() in ("random", "none", "null") else weights
    jobs = []
    for spec in models:
        for d in data:
            lab = None if _is_builtin(d) else labels
            request = {"model": spec, "weights": w, "data": d if _is_builtin(d) else os.path.abspath(d),
                       "labels": os.path.abspath(lab) if lab else None, "methods": methods or "all",
                       "batch_size": batch_size}
            jobs.append(BenchmarkJob(spec, w, d, lab, out / "runs" / _model_slug(spec, w) / _data_slug(d), request))
    return jobs


def is_complete(job: BenchmarkJob, model: Any = None, dataset: Any = None) -> bool:
    """True when the job's folder holds a finished run of exactly this identity — the one the run engine
    would compute now, from the model's weights and the data files' content — so there is nothing to do.
    ``model`` and ``dataset`` are loaded (on the CPU) when not given."""
    from gradtrust.runs.score import ScoreTask
    from gradtrust.runs.task import task_folder

    if model is None:
        import torch

        from gradtrust.models import load_model

        torch.manual_seed(RANDOM_INIT_SEED)
        model = load_model(job.model, job.weights)
    if dataset is None:
        from gradtrust.data.open import open_dataset

        dataset = open_dataset(job.data, model, job.labels)
    from gradtrust.models import model_for_dataset

    model = model_for_dataset(model, dataset)
    d = job.out_dir
    folder = task_folder(ScoreTask(model, dataset, job.request["methods"]), d, job.request["batch_size"])
    if not folder.is_complete() or not (d / "scores.parquet").is_file():
        return False
    try:
        counts = json.loads((d / "manifest.json").read_text("utf-8")).get("counts") or {}
        return int(counts["scored"]) + int(counts["failed"]) == int(counts["samples"])
    except (OSError, KeyError, TypeError, ValueError):
        return False


@dataclass
class JobOutcome:
    job: BenchmarkJob
    status: str  # "scored", "skipped", "failed"
    message: str = ""


def run_jobs(jobs: list[BenchmarkJob], *, device: str | None = None, workers: int = 0, force: bool = False,
             echo=click.echo) -> list[JobOutcome]:
    """Score every job not already complete; a failing job is recorded, never fatal."""
    import torch

    from gradtrust.data.open import open_dataset
    from gradtrust.errors import GradTrustError
    from gradtrust.models import load_model, model_for_dataset
    from gradtrust.runs import score_dataset

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    outcomes: list[JobOutcome] = []
    models: dict[tuple, Any] = {}
    for k, job in enumerate(jobs, 1):
        prefix = f"[{k}/{len(jobs)}] {job.name}"
        t0 = time.perf_counter()
        try:
            key = (job.model, job.weights)
            if key not in models:
                torch.manual_seed(RANDOM_INIT_SEED)  # random weights: the same network every time
                models.clear()  # one model in memory at a time
                models[key] = load_model(job.model, job.weights, device=dev)
            model = models[key]
            dataset = open_dataset(job.data, model, job.labels)
            model = model_for_dataset(model, dataset)  # ImageNet-A/R/O: the subset's logits
            if not force and is_complete(job, model, dataset):
                outcomes.append(JobOutcome(job, "skipped", "already complete"))
                echo(f"{prefix}: skipped (already complete in {job.out_dir})")
                continue
            summary = score_dataset(model, dataset, job.out_dir, methods=job.request["methods"],
                                    batch_size=job.request["batch_size"], num_workers=workers, device=dev,
                                    force=force, progress=sys.stderr.isatty())
            (job.out_dir / REQUEST_FILE).write_text(json.dumps(job.request, indent=2), encoding="utf-8")
        except (GradTrustError, OSError, RuntimeError, ImportError) as exc:
            msg = f"{type(exc).__name__}: {exc}"
            outcomes.append(JobOutcome(job, "failed", msg))
            echo(f"{prefix}: FAILED: {msg}", err=True)
            continue
        outcomes.append(JobOutcome(job, "scored"))
        resumed = f", resumed {summary.resumed_chunks} chunk(s)" if summary.resumed_chunks else ""
        acc = "n/a" if summary.accuracy is None else f"{100 * summary.accuracy:.2f}%"
        echo(f"{prefix}: scored {summary.num_scored}/{summary.num_samples} samples "
             f"({summary.num_failed} failed{resumed}), accuracy {acc}, {time.perf_counter() - t0:.1f} s")
    return outcomes


def run_benchmark(models=None, data=None, out: str | Path = DEFAULT_OUT, *, weights: str | None = None,
                  labels: str | None = None, methods: str | None = None, batch_size: int = 64,
                  device: str | None = None, workers: int = 0, force: bool = False, resamples: int = 1000,
                  seed: int = 0, figures: bool = True, echo=click.echo, suite: str | None = None,
                  corruptions=None, severities=None):
    """Score, then report (``<out>/report``). Returns ``(outcomes, report)``; see the module docstring.
    ``suite``: expand ``data`` with :func:`suite_data` (``corruptions``/``severities``: a part of it)."""
    from gradtrust.reporting.report import build_report

    if suite is not None:
        if not _split(models):
            from gradtrust.errors import InputError

            raise InputError(f"--suite {suite} needs --models (e.g. cifar:resnet20,cifar:cifar10_resnet56)")
        data = suite_data(suite, data, corruptions, severities)
    out = Path(out)
    jobs = plan_jobs(models, data, out, weights=weights, labels=labels, methods=methods, batch_size=batch_size)
    outcomes = run_jobs(jobs, device=device, workers=workers, force=force, echo=echo)
    done = [o.job.out_dir for o in outcomes if o.status != "failed"]
    report = build_report(done, out / "report", resamples=resamples, seed=seed, figures=figures,
                          title="GradTrust benchmark", force=True)  # its own report folder, rebuilt each time
    return outcomes, report
