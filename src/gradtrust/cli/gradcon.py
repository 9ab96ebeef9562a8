"""``gradtrust gradcon fit | score | benchmark``: the GradCON anomaly detector (``docs/gradcon.md``)."""

from __future__ import annotations

from pathlib import Path

import click

from gradtrust.cli.memory import keep_freed_memory_option
from gradtrust.cli.options import Group, alias, device_of, rank, shared
from gradtrust.errors import InputError

__all__ = ["gradcon_command"]


@click.group("gradcon", cls=Group, invoke_without_command=True)
@click.pass_context
def gradcon_command(ctx: click.Context) -> None:
    """GradCON anomaly detection (Kwon et al., ECCV 2020): an autoencoder whose decoder gradients are kept
    aligned with their training mean; score = -reconstruction error + gamma * gradient cosine (higher = more
    normal). Without a sub-command: the built-in digits benchmark (`gradtrust gradcon benchmark`)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(benchmark_command)


@gradcon_command.command("fit")
@keep_freed_memory_option
@shared("data", required=True)
@click.option("--inlier", required=True, help="The normal class (its folder name, or its index); the model "
              "trains on its images only.")
@click.option("--beta", type=click.FloatRange(min=0), default=0.03, show_default=True,
              help="Weight of the gradient-alignment loss in training (0 = plain autoencoder).")
@click.option("--gamma", type=click.FloatRange(min=0), default=0.12, show_default=True,
              help="Weight of the gradient cosine in the score (stored; `score --gamma` overrides it).")
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True,
              help="Training epochs: GradCON's own default. `gradcon benchmark` trains 40, the setting of its "
                   "published table (docs/gradcon.md).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--grayscale", is_flag=True, help="Read folder images as one grey channel (default: RGB).")
@shared("out_dir", required=True)
@shared("batch_size", default=64)
@shared("seed", "device", "workers", "force", "no_progress")
def fit_command(data, inlier, beta, gamma, epochs, lr, grayscale, out_dir, batch_size, seed, device, workers,
                force, no_progress):
    """Train one GradCON model on the images of the --inlier class of --data (estimator.json +
    weights.safetensors in --out)."""
    from gradtrust.estimator import CONFIG_FILE, WEIGHTS_FILE
    from gradtrust.gradcon.data import load_labelled, resolve_class
    from gradtrust.gradcon.estimator import GradCON
    from gradtrust.runs.folder import RunFolder
    from gradtrust.runs.identity import files_sha256

    det = GradCON(beta=beta, gamma=gamma, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                  device=str(device_of(device)), progress=not no_progress)
    images = load_labelled(data, grayscale=grayscale, workers=workers, progress=not no_progress)
    label = resolve_class(inlier, images.classes)
    content = files_sha256([*images.paths, *(p for _, p, _ in images.failures)])
    RunFolder(out_dir, "gradcon", "gradtrust.gradcon-model/1",
              {"data": {**images.description, "content_sha256": content}, "inlier": label, "grayscale": grayscale,
               "params": {k: v for k, v in det.get_params().items() if k not in ("device", "progress")}},
              outputs=(CONFIG_FILE, WEIGHTS_FILE)).claim(force)
    train = images.of_class(label)
    det.fit(train)
    det.save(out_dir, metadata={"inlier": {"label": label, "name": images.classes[label]}, "data": data,
                                "grayscale": grayscale, "classes": images.classes}, overwrite=force)
    click.echo(f"GradCON fitted on {len(train)} images of class {images.classes[label]!r} "
               f"({epochs} epochs, final MSE {det.history_[-1]['mse']:.5f}); saved to {out_dir}")


@gradcon_command.command("score")
@keep_freed_memory_option
@click.option("--gradcon", "model_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="A folder written by `gradtrust gradcon fit`.  [required]")
@alias("--model", "model_dir", "--gradcon", type=click.Path(file_okay=False, path_type=Path))
@shared("data", required=True)
@click.option("--inlier", default=None, help="The normal class in --data (default: the class the model was "
              "trained on, by name).")
@click.option("--gamma", type=click.FloatRange(min=0), default=None,
              help="Weight of the gradient cosine in the score (default: the model's).")
@click.option("--grayscale/--rgb", default=None, help="How to read folder images (default: as in fit).")
@shared("out_dir", required=True)
@shared("device", "workers", "resamples", "force", "no_progress")
def score_command(model_dir, data, inlier, gamma, grayscale, out_dir, device, workers, resamples, force,
                  no_progress):
    """Score every image of --data (higher = more normal) and write a run folder for `gradtrust report`."""
    from gradtrust.gradcon.data import load_labelled, resolve_class
    from gradtrust.gradcon.estimator import GradCON
    from gradtrust.gradcon.scoring import score_to_run

    if model_dir is None:
        raise InputError("--gradcon DIR is required: a folder written by `gradtrust gradcon fit`.")
    det = GradCON.load(model_dir, device=str(device_of(device)), gamma=gamma)
    det.progress = not no_progress
    meta = det.metadata_
    gray = bool(meta.get("grayscale", False)) if grayscale is None else grayscale
    images = load_labelled(data, grayscale=gray, workers=workers, progress=not no_progress)
    wanted = inlier if inlier is not None else meta.get("inlier", {}).get("name")
    if wanted is None:
        raise InputError(f"the model in {model_dir} does not record its inlier class: pass --inlier")
    label = resolve_class(wanted, images.classes)
    summary = score_to_run(det, images, label, out_dir, model_source=str(model_dir), resamples=resamples,
                           force=force, progress=not no_progress)
    if rank() != 0:
        return
    ci = summary.get("auroc_ci")
    ci_text = f" [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else ""
    click.echo(f"Scored {summary['n']} images ({summary['n_inlier']} of inlier class "
               f"{images.classes[label]!r}): AUROC {100 * summary['auroc']:.2f}{ci_text}, "
               f"FPR@95%TPR {100 * summary['fpr_at_95tpr']:.2f} (×100). Run written to {out_dir}; "
               f"report with: gradtrust report {out_dir} --out REPORT")


@gradcon_command.command("benchmark")
@keep_freed_memory_option
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Epochs per model (default: gradtrust.gradcon.benchmark.DEFAULT_EPOCHS, 40).")
@shared("data", default="digits", show_default=True)
@click.option("--classes", default=None, help="Comma-separated class indices (default: every class).")
@click.option("--beta", type=click.FloatRange(min=0), default=0.03, show_default=True)
@click.option("--gamma", type=click.FloatRange(min=0), default=0.12, show_default=True)
@click.option("--no-report", is_flag=True, help="Skip the HTML report.")
@shared("out_dir", default=Path("gradcon-benchmark"), show_default=True)
@shared("seed", "resamples", "device", "no_progress")
def benchmark_command(data, epochs, classes, beta, gamma, threads, no_report, out_dir, seed, resamples, device,
                      no_progress):
    """One GradCON and one plain autoencoder per class (default: the bundled digits, nothing downloaded; or
    --data cifar10:DIR / mnist:DIR); prints the AUROC table (inliers positive) with bootstrap CIs and writes it,
    the runs and a report. It runs on one CPU thread unless --threads says otherwise: the 28x28 convolutions gain
    little from more."""
    from gradtrust.gradcon.benchmark import DEFAULT_EPOCHS, run_gradcon_benchmark

    try:
        wanted = None if classes is None else [int(c) for c in str(classes).split(",") if c.strip()]
    except ValueError:
        raise InputError(f"--classes takes comma-separated class indices, got {classes!r}") from None
    result = run_gradcon_benchmark(out_dir, data=data, classes=wanted, epochs=epochs or DEFAULT_EPOCHS, beta=beta,
                                   gamma=gamma, seed=seed, resamples=resamples, device=str(device_of(device)),
                                   progress=not no_progress, threads=threads or 1, echo=None if no_progress else click.echo)
    if not no_report:
        from gradtrust.reporting.report import build_report

        build_report([out_dir / "runs"], out_dir / "report", force=True, resamples=resamples, seed=seed,
                     title="GradCON benchmark on " + ("the bundled digits" if data == "digits" else data))
    click.echo(result.markdown)
    click.echo(f"Written to {out_dir} in {result.elapsed_s:.0f} s: table.md, table.csv, runs/, models/"
               + ("" if no_report else ", report/index.html"))

