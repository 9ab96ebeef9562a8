"""Purview's rule for torchvision MaxViT's ``RelativePositionalMultiHeadAttention``.

The module attends within the ``G`` partitions (windows or grid cells) of ``P`` tokens each, input and output
``[B, G, P, D]``. Its projections ``to_qkv`` and ``merge`` are ``nn.Linear`` modules the layer hooks own; the
only parameter they cannot see is the relative-position bias table ``T`` (E, heads): the bias
``Bias[h,n,m] = T[idx(n,m), h]`` is added to the logits ``A = q (k·D^{-1/2})ᵀ`` of every partition ``g``. This
rule runs the module's forward with the same operations in the same order, so the output is the module's own,
and hooks the logits ``A + Bias``: with ``G_i = Σ_g ∂L_i/∂(A + Bias)_{i,g}`` (heads, P, P),

    ∂L_i/∂T[e,h] = Σ_{idx(n,m)=e} G_i[h,n,m]

(a scatter-add over the flattened index; Tu et al., "MaxViT: Multi-Axis Vision Transformer", ECCV 2022;
docs/per_sample.md). Any other use (training mode, an input of another rank or length) leaves the module to
per-sample autograd as a unit.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradtrust.per_sample.registry import Rule, RuleContext, override_single_input, register_rule, supports_hooks

_KNOWN = {"to_qkv.weight", "to_qkv.bias", "merge.weight", "merge.bias", "relative_position_bias_table"}


@register_rule("torchvision.models.maxvit.RelativePositionalMultiHeadAttention")  # exact: torchvision's forward
def maxvit_attention_rule(module: nn.Module) -> MaxVitAttention | None:
    """The rule for ``module`` when it is torchvision's MaxViT attention of the known form, else None."""
    if not set(n for n, _ in module.named_parameters()) <= _KNOWN:
        return None
    projections = (getattr(module, "to_qkv", None), getattr(module, "merge", None))
    if not all(isinstance(p, nn.Module) and supports_hooks(p) for p in projections):
        return None
    return MaxVitAttention()


class MaxVitAttention(Rule):
    """``relative_position_bias_table`` of a MaxViT attention, in closed form (see the module docstring)."""

    covers = ("relative_position_bias_table",)

    def attach(self, name: str, module: nn.Module, ctx: RuleContext) -> list[Any]:
        return override_single_input(
            name, module, lambda x: x.dim() == 4 and x.shape[2] == module.max_seq_len,
            lambda x: _forward(module, x, lambda value: ctx.sink(name, "relative_position_bias_table", value),
                               ctx.when_active),
            ctx)


def _forward(module: Any, x: torch.Tensor, put, gate) -> torch.Tensor:
    """torchvision's forward, operation for operation, with a hook on the biased logits."""
    batch, groups, tokens, channels = x.shape
    heads, head_dim = module.n_heads, module.head_dim

    qkv = module.to_qkv(x)  # the nn.Linear modules themselves: their layer hooks own them
    q, k, v = (t.reshape(batch, groups, tokens, heads, head_dim).permute(0, 1, 3, 2, 4)
               for t in torch.chunk(qkv, 3, dim=-1))
    k = k * module.scale_factor
    dot_prod = torch.einsum("B G H I D, B G H J D -> B G H I J", q, k)
    pos_bias = module.get_relative_positional_bias()
    logits = dot_prod + pos_bias
    attn = F.softmax(logits, dim=-1)
    out = torch.einsum("B G H I J, B G H J D -> B G H I D", attn, v)
    out = out.permute(0, 1, 3, 2, 4).reshape(batch, groups, tokens, channels)
    out = module.merge(out)

    index = module.relative_position_index.reshape(-1)
    rows = module.relative_position_bias_table.shape[0]

    def on_logits(g):
        bias_grad = g.float().sum(1)  # G_i (B, heads, P, P): the bias is added to every partition of sample i
        grads = torch.zeros(batch, heads, rows, dtype=torch.float32, device=g.device)
        grads.index_add_(2, index, bias_grad.reshape(batch, heads, -1))
        put(grads.square().sum((1, 2)))

    logits.register_hook(gate(on_logits))  # gate: nothing outside Purview's backward pass
    return out
