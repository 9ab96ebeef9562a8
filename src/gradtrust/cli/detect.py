"""``gradtrust detect``: gradient-feature detectors vs baselines on adversarial, corrupted and OOD inputs; with no
model or data arguments the built-in experiment (the ``BUILTIN_*`` settings below, on the digits test split)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from gradtrust.cli.memory import check_batch_memory, keep_freed_memory_option
from gradtrust.cli.options import Command, alias, device_of, echo_preprocessing, model_options, shared, weights_arg
from gradtrust.errors import InputError

__all__ = ["detect_command", "run_detect"]

BUILTIN_MODELS = ("digits:digits_mlp", "digits:digits_cnn")
BUILTIN_CHALLENGES = "fgsm,pgd,cw,noise,blur,ood=mnist,ood=patches"
BUILTIN_EPS = 0.1
BUILTIN_OUT = "detect-out"


def _normalisation(transform: Any) -> tuple[list[float] | None, list[float] | None]:
    """The (mean, std) a model's preprocessing normalises with, found on the transform or inside a Compose."""
    candidates = [transform, getattr(transform, "preprocessing", None), *getattr(transform, "transforms", [])]
    for t in candidates:
        mean, std = getattr(t, "mean", None), getattr(t, "std", None)
        if mean is not None and std is not None:
            return [float(v) for v in mean], [float(v) for v in std]
    return None, None


def _load_known(loaded: Any, data: str, max_samples: int | None, seed: int) -> tuple[Any, dict, list]:
    """The known data, its identity (:func:`gradtrust.runs.identity.dataset_identity`: the files' content) and
    its unreadable files (``{"index", "path", "reason"}``)."""
    import numpy as np

    from gradtrust.data import collate_samples
    from gradtrust.data.open import open_dataset
    from gradtrust.detection.experiment import KnownData
    from gradtrust.runs.identity import dataset_identity

    dataset = open_dataset(data, loaded)
    n = len(dataset)
    if n == 0:
        raise InputError(f"the known data {data} holds no samples.")
    positions = np.arange(n)
    if max_samples is not None and max_samples < n:  # a seeded subset, so every class is represented
        positions = np.sort(np.random.default_rng([seed, 5]).choice(n, size=max_samples, replace=False))
    batch = collate_samples([dataset[int(i)] for i in positions])
    if batch.inputs is None:
        raise InputError(f"no readable sample in {data}.")
    mean, std = _normalisation(getattr(loaded, "transform", None))
    return KnownData(x=batch.inputs.float(), y=batch.labels, mean=mean, std=std,
                     description=f"{data} ({len(batch)} samples)"), dataset_identity(dataset), \
        [{"index": int(i), "path": str(p), "reason": str(r)} for i, p, r in batch.failures]


def run_detect(models: list[tuple[str, str | None]], data: str | None, challenges: str, out: str, *, eps: float,
               seed: int, fit_fraction: float, max_samples: int | None, detectors: list[str],
               baselines: list[str] | None, grouping: str, n_bootstrap: int, batch_size: int,
               device: str = "cpu", echo: Any = print, num_classes: int | None = None,
               load_options: dict[str, Any] | None = None, force: bool = False) -> Any:
    """Run the experiment for each model; write ``out/<model>/`` and ``out/table.*``; return the table.

    Under ``torchrun`` every set is shared between the processes and rank 0 writes the tables and figures."""
    import pandas as pd

    from gradtrust.detection.challenges import parse_challenges
    from gradtrust.detection.experiment import DEFAULT_BASELINES, DetectionSettings, run_detection
    from gradtrust.detection.features import feature_layout
    from gradtrust.detection.report import profile_figure, roc_figure
    from gradtrust.models import load_model
    from gradtrust.reporting.detection import format_text_table
    from gradtrust.reporting.report import build_report
    from gradtrust.runs.chunks import atomic_write_json
    from gradtrust.runs.identity import model_identity
    from gradtrust.runs.task import env_rank

    parsed = parse_challenges(challenges)
    settings = DetectionSettings(challenges=parsed, fit_fraction=fit_fraction, seed=seed, eps=eps,
                                 detectors=tuple(detectors), baselines=tuple(baselines or DEFAULT_BASELINES),
                                 grouping=grouping, n_bootstrap=n_bootstrap, batch_size=batch_size)
    settings.validate()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded_models = [(spec, load_model(spec, weights, num_classes, device=device, **(load_options or {})))
                     for spec, weights in models]
    for _, loaded in loaded_models:
        echo_preprocessing(loaded, load_options or {})
        check_batch_memory(loaded, batch_size)
    tables, failures = [], []
    for spec, loaded in loaded_models:
        started = time.perf_counter()
        known_spec = data or ("digits:test" if spec.startswith("digits:") else None)
        if known_spec is None:
            raise InputError(f"--data is needed for {spec}: the known (trained-distribution) images.")
        known, data_identity, unreadable = _load_known(loaded, known_spec, max_samples, seed)
        failures += [f for f in unreadable if f not in failures]
        name = spec.split(":")[-1].replace(os.sep, "_")
        model_dir = out_dir / name
        identity = {"model": model_identity(loaded, loaded.describe()), "data": data_identity, "mean": known.mean,
                    "std": known.std,
                    **({"preprocessing": loaded.meta["preprocessing"]} if (load_options or {}).get("preprocessing")
                       else {})}
        result = run_detection(loaded, known, settings, model_dir, identity=identity, force=force, echo=echo)
        result.table.insert(0, "model", name)
        tables.append(result.table)
        if env_rank() != 0:
            continue
        layout = feature_layout(loaded.module, grouping=grouping)
        layer_of_column = ([layout.owners[t][0] or "<root>" for t in layout.tensors] if grouping == "tensor"
                           else list(layout.columns))
        modules = dict(loaded.module.named_modules())
        layer_of_column = [f"{n} ({type(modules[n]).__name__})" if n in modules else n for n in layer_of_column]
        profile_figure(result.sets, layer_of_column, out_dir / f"profile_{name}.png",
                       f"{spec}: gradient features per layer (evaluation samples)")
        roc_figure(result.curves, result.table, out_dir / f"roc_{name}.png", f"{spec}: ROC, known = positive")
        echo(f"{spec}: {len(parsed)} challenge sets, {known.x.shape[0]} known samples, "
             f"{time.perf_counter() - started:.1f} s")
    if env_rank() != 0:
        return None
    full = pd.concat(tables, ignore_index=True)
    text = format_text_table(full)
    full.to_csv(out_dir / "table.csv", index=False)
    (out_dir / "table.txt").write_text(text + "\n", encoding="utf-8")
    manifest = {"kind": "detect", "format": "gradtrust.detect/1",
                "models": [{"spec": s, "weights": w, "preprocessing": m.meta.get("preprocessing")}
                           for (s, w), (_, m) in zip(models, loaded_models, strict=True)],
                "data": data, "challenges": challenges,
                "eps": eps, "seed": seed, "fit_fraction": fit_fraction, "max_samples": max_samples,
                "detectors": detectors, "baselines": list(settings.baselines), "grouping": grouping,
                "n_bootstrap": n_bootstrap, "failures": failures, "command": " ".join(sys.argv)}
    atomic_write_json(out_dir / "manifest.json", manifest)
    page = build_report([out_dir], out_dir / "report", resamples=0, title="GradTrust detection experiment",
                        force=True).files["html"]
    echo(text)
    echo(f"\nWrote {out_dir / 'table.csv'}, figures and the report {page}.")
    return full


