"""``gradtrust explain``: Grad-CAM, Counterfactual-CAM, Contrast-CAM (and VOICE) for every sample of a dataset."""

from __future__ import annotations

import os

import click

from gradtrust.cli.memory import keep_freed_memory_option
from gradtrust.errors import GradTrustError, InputError

EPILOG = """\b
Examples:
  gradtrust explain --model digits:digits_cnn --data digits --out runs/explain-cnn --voice --save-images 8
  gradtrust explain --model torchvision:resnet50 --weights DEFAULT --data /data/imagenet/val \\
      --labels LOC_val_solution.csv --out runs/explain-r50 --voice --save-images 32 --device cuda

\b
Output: <out>/explanations.parquet (per sample: P, Q, the layer-resolution maps, VOICE SNR and IoU),
<out>/manifest.json, <out>/images/<index>.png (overlays). Interrupted? Run the same command again.
"""


@click.command("explain", epilog=EPILOG,
               context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@keep_freed_memory_option
@click.option("--model", "model_spec", required=True, metavar="SPEC",
              help="torchvision:<name>, timm:<name>, digits:<name>, or a model file (`gradtrust models`).")
@click.option("--weights", metavar="W", help="DEFAULT, an enum name, a weights file, or 'random' (as `gradtrust score`).")
@click.option("--num-classes", type=click.IntRange(min=1), metavar="N")
@click.option("--data", metavar="DIR|digits[:...]", default=None,
              help="A dataset as `gradtrust score --data` reads it (default: digits for digits:* models).")
@click.option("--labels", type=click.Path(dir_okay=False), metavar="FILE", help="Labels of a flat image folder.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), metavar="DIR")
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
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, metavar="N")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True, metavar="N")
@click.option("--device", metavar="D")
@click.option("--force", is_flag=True, help="Discard the results of a different run already in --out.")
@click.option("--no-progress", is_flag=True)
@click.pass_context
def explain_command(ctx: click.Context, model_spec, weights, num_classes, data, labels, out_dir, methods, layer,
                    contrast_arg, voice, threshold, save_images, batch_size, workers, device, force,
                    no_progress) -> None:
    """Explain every prediction of a model on a dataset: Why P? What if not P? Why P, rather than Q? (+ VOICE)."""
    try:
        _run(model_spec, weights, num_classes, data, labels, out_dir, methods, layer, contrast_arg, voice, threshold,
             save_images, batch_size, workers, device, force, not no_progress)
    except (GradTrustError, OSError) as exc:
        click.echo(f"Error: {exc}", err=True)
        ctx.exit(2)
    except KeyboardInterrupt:
        click.echo("\nInterrupted. Complete chunks are kept: run the same command again to resume.", err=True)
        ctx.exit(130)


def _run(model_spec, weights, num_classes, data, labels, out_dir, methods, layer, contrast_arg, voice, threshold,
         save_images, batch_size, workers, device, force, progress) -> None:
    import torch

    from gradtrust.cli.score import RANDOM_INIT_SEED, weights_arg
    from gradtrust.data.open import open_dataset
    from gradtrust.explanations.cams import parse_methods
    from gradtrust.explanations.run import explain_dataset
    from gradtrust.models import load_model
    from gradtrust.runs.distributed import resolve_device

    parse_methods(methods)
    if labels is not None and not os.path.isfile(labels):
        raise InputError(f"labels file {os.path.abspath(labels)} does not exist.")
    if data is None:
        if not model_spec.startswith("digits:"):
            raise InputError("--data is required with this --model (a dataset folder).")
        data = "digits"
    default = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    dev = resolve_device(device, default)
    torch.manual_seed(RANDOM_INIT_SEED)
    model = load_model(model_spec, weights_arg(model_spec, weights), num_classes, device=dev)
    contrast = _contrast(contrast_arg, model.class_names)
    dataset = open_dataset(data, model, labels)
    summary = explain_dataset(model, dataset, out_dir, methods=methods, layer=layer, contrast=contrast, voice=voice,
                              threshold=threshold, save_images=save_images, batch_size=batch_size,
                              num_workers=workers, device=str(dev), force=force, progress=progress)
    if int(os.environ.get("RANK", "0") or 0) == 0:
        click.echo(f"{model_spec}: explained {summary.num_explained} of {summary.num_samples} samples "
                   f"({summary.num_failed} failed) at layer {summary.layer}; {summary.elapsed_s:.1f} s")
        click.echo(f"  explanations: {summary.explanations_path}")
        click.echo(f"  manifest:     {summary.manifest_path}")
        if summary.images:
            click.echo(f"  images:       {len(summary.images)} in {summary.out_dir / 'images'}")


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
