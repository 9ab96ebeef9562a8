"""Purview's rule for torchvision's shifted-window attention (Swin, Swin V2, Video Swin).

These modules call a functional attention with ``self.qkv.weight`` and friends, so no ``nn.Linear`` hook
fires. This rule runs the same attention decomposed, with the same operations in the same order, so the
output is the module's own, and hooks on ``u = x W_qkvᵀ + b``, on the logits and on ``y = o W_projᵀ + b`` give
every parameter's per-sample gradient (Liu et al., ICCV 2021 and CVPR 2022; Liu et al., CVPR 2022 for Video
Swin; docs/per_sample.md):

* ``qkv``, ``proj``: token-wise linear maps over the windows of sample ``i``,
  ``∂L_i/∂W = Σ_{w∈i} Σ_t g_{w,t} x_{w,t}ᵀ`` (norm in Gram form where cheaper), ``∂L_i/∂b = Σ g`` (V2 zeroes
  the key part of the qkv bias, whose gradient is then zero);
* ``relative_position_bias_table`` ``P`` (E, heads): the bias ``B[h,n,m] = P[idx(n,m), h]`` is added to every
  window's logits, so with ``G_i = Σ_{w∈i} ∂L_i/∂A_w`` (heads, N, N), ``∂L_i/∂P[e,h] = Σ_{idx(n,m)=e} G_i[h,n,m]``;
* V2's ``logit_scale`` ``s``: ``A = cos · exp(min(s, log 100)) + B``, so
  ``∂L_i/∂s_h = [s_h ≤ log 100] · exp(s_h) · Σ_{w∈i,n,m} G_{w,h,n,m} cos_{w,h,n,m}``;
* V2's continuous position bias ``B = 16 σ(gather(MLP(c)))`` from a fixed coordinate table ``c``: the bias
  does not depend on the input, so the MLP's per-sample gradients are its backward pass applied to each
  ``G_i``, in closed form for torchvision's ``Linear → ReLU → Linear`` (:func:`_continuous_bias_sq_norms`).

Any other use (training mode, an input of another rank, a different ``cpb_mlp``) leaves the module to
per-sample autograd as a unit.
"""

from __future__ import annotations

import math
from itertools import chain, product
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradtrust.per_sample.kernels.linear import linear_weight_sq_norms
from gradtrust.per_sample.registry import (
    Rule,
    RuleContext,
    UnsupportedForHooks,
    is_class,
    override_single_input,
    register_rule,
)

_IMAGE = "torchvision.models.swin_transformer"
_VIDEO = "torchvision.models.video.swin_transformer"
#: (torchvision module, class name) → (spatial dimensions, V2 cosine attention)
_KINDS = {(_IMAGE, "ShiftedWindowAttention"): (2, False), (_IMAGE, "ShiftedWindowAttentionV2"): (2, True),
          (_VIDEO, "ShiftedWindowAttention3d"): (3, False)}


def window_attention_kind(module: nn.Module) -> tuple[int, bool] | None:
    """(spatial dims, cosine attention) when ``module`` is one of torchvision's shifted-window attentions."""
    for (path, name), kind in _KINDS.items():
        if is_class(module, f"{path}.{name}"):
            return kind
    return None


@register_rule(*(f"{path}.{name}" for path, name in _KINDS))
def window_attention_rule(module: nn.Module) -> WindowAttention | None:
    """The rule for ``module`` when it is a torchvision shifted-window attention of the known form, else None."""
    kind = window_attention_kind(module)
    if kind is None:  # matched by exact class (name and module), so the forward is torchvision's
        return None
    known = {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias",
             *(("logit_scale", "cpb_mlp.0.weight", "cpb_mlp.0.bias", "cpb_mlp.2.weight") if kind[1]
               else ("relative_position_bias_table",))}
    if not set(n for n, _ in module.named_parameters()) <= known:
        return None
    if kind[1] and not _is_continuous_bias_mlp(getattr(module, "cpb_mlp", None)):
        return None
    return WindowAttention(module, *kind)


