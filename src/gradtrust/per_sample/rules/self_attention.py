"""``nn.MultiheadAttention`` used as self-attention (``query is key is value``, no masks, eval mode).

During the capture its forward runs decomposed, with the same arithmetic: ``u = x W_inᵀ + b_in`` split into
q, k, v per head, ``o = softmax(q kᵀ/√d) v``, ``y = o W_outᵀ + b_out``. Both projections are token-wise linear
maps, so their norms are those of ``nn.Linear`` on tokens (:mod:`gradtrust.per_sample.kernels.linear`; Vaswani
et al., NeurIPS 2017; docs/per_sample.md). Any other use (masks, cross-attention…) makes the module a unit.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from gradtrust.per_sample.kernels.linear import linear_weight_sq_norms, token_sum_sq_norms
from gradtrust.per_sample.registry import ForwardOverride, Rule, RuleContext, UnsupportedForHooks, register_rule


@register_rule(nn.MultiheadAttention)
class SelfAttention(Rule):
    """The projections of an ``nn.MultiheadAttention`` (see the module docstring)."""

    def __init__(self, module: nn.Module):
        names = ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
        self.covers = tuple(n for n in names if _get(module, n) is not None)

    def attach(self, name: str, module: nn.Module, ctx: RuleContext) -> list[Any]:
        mha = module
        if not isinstance(mha, nn.MultiheadAttention):
            raise UnsupportedForHooks(f"expected nn.MultiheadAttention, got {type(mha).__name__}")
        original = mha.forward

        def forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                    average_attn_weights=True, is_causal=False):
            simple = (query is key and key is value and key_padding_mask is None and attn_mask is None
                      and not need_weights and not is_causal and not mha.training and mha._qkv_same_embed_dim
                      and mha.bias_k is None and mha.add_zero_attn is False and query.dim() == 3)
            if not simple:
                kwargs = dict(key_padding_mask=key_padding_mask, need_weights=need_weights, attn_mask=attn_mask,
                              average_attn_weights=average_attn_weights, is_causal=is_causal)
                output = original(query, key, value, **kwargs)
                ctx.as_unit(name, mha, (query, key, value), kwargs, output)
                return output
            x = query if mha.batch_first else query.transpose(0, 1)  # (B, S, E)
            batch, tokens, embed = x.shape
            heads = mha.num_heads
            u = nn.functional.linear(x, mha.in_proj_weight, mha.in_proj_bias)
            q, k, v = (t.reshape(batch, tokens, heads, embed // heads).transpose(1, 2) for t in u.chunk(3, dim=-1))
            o = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, embed)
            y = nn.functional.linear(o, mha.out_proj.weight, mha.out_proj.bias)
            if u.requires_grad:
                xd, od = x.detach(), o.detach()

                def on_u(g):
                    ctx.sink(name, "in_proj_weight", linear_weight_sq_norms(xd, g))
                    ctx.sink(name, "in_proj_bias", token_sum_sq_norms(g))

                def on_y(g):
                    ctx.sink(f"{name}.out_proj", "weight", linear_weight_sq_norms(od, g))
                    ctx.sink(f"{name}.out_proj", "bias", token_sum_sq_norms(g))

                u.register_hook(ctx.when_active(on_u))
                y.register_hook(ctx.when_active(on_y))
            else:
                ctx.fail(f"{name!r}: the attention input is not in the recorded graph")
            return (y if mha.batch_first else y.transpose(0, 1)), None

        return [ForwardOverride(mha, forward)]


def _get(module: nn.Module, dotted: str) -> Any:
    for part in dotted.split("."):
        module = getattr(module, part, None)  # type: ignore[assignment]
        if module is None:
            return None
    return module
