"""``gradtrust explain``: Grad-CAM, Counterfactual-CAM, Contrast-CAM (and VOICE) for every sample of a dataset."""

from __future__ import annotations

import click

from gradtrust.cli.memory import check_batch_memory, keep_freed_memory_option
from gradtrust.cli.options import Command, data_or_digits, device_of, load_cli_model, model_options, rank, shared
from gradtrust.errors import InputError

EPILOG = """\b
Examples:
  gradtrust explain --model digits:digits_cnn --data digits --out runs/explain-cnn --voice --save-images 8
  gradtrust explain --model torchvision:resnet50 --weights DEFAULT --data /data/imagenet/val \\
      --labels LOC_val_solution.csv --out runs/explain-r50 --voice --save-images 32 --device cuda

\b
Output: <out>/explanations.parquet (per sample: P, Q, the layer-resolution maps, VOICE SNR and IoU),
<out>/manifest.json, <out>/images/<index>.png (overlays). Interrupted? Run the same command again.
"""


@click.command("explain", cls=Command, epilog=EPILOG)
@keep_freed_memory_option
@model_options(required=True)
@shared("data", "labels")
@click.option("--methods", default="gradcam,counterfactual,contrast", show_default=True, metavar="a,b,c",
              help="Any of gradcam (Why P?), counterfactual (What if not P?), contrast (Why P, rather than Q?).")
@click.option("--layer", metavar="NAME", help="The module to explain (default: the last spatial layer before "
                                              "global pooling; ViTs: the last block's first LayerNorm).")
@click.option("--contrast", "contrast_arg", metavar="Q", help="Q for every sample: a class index or name "
                                                              "(default: each sample's runner-up class).")
@click.option("--voice", is_flag=True, help="Also VOICE: the uncertainty map, its SNR and IoU.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.1, show_default=True, help="VOICE IoU threshold.")
@click.option("--save-images", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Overlays (PNG) of the first N samples.")
@shared("out_dir", required=True)
@shared("force")
@shared("batch_size", default=32)
@shared("workers", "device", "no_progress")
def explain_command(model_spec, weights, num_classes, load_options, data, labels, methods, layer, contrast_arg,
                    voice, threshold, save_images, out_dir, force, batch_size, workers, device, no_progress) -> None:
    """Explain every prediction of a model on a dataset: Why P? What if not P? Why P, rather than Q? (+ VOICE)."""
    from gradtrust.data.open import open_dataset
    from gradtrust.explanations.cams import parse_methods
    from gradtrust.explanations.run import explain_dataset
    from gradtrust.models import model_for_dataset

    parse_methods(methods)
    data = data_or_digits(model_spec, data, labels)
    dev = device_of(device)
    model = load_cli_model(model_spec, weights, num_classes, dev, load_options)
    check_batch_memory(model, batch_size)
    dataset = open_dataset(data, model, labels)
    model = model_for_dataset(model, dataset)  # ImageNet-A/R/O: the subset's logits, as their papers
    contrast = _contrast(contrast_arg, model.class_names)
    summary = explain_dataset(model, dataset, out_dir, methods=methods, layer=layer, contrast=contrast, voice=voice,
                              threshold=threshold, save_images=save_images, batch_size=batch_size,
                              num_workers=workers, device=str(dev), force=force, progress=not no_progress)
    if rank() == 0:
        click.echo(f"{model_spec}: explained {summary.num_explained} of {summary.num_samples} samples "
                   f"({summary.num_failed} failed) at layer {summary.layer}; {summary.elapsed_s:.1f} s")
        click.echo(f"  explanations: {summary.explanations_path}")
        click.echo(f"  manifest:     {summary.manifest_path}")
        if summary.num_no_prediction:
            click.echo(f"  note:         {summary.num_no_prediction} sample(s) have non-finite logits: prediction -1, "
                       "VOICE NaN (nan_reason_voice_snr / nan_reason_voice_iou), maps all zero")
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
