"""``gradtrust explain``: Grad-CAM, Counterfactual-CAM, Contrast-CAM (and VOICE), occlusion, RISE and SHAPE for every
sample of a dataset, and with ``--evaluate`` every map judged by masking."""

from __future__ import annotations

import click

from gradtrust.cli.memory import check_batch_memory, keep_freed_memory_option
from gradtrust.cli.options import Command, data_or_digits, device_of, load_cli_model, model_options, rank, shared
from gradtrust.errors import InputError

EPILOG = """\b
Examples:
  gradtrust explain --model digits:digits_cnn --data digits --out runs/explain-cnn --voice --save-images 8
  gradtrust explain --model digits:digits_cnn --methods gradcam,contrast,occlusion,rise,shape --evaluate \\
      --out runs/explain-eval
  gradtrust explain --model torchvision:resnet50 --weights DEFAULT --data /data/imagenet/val \\
      --labels LOC_val_solution.csv --out runs/explain-r50 --voice --save-images 32 --device cuda

\b
Output: <out>/explanations.parquet (per sample: P, Q, the layer-resolution maps, VOICE SNR and IoU),
<out>/manifest.json, <out>/images/<index>.png (overlays); with --evaluate also <out>/evaluation.parquet (per
sample and map: deletion/insertion AUCs and curves, Average Drop, Increase in Confidence, ROAD, variance split) and
<out>/evaluation_summary.csv (means, bootstrap CIs, differences to the random map). Interrupted? Run it again.
"""


@click.command("explain", cls=Command, epilog=EPILOG)
@keep_freed_memory_option
@model_options(required=True)
@shared("data", "labels")
@click.option("--methods", default="gradcam,counterfactual,contrast", show_default=True, metavar="a,b,c",
              help="Any of gradcam (Why P?), counterfactual (What if not P?), contrast (Why P, rather than Q?), "
                   "occlusion, rise, shape (interventions: many masked forward passes per sample).")
@click.option("--layer", metavar="NAME", help="The module to explain (default: the last spatial layer before "
                                              "global pooling; ViTs: the last block's first LayerNorm).")
@click.option("--contrast", "contrast_arg", metavar="Q", help="Q for every sample: a class index or name "
                                                              "(default: each sample's runner-up class).")
@click.option("--voice", is_flag=True, help="Also VOICE: the uncertainty map, its SNR and IoU.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.1, show_default=True, help="VOICE IoU threshold.")
@click.option("--save-images", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Overlays (PNG) of the first N samples.")
@click.option("--masks", type=click.IntRange(min=1), default=4000, show_default=True, metavar="N",
              help="RISE/SHAPE: number of random masks.")
@click.option("--mask-grid", type=click.IntRange(min=1), default=7, show_default=True, metavar="G",
              help="RISE/SHAPE: the masks' G×G grid before upsampling.")
@click.option("--keep-probability", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.5,
              show_default=True, metavar="Q", help="RISE/SHAPE: probability that a grid cell is kept.")
@click.option("--patch-size", type=click.IntRange(min=1), metavar="P",
              help="Occlusion: patch side in pixels (default: min(H, W) // 8).")
@click.option("--stride", type=click.IntRange(min=1), metavar="S", help="Occlusion: stride (default: P // 2).")
@click.option("--evaluate", is_flag=True, help="Judge every map (and a random and a centre-bias map) by masking: "
                                               "deletion/insertion, Average Drop, ROAD, the variance split.")
@click.option("--metrics", "eval_metrics", default="deletion,insertion,average_drop,road,variance", show_default=True,
              metavar="a,b", help="With --evaluate: any of deletion, insertion, average_drop, road, variance.")
@click.option("--steps", type=click.IntRange(min=1), metavar="K",
              help="With --evaluate: deletion/insertion steps (default: min(H·W, 100)).")
@shared("seed", "resamples")
@shared("out_dir", required=True)
@shared("force")
@shared("batch_size", default=32)
@shared("workers", "device", "no_progress")
def explain_command(model_spec, weights, num_classes, load_options, data, labels, methods, layer, contrast_arg,
                    voice, threshold, save_images, masks, mask_grid, keep_probability, patch_size, stride, evaluate,
                    eval_metrics, steps, seed, resamples, out_dir, force, batch_size, workers, device,
                    no_progress) -> None:
    """Explain every prediction of a model on a dataset: Why P? What if not P? Why P, rather than Q? (+ VOICE,
    occlusion, RISE, SHAPE), and judge the maps by masking (--evaluate)."""
    from gradtrust.data.open import open_dataset
    from gradtrust.explanations.cams import parse_methods
    from gradtrust.explanations.evaluate import parse_metrics
    from gradtrust.explanations.perturbation import PerturbationOptions
    from gradtrust.explanations.run import explain_dataset
    from gradtrust.models import model_for_dataset

    parse_methods(methods)
    parse_metrics(eval_metrics)
    perturbation = PerturbationOptions(num_masks=masks, mask_grid=mask_grid, keep_probability=keep_probability,
                                       patch_size=patch_size, stride=stride, seed=seed)
    data = data_or_digits(model_spec, data, labels)
    dev = device_of(device)
    model = load_cli_model(model_spec, weights, num_classes, dev, load_options)
    check_batch_memory(model, batch_size)
    dataset = open_dataset(data, model, labels)
    model = model_for_dataset(model, dataset)  # ImageNet-A/R/O: the subset's logits, as their papers
    contrast = _contrast(contrast_arg, model.class_names)
    summary = explain_dataset(model, dataset, out_dir, methods=methods, layer=layer, contrast=contrast, voice=voice,
                              threshold=threshold, save_images=save_images, batch_size=batch_size,
                              num_workers=workers, device=str(dev), force=force, progress=not no_progress,
                              perturbation=perturbation, evaluate=evaluate, metrics=eval_metrics, steps=steps,
                              seed=seed, resamples=resamples)
    if rank() == 0:
        click.echo(f"{model_spec}: explained {summary.num_explained} of {summary.num_samples} samples "
                   f"({summary.num_failed} failed) "
                   f"{f'at layer {summary.layer}' if summary.layer else '(interventions: no layer)'}; "
                   f"{summary.elapsed_s:.1f} s")
        click.echo(f"  explanations: {summary.explanations_path}")
        click.echo(f"  manifest:     {summary.manifest_path}")
        if summary.num_no_prediction:
            click.echo(f"  note:         {summary.num_no_prediction} sample(s) have non-finite logits: prediction -1, "
                       "VOICE NaN (nan_reason_voice_snr / nan_reason_voice_iou), maps all zero")
        if evaluate:
            click.echo(f"  evaluation:   {summary.out_dir / 'evaluation.parquet'}, "
                       f"{summary.out_dir / 'evaluation_summary.csv'}")
        if save_images or summary.images:
            fewer = ""
            if len(summary.images) < save_images:
                fewer = (f" (--save-images {save_images} asked for more: the dataset has {summary.num_samples} "
                         f"sample(s), {summary.num_failed} unreadable)")
            click.echo(f"  images:       {len(summary.images)} in {summary.out_dir / 'images'}{fewer}")


def _contrast(value: str | None, class_names: list[str]) -> int | None:
    if value is None or value.strip().lower() in ("", "none", "runner-up", "runnerup"):
        return None
    value = value.strip()
    if value.lstrip("-").isdigit():
        return int(value)
    lowered = [n.lower() for n in class_names]
    if value.lower() in lowered:
        return lowered.index(value.lower())
    raise InputError(f"--contrast {value!r} is neither a class index nor a class name of this model "
                     f"(e.g. {', '.join(class_names[:5])}).")
