"""Which layer an explanation reads, and how its output becomes a ``(B, K, *spatial)`` activation map.

A layer's output can come in four layouts (see ``docs/explanations.md``):

* ``nchw``   — a convolutional feature map ``(B, K, h, w)`` (torchvision/timm CNNs, ConvNeXt, MaxViT);
* ``nhwc``   — a channels-last map ``(B, h, w, K)`` (Swin stages and norms), permuted to ``(B, K, h, w)``;
* ``ncthw``  — a video feature map ``(B, K, t, h, w)`` (r3d_18, mc3_18, r2plus1d_18, s3d);
* ``tokens`` — transformer tokens ``(B, N, K)``: the prefix tokens (class/distillation/register) are dropped
  and the patch tokens reshaped to their ``(h, w)`` grid.

The default layer is found by one probe forward pass of a single sample (cached per model and input shape):
the last module to finish whose output is a spatial map (``h·w > 1``), adaptive pooling layers excluded —
for a CNN the last block before global pooling. Vision transformers with a class token are the exception:
the class token is the only token that reaches the head after the last block, so the patch tokens of the last
block's *output* have zero gradient and every map would be empty. Their default is the last block's first
LayerNorm (``encoder.layers.<last>.ln_1`` in torchvision, ``blocks.<last>.norm1`` in timm,
``vit.layers.<last>.layernorm_before`` in Hugging Face ``transformers``), as pytorch-grad-cam recommends for ViTs.
Hugging Face ViTs/DeiTs are recognised by their embeddings' ``cls_token`` (and ``distillation_token``): those
prefix tokens are dropped and the patch grid is ``config.image_size // config.patch_size``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gradtrust.errors import ModelError, UnknownNameError
from gradtrust.nn.cache import cached
from gradtrust.nn.hooks import LayerCall, final_linear, recording
from gradtrust.nn.model import input_mismatch
from gradtrust.nn.outputs import model_logits

_POOLING = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
            nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)


@dataclass(frozen=True)
class LayerSpec:
    """Where an explanation reads the network: the module's name, its output layout and the head it feeds.

    ``head`` is the name of an ``nn.Linear`` that *may* map the globally average-pooled activations to the
    logits (the closed form); it is only a candidate — :mod:`gradtrust.explanations.weights` verifies it on every
    batch before using it.
    """

    name: str
    layout: str  # "nchw" | "nhwc" | "ncthw" | "tokens"
    num_prefix: int = 0  # tokens only: leading tokens dropped (class, distillation, registers)
    grid: tuple[int, int] | None = None  # tokens only: the patch grid (h, w)
    head: str | None = None

    def canonical(self, output: torch.Tensor) -> torch.Tensor:
        """The layer output as ``(B, K, h, w)`` (or ``(B, K, t, h, w)`` for video), same dtype, differentiable."""
        if self.layout == "nhwc":
            return output.permute(0, 3, 1, 2)
        if self.layout == "tokens":
            assert self.grid is not None
            patches = output[:, self.num_prefix:, :]
            return patches.transpose(1, 2).reshape(output.shape[0], output.shape[2], *self.grid)
        return output


def model_signature(inputs: torch.Tensor) -> tuple:
    return tuple(inputs.shape[1:]), inputs.dtype


def resolve_layer(module: nn.Module, inputs: torch.Tensor, layer: str | None) -> LayerSpec:
    """The :class:`LayerSpec` for ``layer`` (a module name, or ``None`` for the default), kept in the per-model
    cache (:mod:`gradtrust.nn.cache`) per input shape and dtype; a layer that cannot be explained raises, every
    time."""
    return cached(module, "explanation_layer", (layer, *model_signature(inputs)),
                  lambda: _probe(module, inputs[:1], layer))


def _probe(module: nn.Module, sample: torch.Tensor, layer: str | None) -> LayerSpec:
    """Run one sample with a hook on every module; choose and describe the layer."""
    if isinstance(module, torch.jit.ScriptModule):  # register_forward_hook raises on ScriptModules
        raise ModelError("this is a TorchScript model: its compiled forward runs its layers in the TorchScript "
                         "interpreter, which never calls the Python forward hooks that read a layer's activations")
    records, logits = _record_outputs(module, sample)
    head, head_in = _final_linear(module, records, logits.shape[-1])
    if layer is not None:
        try:
            module.get_submodule(layer)
        except AttributeError:
            raise UnknownNameError(f"layer={layer!r} is not a module of this model. "
                                   f"{_candidates_from(records, head_in, module)}") from None
    prefix, grid_hint = _token_info(module)

    if layer is None:
        layer = _transformer_default(module)
    if layer is None:
        spatial = [r for r in records if _spatial_layout(r, head_in, module) is not None]
        if not spatial:
            raise ModelError(f"no layer of {type(module).__name__} outputs a spatial feature map (h·w > 1) for inputs "
                             f"of shape {tuple(sample.shape[1:])}; explanations need one. Pass layer='<module name>' "
                             "(a convolutional block, or transformer tokens) or use larger inputs.")
        chosen = spatial[-1]
        layout = _spatial_layout(chosen, head_in, module)
        assert layout is not None
        return LayerSpec(chosen.name, layout, head=head)

    ran = [r for r in records if r.name == layer]
    if not ran:
        raise ModelError(f"layer={layer!r} did not run in the forward pass (or returned no tensor). "
                         f"{_candidates_from(records, head_in, module)}")
    last = ran[-1]
    layout = _spatial_layout(last, head_in, module, allow_pooling=True)
    if layout is not None:
        return LayerSpec(layer, layout, head=head)
    out = last.output
    if out.dim() == 3:  # transformer tokens (B, N, K)
        n = out.shape[1]
        if grid_hint is not None and grid_hint[0] * grid_hint[1] + prefix == n:
            return LayerSpec(layer, "tokens", prefix, grid_hint, head=head)
        side = math.isqrt(n - prefix) if n > prefix else 0
        if side > 1 and side * side == n - prefix:
            return LayerSpec(layer, "tokens", prefix, (side, side), head=head)
    raise ModelError(f"layer={layer!r} outputs shape {tuple(out.shape)}, which is not a spatial feature map "
                     f"(B, K, h, w), (B, h, w, K), (B, K, t, h, w) or patch tokens (B, N, K) with h·w > 1. "
                     f"{_candidates_from(records, head_in, module)}")


def run_model(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module``'s logits on ``x`` (B, C); a model that cannot run on ``x`` raises :class:`InputError`."""
    with input_mismatch(x):
        return model_logits(module, x)