@click.command("detect", cls=Command)
@keep_freed_memory_option
@model_options(multiple=True)
@shared("data")
@click.option("--challenge", "challenges", default=None,
              help="Comma-separated: attacks fgsm,bim,pgd,cw,ll; corruptions NAME[:LEVEL] (no level = 1-5; "
                   "noise, blur, impulse, contrast, brightness; ImageNet-C names for images >= 32 px); "
                   f"ood=FOLDER, ood=SPEC (a data spec: ood=svhn:FILE.mat, ood=cifar10c:DIR:fog:3), ood=mnist, "
                   f"ood=patches. Default: {BUILTIN_CHALLENGES}.")
@click.option("--eps", type=float, default=None,
              help="L-inf attack budget in [0,1] pixel units (default 0.1 for digits, 8/255 otherwise).")
@click.option("--fit-fraction", type=float, default=0.5, show_default=True,
              help="Share of each set the detectors are fitted on; the rest is evaluated.")
@click.option("--max-samples", type=int, default=None, help="Use at most this many known samples (seeded subset).")
@click.option("--detectors", default="mlp,logistic", show_default=True)
@click.option("--baselines", default=None, help="Comma-separated gradtrust methods and/or mahalanobis "
                                                "(default: softmax,odin,energy,gradnorm,purview_initial,"
                                                "purview_final,mahalanobis).")
@click.option("--grouping", type=click.Choice(["tensor", "layer"]), default="tensor", show_default=True)
@shared("out_dir")
@shared("batch_size", default=256)
@shared("device", "seed")
@shared("resamples", default=200)
@alias("--bootstrap", "resamples", "--resamples", type=click.IntRange(min=0))
@shared("force")
def detect_command(model_spec: tuple[str, ...], weights: str | None, num_classes: int | None,
                   load_options: dict[str, Any], data: str | None, challenges: str | None, eps: float | None,
                   fit_fraction: float, max_samples: int | None, detectors: str, baselines: str | None, grouping: str,
                   out_dir: Path | None, batch_size: int, device: str | None, seed: int, resamples: int,
                   force: bool) -> None:
    """Detect adversarial, corrupted and out-of-distribution inputs from Purview's gradient features.

    Fits a detector (MLP and logistic regression) on gradient features of known vs challenge data and compares
    it with scalar trust scores and a Mahalanobis detector, on held-out samples: AUROC, FPR@95%TPR and
    detection error with bootstrap CIs, a table, figures and report/index.html in --out.
    """
    builtin = not model_spec
    if out_dir is None and not builtin:
        raise InputError("--out is required with --model: the folder for the tables, figures and report/.")
    specs = list(model_spec) or list(BUILTIN_MODELS)
    digits = all(s.startswith("digits:") for s in specs)
    chosen_weights = weights if weights is not None else ("bundled" if digits else None)
    if eps is None:
        eps = BUILTIN_EPS if digits else 8 / 255
    from gradtrust.runs.distributed import distributed_session

    dev = device_of(device)
    with distributed_session(dev):
        run_detect([(s, weights_arg(s, chosen_weights)) for s in specs], data, challenges or BUILTIN_CHALLENGES,
                   str(out_dir or BUILTIN_OUT), eps=eps, seed=seed, fit_fraction=fit_fraction,
                   max_samples=max_samples, detectors=[d.strip() for d in detectors.split(",") if d.strip()],
                   baselines=[b.strip() for b in baselines.split(",") if b.strip()] if baselines else None,
                   grouping=grouping, n_bootstrap=resamples, batch_size=batch_size, device=str(dev),
                   echo=click.echo, num_classes=num_classes, load_options=load_options, force=force)
    if builtin:
        click.echo("(built-in experiment: bundled digits networks; pass --model/--data/--challenge for your own)")
