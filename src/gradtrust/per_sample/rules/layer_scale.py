"""torchvision ``CNBlock`` (ConvNeXt): ``out = γ ⊙ y + x`` with ``y = block(x)``, ``γ`` (C, 1, 1).

With ``g_i = ∂L_i/∂out_i``: ``∂L_i/∂γ_c = Σ_{h,w} g_{i,c,h,w} y_{i,c,h,w}`` (Liu et al., CVPR 2022;
docs/per_sample.md). Stochastic depth is the identity in eval mode.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gradtrust.per_sample.registry import Rule, RuleContext, UnsupportedForHooks, register_rule


@register_rule("torchvision.models.convnext.CNBlock")
def layer_scale_rule(module: nn.Module) -> LayerScale:
    """The rule for a ConvNeXt block: every ``CNBlock`` has the form."""
    return LayerScale()


class LayerScale(Rule):
    """``layer_scale`` of a ConvNeXt block, from the block's output and the gradient of ``γ ⊙ y + x``."""

    covers = ("layer_scale",)

    def attach(self, name: str, module: nn.Module, ctx: RuleContext) -> list[Any]:
        seen: dict[str, tuple[torch.Tensor, int]] = {}

        def block_hook(block, args, output):
            y = output.detach()
            seen["y"] = (y, y._version)

        def hook(mod, args, output):
            if mod.training or not output.requires_grad:
                ctx.fail(f"{name!r}: CNBlock in training mode or before the recorded graph")
                return
            y, version = seen["y"]

            def on_grad(g):
                if y._version != version:
                    raise UnsupportedForHooks(f"the block output of {name!r} was modified in place")
                grad = (g.detach().float() * y.float()).flatten(2).sum(2)
                ctx.sink(name, "layer_scale", grad.square().sum(1))

            output.register_hook(ctx.when_active(on_grad))

        return [module.get_submodule("block").register_forward_hook(block_hook), module.register_forward_hook(hook)]