def _final_linear(module: nn.Module, records: list[LayerCall], num_classes: int) -> tuple[str | None, int | None]:
    """The final ``nn.Linear`` (:func:`gradtrust.nn.hooks.final_linear`): its name and its input width."""
    call = final_linear(module, [r for r in records if isinstance(r.module, nn.Linear)], num_classes)
    return (call.name, int(call.input.shape[-1])) if call is not None else (None, None)


def _hf_embeddings(module: nn.Module) -> Any:
    """The embeddings of a Hugging Face ``transformers`` vision transformer with a class token, else None."""
    attrs: Any = module
    prefix = getattr(attrs, "base_model_prefix", None)
    if getattr(attrs, "config", None) is None or not isinstance(prefix, str):
        return None
    embeddings = getattr(getattr(attrs, prefix, None), "embeddings", None)
    return embeddings if getattr(embeddings, "cls_token", None) is not None else None


def _pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, list | tuple) else (int(value), int(value))


def _token_info(module: nn.Module) -> tuple[int, tuple[int, int] | None]:
    """Prefix tokens and patch grid of a torchvision, timm or Hugging Face vision transformer (0, None otherwise)."""
    attrs: Any = module  # torchvision / timm attributes are not typed on nn.Module
    if hasattr(attrs, "class_token") and hasattr(attrs, "encoder"):  # torchvision VisionTransformer
        side = int(attrs.image_size) // int(attrs.patch_size)
        return 1, (side, side)
    embeddings = _hf_embeddings(module)
    if embeddings is not None:  # transformers ViT / DeiT: [CLS] (and [DIST]) first
        prefix = 1 + (getattr(embeddings, "distillation_token", None) is not None)
        size, patch = _pair(attrs.config.image_size), _pair(attrs.config.patch_size)
        return prefix, (size[0] // patch[0], size[1] // patch[1])
    prefix = int(getattr(attrs, "num_prefix_tokens", 0) or 0)
    grid = getattr(getattr(attrs, "patch_embed", None), "grid_size", None)
    return prefix, ((int(grid[0]), int(grid[1])) if grid is not None and len(grid) == 2 else None)


def _transformer_default(module: nn.Module) -> str | None:
    attrs: Any = module
    if hasattr(attrs, "class_token") and hasattr(attrs, "encoder"):  # torchvision ViT
        last_name = list(attrs.encoder.layers.named_children())[-1][0]
        return f"encoder.layers.{last_name}.ln_1"
    if _hf_embeddings(module) is not None:  # transformers ViT: the last block's first LayerNorm, as torchvision's
        norms = [name for name, _ in module.named_modules() if name.endswith("layernorm_before")]
        if norms:
            return norms[-1]
    blocks = getattr(attrs, "blocks", None)
    if isinstance(blocks, nn.Sequential | nn.ModuleList) and hasattr(attrs, "num_prefix_tokens") and len(blocks):
        pooled_by_token = getattr(attrs, "global_pool", "token") in ("token", "map") and attrs.num_prefix_tokens
        if pooled_by_token and hasattr(blocks[-1], "norm1"):
            return f"blocks.{len(blocks) - 1}.norm1"
        return f"blocks.{len(blocks) - 1}"
    return None


def _spatial_layout(record: LayerCall, head_in: int | None, model: nn.Module,
                    allow_pooling: bool = False) -> str | None:
    out = record.output
    if not out.is_floating_point() or (isinstance(record.module, _POOLING) and not allow_pooling):
        return None
    if out.dim() == 5 and out.shape[2:].numel() > 1 and out.shape[-2:].numel() > 1:
        return "ncthw"
    if out.dim() != 4:
        return None
    channels_last = (head_in is not None and out.shape[-1] == head_in and out.shape[1] != head_in) or (
        head_in is None and "swin" in type(model).__name__.lower())
    if channels_last:
        return "nhwc" if out.shape[1:3].numel() > 1 else None
    return "nchw" if out.shape[-2:].numel() > 1 else None


def _candidates_from(records: list[LayerCall], head_in: int | None, model: nn.Module) -> str:
    names = list(dict.fromkeys(r.name for r in records if _spatial_layout(r, head_in, model) is not None))
    if not names:
        return "No module of this model outputs a spatial feature map for these inputs."
    shown = names[-10:]
    return (f"Layers with a spatial output (the last {len(shown)} of {len(names)}): {', '.join(shown)}."
            if len(names) > len(shown) else f"Layers with a spatial output: {', '.join(shown)}.")


def _record_outputs(module: nn.Module, sample: torch.Tensor) -> tuple[list[LayerCall], torch.Tensor]:
    """Run ``module`` once on ``sample`` (no grad), recording every submodule's tensor output in call order."""
    hooked = {name: sub for name, sub in module.named_modules()
              if sub is not module and not isinstance(sub, torch.jit.ScriptModule)}  # scripted parts cannot be hooked
    with recording(hooked) as records, torch.no_grad():
        logits = run_model(module, sample)
    return records, logits