class WindowAttention(Rule):
    """Every parameter of a torchvision shifted-window attention, in closed form (see the module docstring)."""

    def __init__(self, module: nn.Module, dims: int, cosine: bool):
        self.dims, self.cosine = dims, cosine
        self.covers = tuple(name for name, _ in module.named_parameters())

    def attach(self, name: str, module: nn.Module, ctx: RuleContext) -> list[Any]:
        prefix = f"{name}." if name else ""

        def put(dotted: str, value: torch.Tensor) -> None:
            owner, _, leaf = f"{prefix}{dotted}".rpartition(".")
            ctx.sink(owner, leaf, value)

        return override_single_input(name, module, lambda x: x.dim() == self.dims + 2,
                                     lambda x: self._forward(module, x, put, ctx.when_active), ctx)

    def _geometry(self, module: Any, x: torch.Tensor) -> tuple[list[int], list[int], list[int], torch.Tensor]:
        """(window, shift, padding per spatial dim, relative-position bias) exactly as torchvision's forward."""
        size = list(x.shape[1:-1])
        window, shift = list(module.window_size), list(module.shift_size)
        if self.dims == 3:  # the window shrinks to a smaller input, and then does not shift (video Swin)
            for i in range(3):
                if size[i] <= window[i]:
                    window[i], shift[i] = size[i], 0
            bias = module.get_relative_position_bias(window)
        else:
            bias = module.get_relative_position_bias()
        pad = [(window[i] - size[i] % window[i]) % window[i] for i in range(self.dims)]
        if self.dims == 2:  # a window covering the padded map does not shift (image Swin)
            for i in range(2):
                if window[i] >= size[i] + pad[i]:
                    shift[i] = 0
        return window, shift, pad, bias

    def _forward(self, module: Any, x: torch.Tensor, put, gate) -> torch.Tensor:
        d = self.dims
        batch, channels = x.shape[0], x.shape[-1]
        size = list(x.shape[1:-1])
        window, shift, pad, rel_bias = self._geometry(module, x)
        h = F.pad(x, (0, 0, *chain.from_iterable((0, p) for p in reversed(pad))))
        padded = list(h.shape[1:-1])
        shifted = sum(shift) > 0
        if shifted:
            h = torch.roll(h, shifts=tuple(-s for s in shift), dims=tuple(range(1, d + 1)))
        counts = [padded[i] // window[i] for i in range(d)]
        num_windows, tokens = math.prod(counts), math.prod(window)
        h = h.view(batch, *chain.from_iterable(zip(counts, window, strict=True)), channels)
        h = h.permute(0, *[1 + 2 * i for i in range(d)], *[2 + 2 * i for i in range(d)], 2 * d + 1)
        xw = h.reshape(batch * num_windows, tokens, channels)

        heads = module.num_heads
        qkv_bias = module.qkv.bias
        if self.cosine and qkv_bias is not None:  # Swin V2 has no key bias
            qkv_bias = qkv_bias.clone()
            length = qkv_bias.numel() // 3
            qkv_bias[length:2 * length].zero_()
        u = F.linear(xw, module.qkv.weight, qkv_bias)
        qkv = u.reshape(xw.size(0), xw.size(1), 3, heads, channels // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        cos = scale = None
        if self.cosine:
            cos = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
            scale = torch.clamp(module.logit_scale, max=math.log(100.0)).exp()
            attn = cos * scale
        else:
            q = q * (channels // heads) ** -0.5
            attn = q.matmul(k.transpose(-2, -1))
        logits = attn + rel_bias
        attn = logits
        if shifted:
            mask = _shift_mask(xw, padded, window, shift)
            attn = attn.view(batch, num_windows, heads, tokens, tokens)
            attn = attn + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, heads, tokens, tokens)
        attn = F.softmax(attn, dim=-1)
        attn = F.dropout(attn, p=module.attention_dropout, training=False)
        o = attn.matmul(v).transpose(1, 2).reshape(xw.size(0), xw.size(1), channels)
        y = F.linear(o, module.proj.weight, module.proj.bias)
        out = F.dropout(y, p=module.dropout, training=False)

        out = out.view(batch, *counts, *window, channels)
        out = out.permute(0, *chain.from_iterable((1 + i, 1 + d + i) for i in range(d)), 2 * d + 1)
        out = out.reshape(batch, *padded, channels)
        if shifted:
            out = torch.roll(out, shifts=tuple(shift), dims=tuple(range(1, d + 1)))
        crop = (slice(None),) + tuple(slice(0, s) for s in size)
        out = out[crop].contiguous()

        self._hook(module, put, gate, batch, xw, u, o, y, logits, cos, scale)
        return out

    def _hook(self, module: Any, put, gate, batch: int, xw: torch.Tensor, u: torch.Tensor, o: torch.Tensor,
              y: torch.Tensor, logits: torch.Tensor, cos: torch.Tensor | None, scale: torch.Tensor | None) -> None:
        xd, od = xw.detach(), o.detach()
        saved = [(t, t._version) for t in (xd, od)]
        cos_d = cos.detach() if cos is not None else None
        qkv_bias, proj_bias = module.qkv.bias is not None, module.proj.bias is not None

        def check():
            if any(t._version != version for t, version in saved):
                raise UnsupportedForHooks("an input of a window attention's projection was modified in place")

        def per_sample_tokens(t: torch.Tensor) -> torch.Tensor:  # (B·nW, N, F) → (B, nW·N, F): sample-major
            return t.reshape(batch, -1, t.shape[-1])

        def on_u(g):
            check()
            put("qkv.weight", linear_weight_sq_norms(per_sample_tokens(xd), per_sample_tokens(g)))
            if qkv_bias:
                grad = per_sample_tokens(g).float().sum(1)
                if self.cosine:
                    length = grad.shape[1] // 3
                    grad[:, length:2 * length] = 0
                put("qkv.bias", grad.square().sum(1))

        def on_y(g):
            check()
            put("proj.weight", linear_weight_sq_norms(per_sample_tokens(od), per_sample_tokens(g)))
            if proj_bias:
                put("proj.bias", per_sample_tokens(g).float().sum(1).square().sum(1))

        def on_logits(g):
            heads, tokens = g.shape[1], g.shape[2]
            per_window = g.reshape(batch, -1, heads, tokens, tokens)
            bias_grad = per_window.sum(1)  # G_i: the bias is added to every window of sample i
            if self.cosine:
                assert cos_d is not None and scale is not None
                scale_grad = (per_window.float() * cos_d.reshape(per_window.shape).float()).flatten(3).sum(3).sum(1)
                s = module.logit_scale.detach().reshape(-1)
                factor = torch.where(s <= math.log(100.0), scale.detach().reshape(-1), torch.zeros_like(s))
                put("logit_scale", (scale_grad * factor.float()).square().sum(1))
                for key, value in _continuous_bias_sq_norms(module, bias_grad).items():
                    put(key, value)
            else:
                index = _bias_index(module, tokens)
                table = module.relative_position_bias_table
                grads = torch.zeros(batch, heads, table.shape[0], dtype=torch.float32, device=g.device)
                grads.index_add_(2, index, bias_grad.reshape(batch, heads, -1).float())
                put("relative_position_bias_table", grads.square().sum((1, 2)))

        u.register_hook(gate(on_u))  # gate: nothing outside Purview's backward (RuleContext.when_active)
        y.register_hook(gate(on_y))
        logits.register_hook(gate(on_logits))


def _bias_index(module: Any, tokens: int) -> torch.Tensor:
    """The flat table row of each (query, key) pair, as torchvision's ``_get_relative_position_bias`` reads it."""
    index = module.relative_position_index
    if index.dim() == 2:  # video Swin keeps it square and takes the window's corner
        index = index[:tokens, :tokens]
    return index.flatten()


def _continuous_bias_sq_norms(module: Any, bias_grad: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample ``‖∂L_i/∂θ‖²`` of Swin V2's continuous-position-bias MLP from ``G_i`` (B, heads, N, N).

    ``B = 16 σ(P)``, ``P[h,n,m] = T[idx(n,m), h]``, ``T = relu(c W₁ᵀ + b₁) W₂ᵀ`` from the fixed coordinates
    ``c`` (E, 2); none of it depends on the input, so with ``∂L_i/∂P = 16 σ(P)(1 − σ(P)) ⊙ G_i``,
    ``∂L_i/∂T[e] = Σ_{idx(n,m)=e} ∂L_i/∂P[·,n,m]``, ``∂L_i/∂W₂ = (∂L_i/∂T)ᵀ h``,
    ``∂L_i/∂a = (∂L_i/∂T) W₂ ⊙ [a > 0]`` (``a`` the pre-activation, ``h = relu(a)``),
    ``∂L_i/∂W₁ = (∂L_i/∂a)ᵀ c`` and ``∂L_i/∂b₁ = Σ_e ∂L_i/∂a[e]`` (Liu et al., CVPR 2022; docs/per_sample.md).
    """
    first, _, last = module.cpb_mlp
    heads, tokens = bias_grad.shape[1], bias_grad.shape[2]
    coords = module.relative_coords_table.reshape(-1, 2).float()
    with torch.no_grad():
        pre = F.linear(coords, first.weight.float(), None if first.bias is None else first.bias.float())
        hidden = torch.relu(pre)
        table = F.linear(hidden, last.weight.float())  # (E, heads)
        index = _bias_index(module, tokens)
        sigma = torch.sigmoid(table[index].T.reshape(heads, tokens * tokens))
        grad_p = bias_grad.float().reshape(-1, heads, tokens * tokens) * (16 * sigma * (1 - sigma))
        grad_t = torch.zeros(grad_p.shape[0], heads, table.shape[0], dtype=torch.float32, device=grad_p.device)
        grad_t.index_add_(2, index, grad_p)  # (B, heads, E)
        out = {"cpb_mlp.2.weight": torch.matmul(grad_t, hidden).flatten(1).square().sum(1)}
        grad_a = torch.matmul(grad_t.transpose(1, 2), last.weight.float()) * (pre > 0)  # (B, E, hidden)
        out["cpb_mlp.0.weight"] = torch.matmul(grad_a.transpose(1, 2), coords).flatten(1).square().sum(1)
        if first.bias is not None:
            out["cpb_mlp.0.bias"] = grad_a.sum(1).square().sum(1)
    return out


def _is_continuous_bias_mlp(mlp: Any) -> bool:
    """torchvision's ``cpb_mlp``: ``Linear(2, h) → ReLU → Linear(h, heads, bias=False)``."""
    return (isinstance(mlp, nn.Sequential) and len(mlp) == 3 and type(mlp[0]) is nn.Linear
            and type(mlp[1]) is nn.ReLU and type(mlp[2]) is nn.Linear and mlp[2].bias is None)


def _shift_mask(like: torch.Tensor, padded: list[int], window: list[int], shift: list[int]) -> torch.Tensor:
    """torchvision's attention mask for shifted windows (0 within a region, −100 across regions), any dims."""
    d = len(padded)
    mask = like.new_zeros(padded)
    slices = [((0, -window[i]), (-window[i], -shift[i]), (-shift[i], None)) for i in range(d)]
    for count, region in enumerate(product(*slices)):  # torchvision's loop order: the first dimension outermost
        mask[tuple(slice(a, b) for a, b in region)] = count
    split = list(chain.from_iterable((padded[i] // window[i], window[i]) for i in range(d)))
    mask = mask.view(*split).permute(*[2 * i for i in range(d)], *[2 * i + 1 for i in range(d)])
    mask = mask.reshape(math.prod(split[0::2]), math.prod(window))
    mask = mask.unsqueeze(1) - mask.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
