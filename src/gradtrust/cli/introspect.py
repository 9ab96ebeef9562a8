"""``gradtrust introspect fit | score | benchmark``: introspective learning (``docs/introspection.md``)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from gradtrust.cli.memory import check_batch_memory, keep_freed_memory_option
from gradtrust.cli.options import RANDOM_INIT_SEED, Group, alias, device_of, load_cli_model, model_options, rank, shared
from gradtrust.errors import GradTrustError, InputError

__all__ = ["introspect_command"]

#: The trust scores an introspective score run computes by default: everything one forward pass gives.
DEFAULT_METHODS = ("softmax,entropy,max_logit,margin,brier,logit_margin,energy,doctor,maxlogit_pnorm,gradtrust,"
                   "gradtrust_topk,gradnorm")
INTROSPECTION_FILE = "introspection.parquet"


@click.group("introspect", cls=Group)
def introspect_command() -> None:
    """Introspective learning: a second network H that predicts again from the gradient of MSE(z, 1_C).

    \b
    gradtrust introspect fit --model digits:digits_cnn --data digits:train --out intro/cnn
    gradtrust introspect score --introspective intro/cnn --data digits:test:blur:1 --out runs/cnn-blur
    gradtrust report runs/cnn-blur --out report/        # feed-forward and introspective side by side
    gradtrust introspect benchmark                      # the built-in digits comparison table
    """


@introspect_command.command("fit")
@keep_freed_memory_option
@model_options(required=True)
@shared("data")
@alias("--train", "data", "--data")
@shared("labels")
@click.option("--hidden", type=click.IntRange(min=1), default=64, show_default=True, help="Hidden units of H.")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--layer", metavar="NAME", help="The nn.Linear of f to take the gradient at (default: the final one).")
@click.option("--chunk-size", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Training samples per resumable feature chunk (DIR/features/).")
@shared("out_dir", required=True)
@shared("batch_size", default=128)
@shared("seed", "device", "workers", "force", "no_progress")
def fit_command(model_spec, weights, num_classes, load_options, data, labels, hidden, epochs, lr, layer, chunk_size,
                out_dir, batch_size, seed, device, workers, force, no_progress) -> None:
    """Fit H on the introspective features of f on a training set (--data: DIR or digits:train).

    The features are written to DIR/features/ in atomic chunks first: an interrupted fit run again with
    the same command computes only the missing chunks. Writes DIR/estimator.json + weights.safetensors.
    """
    from gradtrust.data.classes import resolve_class_indices
    from gradtrust.data.open import describe_dataset, open_dataset
    from gradtrust.estimator import CONFIG_FILE, WEIGHTS_FILE
    from gradtrust.introspection.cache import cached_features
    from gradtrust.introspection.introspective import Introspective
    from gradtrust.models import file_sha256
    from gradtrust.runs.folder import RunFolder
    from gradtrust.runs.identity import dataset_identity, model_identity

    if data is None:
        raise InputError("--data is required: the training data (a class-folder DIR, or digits:train).")
    dev = device_of(device)
    model = load_cli_model(model_spec, weights, num_classes, dev, load_options)
    check_batch_memory(model, batch_size)
    dataset = open_dataset(data, model, labels)
    if len(dataset) == 0:
        raise InputError("the training set is empty.")
    if not model.num_classes:
        raise InputError(f"the number of outputs of {model.spec} is unknown; pass --num-classes.")
    class_map = resolve_class_indices(dataset.classes, model.class_names, model.num_classes)
    fit = RunFolder(out_dir, "introspect", "gradtrust.introspective/1",
                    {"model": model_identity(model, model.describe()), "train": dataset_identity(dataset),
                     "settings": {"hidden": hidden, "epochs": epochs, "lr": lr, "batch_size": batch_size,
                                  "seed": seed, "layer": layer}},
                    outputs=("features", WEIGHTS_FILE, CONFIG_FILE))
    if rank() == 0:
        fit.claim(force)
    feats = cached_features(model, dataset, class_map, out_dir / "features", layer=layer, chunk_size=chunk_size,
                            num_workers=workers, progress=not no_progress)
    if feats["resumed_chunks"]:
        click.echo(f"resumed: {feats['resumed_chunks']} chunk(s) of features read from {out_dir / 'features'}")
    intro = Introspective(hidden=hidden, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                          layer=feats["layer"], progress=not no_progress)
    intro.info_ = {"closed_form": feats["closed_form"]}
    intro.fit_features(feats["a"], feats["h"], feats["y"], feats["logits"], device=dev)
    saved_options = {**load_options, **({"class_names": list(model.class_names)} if "class_names" in load_options
                                        else {})}  # the list, not a file that may move: introspect score reloads f
    saved_options.pop("trust_model_file", None)  # an opt-in is the user's, given again: never read from a folder
    extra = {"model": {"spec": model.spec, "weights": model.weights, "weights_sha256": model.weights_sha256,
                       "parameters_sha256": fit.identity["model"]["parameters_sha256"],
                       "num_classes": model.num_classes, "class_names": list(model.class_names),
                       **({"load_options": saved_options} if saved_options else {})},
             "train": describe_dataset(dataset)}
    if rank() != 0:  # under torchrun every rank fits the same H; rank 0 writes it
        return
    intro.save(out_dir, extra, overwrite=force)
    info = intro.info_
    click.echo(f"H fitted on {info['train_samples']} samples ({info['num_classes']} classes x "
               f"{info['num_features']} features at layer {info['layer']!r}, "
               f"{'closed form' if info['closed_form'] else 'autograd'}) in {info['fit_seconds']:.1f} s; "
               f"train accuracy f {info['train_accuracy_feed_forward']:.4f}, H {info['train_accuracy']:.4f}")
    click.echo(f"  written: {out_dir / WEIGHTS_FILE} ({file_sha256(out_dir / WEIGHTS_FILE)[:12]}…), "
               f"{out_dir / CONFIG_FILE}")


def introspective_loaded_model(model, intro, folder: Path):
    """``f`` + ``H`` as a :class:`~gradtrust.models.LoadedModel` (spec ``introspective:<f's spec>``)."""
    from gradtrust.estimator import WEIGHTS_FILE
    from gradtrust.models import LoadedModel, file_sha256

    return LoadedModel(module=intro.module(model).eval(), transform=model.transform,
                       class_names=list(model.class_names), num_classes=model.num_classes,
                       spec=f"introspective:{model.spec}", weights=str(folder.resolve()),
                       weights_sha256=file_sha256(folder / WEIGHTS_FILE), input_kind=model.input_kind,
                       clip_len=model.clip_len,
                       meta={"feed_forward": {"spec": model.spec, "weights": model.weights,
                                              "weights_sha256": model.weights_sha256},
                             "introspective": {"params": intro.get_params(), **intro.metadata_}})


def write_introspection_table(out: Path) -> Path:
    """``introspection.parquet``: per sample ``index, path, label, prediction, introspective_prediction,
    correct, introspective_correct, logits, introspective_logits`` from the two runs (atomic write)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gradtrust.runs import chunks as ch

    ff = pq.read_table(out / "feed_forward" / "scores.parquet")
    it = pq.read_table(out / "introspective" / "scores.parquet")
    ff_logits = pq.read_table(out / "feed_forward" / "logits.parquet")
    it_logits = pq.read_table(out / "introspective" / "logits.parquet")
    if ff["index"].to_pylist() != it["index"].to_pylist():
        raise GradTrustError("the feed-forward and introspective runs scored different samples; rerun with --force.")
    table = pa.table({
        "index": ff["index"], "path": ff["path"], "label": ff["label"], "prediction": ff["prediction"],
        "introspective_prediction": it["prediction"], "correct": ff["correct"],
        "introspective_correct": it["correct"], "logits": ff_logits["logits"],
        "introspective_logits": it_logits["logits"],
    })
    path = out / INTROSPECTION_FILE
    ch.atomic_write(path, lambda handle: pq.write_table(table, handle, compression="zstd"))
    return path


def fitted_model(recorded: dict, folder: Path, device, model_spec: str | None, weights: str | None,
                 num_classes: int | None, load_options: dict):
    """``f``, the network ``H`` was fitted on: the one ``--model`` names, checked against the parameters (or
    weights) hash the folder records; without ``--model``, the model the folder names when that is a built-in
    family's (``digits:``, ``torchvision:``, ``timm:``). A folder is data: a model it names that would run code
    (``package.module:factory``, a model file) is loaded only with ``--trust-model-file``; the loading options
    it records (preprocessing, class names, output index) are data and used, ``trust_model_file`` never."""
    import torch

    from gradtrust.models import load_model
    from gradtrust.models.specs import SPEC_FAMILIES
    from gradtrust.runs.identity import tensors_sha256

    spec = recorded.get("spec")
    if not spec:
        raise InputError(f"{folder} does not say which model H was fitted on (no 'model'); fit it again.")
    trusted = bool(load_options.get("trust_model_file"))
    options = {k: v for k, v in (recorded.get("load_options") or {}).items() if k != "trust_model_file"}
    if model_spec is not None:  # the folder's weights, preprocessing… are data: defaults for what is not given
        same = model_spec == spec
        model = load_cli_model(model_spec, weights if weights is not None or not same else recorded.get("weights"),
                               num_classes if num_classes is not None or not same else recorded.get("num_classes"),
                               device, {**options, **load_options})
    else:
        given = sorted(k for k in load_options if k != "trust_model_file")
        if weights is not None or num_classes is not None or given:
            raise InputError("--weights, --num-classes and the loading options describe the model given with "
                             f"--model; add --model (the network H was fitted on, {spec}).")
        if str(spec).split(":", 1)[0] not in SPEC_FAMILIES and not trusted:
            raise InputError(f"{folder / 'estimator.json'} names the model {spec!r}, which loads Python code (a "
                             "module to import or a model file); a saved folder is data, so GradTrust does not run "
                             "what it names. Give the model with --model (and --weights), checked against the "
                             "weights H was fitted on, or pass --trust-model-file if you trust this folder.")
        torch.manual_seed(RANDOM_INIT_SEED)
        model = load_model(spec, recorded.get("weights"), recorded.get("num_classes"), device=device,
                           trust_model_file=trusted, **options)
    if recorded.get("parameters_sha256"):
        if tensors_sha256(model.module.state_dict()) != recorded["parameters_sha256"]:
            raise InputError(f"the parameters of {model.spec} ({model.weights or 'random weights'}) differ from "
                             f"those of the network H was fitted on ({spec}, "
                             f"{recorded.get('weights') or 'random weights'}): give that network with --model and "
                             "--weights, or fit H again for this one.")
    elif recorded.get("weights_sha256") and model.weights_sha256 != recorded["weights_sha256"]:
        raise InputError(f"the weights of {model.spec} ({model.weights}) differ from those H was fitted on "
                         f"(SHA-256 {recorded['weights_sha256'][:12]}…): fit H again for these weights.")
    return model


@introspect_command.command("score")
@keep_freed_memory_option
@click.option("--introspective", "folder", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path),
              metavar="DIR", help="A folder written by `gradtrust introspect fit`.")
@model_options()
@shared("data", required=True)
@shared("labels")
@click.option("--methods", default=DEFAULT_METHODS, show_default=True, metavar="a,b,c|all",
              help="Trust scores, computed on f's logits and on H's.")
@shared("out_dir", required=True)
@shared("force")
@shared("batch_size", default=64)
@shared("workers", "device", "no_progress")
def score_command(folder, model_spec, weights, num_classes, load_options, data, labels, methods, out_dir, force,
                  batch_size, workers, device, no_progress) -> None:
    """Score a dataset with f and with H: both predictions, logits and trust scores.

    f is the network the folder records when it is a built-in one (digits:, torchvision:, timm:); give it with
    --model otherwise (its weights and preprocessing default to the recorded ones) — it is checked against the
    parameters H was fitted on — or pass --trust-model-file to load the model the folder names (a factory or a
    model file runs code).

    Writes RUN/feed_forward/, RUN/introspective/ (two score runs) and RUN/introspection.parquet into --out RUN.
    """
    from gradtrust.data.open import open_dataset
    from gradtrust.introspection.introspective import Introspective
    from gradtrust.runs.score import score_dataset

    intro = Introspective.load(folder)
    dev = device_of(device)
    model = fitted_model(intro.metadata_.get("model") or {}, folder, dev, model_spec, weights, num_classes,
                         load_options)
    check_batch_memory(model, batch_size)
    intro.check_fitted().to(dev)
    dataset = open_dataset(data, model, labels)
    kwargs = dict(methods=methods, batch_size=batch_size, num_workers=workers, device=str(dev), force=force,
                  progress=not no_progress)
    ff = score_dataset(model, dataset, out_dir / "feed_forward", **kwargs)
    both = introspective_loaded_model(model, intro, folder)
    it = score_dataset(both, open_dataset(data, both, labels), out_dir / "introspective", **kwargs)
    path = write_introspection_table(out_dir)
    acc = [("n/a" if s.accuracy is None else f"{s.accuracy:.4f}") for s in (ff, it)]
    click.echo(f"{model.spec} on {data}: {ff.num_scored} samples; accuracy feed-forward {acc[0]}, "
               f"introspective {acc[1]}")
    click.echo(f"  runs: {out_dir / 'feed_forward'}, {out_dir / 'introspective'}; both predictions: {path}")
    click.echo(f"  compare: gradtrust report {out_dir} --out {out_dir / 'report'}")


@introspect_command.command("benchmark")
@keep_freed_memory_option
@click.option("--models", default=None, metavar="a,b", help="digits networks (default: all bundled ones).")
@click.option("--hidden", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@shared("out_dir", default="gradtrust-introspection", show_default=True)
@shared("seed", "resamples")
def benchmark_command(models, out_dir, hidden, epochs, seed, resamples) -> None:
    """The built-in comparison: H fitted on the digits training split of every bundled digits network,
    feed-forward vs introspective on the clean test split and its corrupted copies (accuracy, ECE, AUROC of
    the maximum softmax probability for errors, bootstrap CIs)."""
    from gradtrust.introspection.benchmark import run_benchmark

    names = None if models is None else [m.strip() for m in models.split(",") if m.strip()]
    result = run_benchmark(names, Path(out_dir), hidden=hidden, epochs=epochs, seed=seed, resamples=resamples,
                           progress=True)
    click.echo(result.markdown)
    click.echo(f"written: {result.files['md']}, {result.files['csv']} ({result.elapsed_s:.0f} s)")
    sys.stdout.flush()
