"""torchvision ``VisionTransformer``: ``class_token`` and ``encoder.pos_embedding``.

The encoder receives ``u = [c; P(x)]`` (the class token ``c`` at position 0) and computes ``u + E``, so with
``g_i = ∂L_i/∂u_i`` (B, S, D) the per-sample gradients are ``∂L_i/∂E = g_i`` and ``∂L_i/∂c = g_{i,0}``
(Dosovitskiy et al., ICLR 2021; docs/per_sample.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gradtrust.per_sample.registry import Rule, RuleContext, is_class, register_rule

_PATH = "torchvision.models.vision_transformer"


@register_rule(f"{_PATH}.VisionTransformer")
def vit_embeddings_rule(module: nn.Module) -> VitEmbeddings | None:
    """The rule for a torchvision ViT whose encoder is torchvision's ``Encoder`` (which adds ``E``), else None."""
    encoder = getattr(module, "encoder", None)
    return VitEmbeddings() if encoder is not None and is_class(encoder, f"{_PATH}.Encoder") else None


class VitEmbeddings(Rule):
    """The class token and position embedding of a torchvision ViT (see the module docstring)."""

    covers = ("class_token", "encoder.pos_embedding")

    def entry(self, module: nn.Module) -> nn.Module:
        return module.get_submodule("encoder")

    def attach(self, name: str, module: nn.Module, ctx: RuleContext) -> list[Any]:
        prefix = f"{name}." if name else ""

        def pre_hook(encoder, args):
            u = args[0]
            if not (isinstance(u, torch.Tensor) and u.requires_grad):
                ctx.fail("the ViT encoder input does not depend on a captured layer")
                return

            def on_grad(g):
                gf = g.detach().float()
                ctx.sink(name, "class_token", gf[:, 0].square().sum(1))
                ctx.sink(f"{prefix}encoder", "pos_embedding", gf.flatten(1).square().sum(1))

            u.register_hook(ctx.when_active(on_grad))

        return [module.get_submodule("encoder").register_forward_pre_hook(pre_hook)]
