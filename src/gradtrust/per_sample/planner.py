"""Who provides each parameter's per-sample squared gradient norm on Purview's hook path.

Every parameter tensor of the model gets exactly one *owner* (docs/per_sample.md):

* a **layer** (``nn.Linear``, ``ConvNd``, a norm layer): closed or Gram forms from the layer's input and
  output gradient (:mod:`gradtrust.per_sample.layers`);
* a **rule**: a known use of a parameter outside such a layer, read from hooks on the activations it
  touches (:class:`VitEmbeddings`: class token and position embedding of torchvision's ViT;
  :class:`LayerScale`: ConvNeXt's ``γ ⊙ block(x)``);
* a **unit**: the smallest submodule owning a parameter nothing else covers (a relative-position bias table,
  an attention in-projection…). Only that submodule goes through per-sample autograd: ``torch.func.vmap``
  of its vector-Jacobian product, sample by sample from the input it received and the gradient of its
  output (:func:`unit_sq_norms`), else one ``torch.autograd.grad`` per sample. The run reports these units.

A parameter whose owner would be the whole model leaves no cheaper way than per-sample autograd of the whole
model, which :class:`~gradtrust.scores.passes.BatchPasses` then takes.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradtrust.nn.cache import submodules
from gradtrust.per_sample import layers as per_sample
from gradtrust.per_sample.layers import UnsupportedForHooks

#: sink(module name, parameter attribute, (B,) squared norms)
Sink = Callable[[str, str, torch.Tensor], None]
#: fail(why): the hook path cannot cover this model (said in the forward pass, raised when the norms are read)
Fail = Callable[[str], None]
#: as_unit(name, module, args, kwargs, output): treat this call of the module as a per-sample-autograd unit
AsUnit = Callable[[str, nn.Module, tuple, dict, Any], None]


@dataclass(frozen=True)
class RuleContext:
    """What a rule's hooks report to, and the settings of this forward pass's norms."""

    sink: Sink
    fail: Fail
    as_unit: AsUnit
    #: whether the backward pass now running is Purview's: another one through the same graph (ODIN's input
    #: gradient) fires the same tensor hooks, and a rule with costly norms skips them then
    active: Callable[[], bool] = lambda: True
    chunk_bytes: int = per_sample.DEFAULT_CHUNK_BYTES
    conv_strategy: str | None = None  # forces how convolution norms are computed (ScoreOptions.conv_strategy)

    def when_active(self, hook: Callable[[torch.Tensor], None]) -> Callable[[torch.Tensor], None]:
        """``hook`` as a tensor hook that does nothing outside Purview's backward pass."""

        def gated(g: torch.Tensor) -> None:
            if self.active():
                hook(g)

        return gated


def _is_torchvision(module: nn.Module, module_path: str, class_name: str) -> bool:
    """``module`` is torchvision's ``class_name`` from ``module_path`` (by name: the core does not import it)."""
    kind = type(module)
    return kind.__name__ == class_name and kind.__module__ == module_path


class Rule:
    """A known use of some parameters of ``module`` whose per-sample gradients hooks on activations give."""

    #: attributes (relative to the module, dotted) of the parameters this rule covers
    covers: tuple[str, ...] = ()

    def entry(self, module: nn.Module) -> nn.Module:
        """The submodule at whose input the rule first needs gradients (the recorded graph may start there)."""
        return module

    def attach(self, name: str, module: nn.Module, ctx: RuleContext) -> list[Any]:
        """Install the hooks; they call ``ctx.sink`` with each covered parameter's norms. Returns the handles."""
        raise NotImplementedError


class VitEmbeddings(Rule):
    """torchvision ``VisionTransformer``: ``class_token`` and ``encoder.pos_embedding``.

    The encoder receives ``u = [c; P(x)]`` (the class token ``c`` at position 0) and computes ``u + E``, so
    with ``g_i = ∂L_i/∂u_i`` (B, S, D) the per-sample gradients are ``∂L_i/∂E = g_i`` and
    ``∂L_i/∂c = g_{i,0}`` (Dosovitskiy et al., ICLR 2021; docs/per_sample.md).
    """

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


class LayerScale(Rule):
    """torchvision ``CNBlock`` (ConvNeXt): ``out = γ ⊙ y + x`` with ``y = block(x)``, ``γ`` (C, 1, 1).

    With ``g_i = ∂L_i/∂out_i``: ``∂L_i/∂γ_c = Σ_{h,w} g_{i,c,h,w} y_{i,c,h,w}`` (Liu et al., CVPR 2022;
    docs/per_sample.md). Stochastic depth is the identity in eval mode.
    """

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


class SelfAttention(Rule):
    """``nn.MultiheadAttention`` used as self-attention (``query is key is value``, no masks, eval mode).

    During the capture its forward runs decomposed, with the same arithmetic: ``u = x W_inᵀ + b_in`` split
    into q, k, v per head, ``o = softmax(q kᵀ/√d) v`` (``F.scaled_dot_product_attention``),
    ``y = o W_outᵀ + b_out``. Both projections are linear maps applied token-wise, so their per-sample
    gradients are those of ``nn.Linear`` on tokens, ``∂L_i/∂W_in = Σ_t g^u_{i,t} x_{i,t}ᵀ``, with norms by the
    Gram ("ghost") form where cheaper (Vaswani et al., NeurIPS 2017; Li et al., ICLR 2022;
    docs/per_sample.md). Any other use (masks, cross-attention…) makes the module a per-sample-autograd unit.
    """

    def __init__(self, module: nn.Module):
        names = ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
        self.covers = tuple(n for n in names if _get(module, n) is not None)

    def attach(self, name: str, module: nn.Module, ctx: RuleContext) -> list[Any]:
        mha = module
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"expected nn.MultiheadAttention, got {type(mha).__name__}")
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
                    ctx.sink(name, "in_proj_weight", per_sample.linear_weight_sq_norms(xd, g))
                    ctx.sink(name, "in_proj_bias", per_sample._as_tokens(g).sum(1).square().sum(1))

                def on_y(g):
                    ctx.sink(f"{name}.out_proj", "weight", per_sample.linear_weight_sq_norms(od, g))
                    ctx.sink(f"{name}.out_proj", "bias", per_sample._as_tokens(g).sum(1).square().sum(1))

                u.register_hook(ctx.when_active(on_u))
                y.register_hook(ctx.when_active(on_y))
            else:
                ctx.fail(f"{name!r}: the attention input is not in the recorded graph")
            return (y if mha.batch_first else y.transpose(0, 1)), None

        return [_ForwardOverride(mha, forward)]


class _ForwardOverride:
    """Replaces ``module.forward`` until :meth:`remove` (a handle like a hook's)."""

    def __init__(self, module: nn.Module, forward: Callable[..., Any]):
        self.module = module
        module.forward = forward  # an instance attribute shadows the method until remove()

    def remove(self) -> None:
        self.module.__dict__.pop("forward", None)


def override_single_input(name: str, module: nn.Module, fits: Callable[[torch.Tensor], bool],
                          closed_form: Callable[[torch.Tensor], torch.Tensor], ctx: RuleContext) -> list[Any]:
    """Handles that make ``module(x)`` run ``closed_form(x)`` (a rule's decomposed forward, which reports its
    norms) while Purview's forward is recorded. A call outside the rule's form (training mode, or ``fits(x)``
    false) runs the module's own forward and makes that call a per-sample-autograd unit; an input outside
    the recorded graph runs it too, and ``ctx.fail`` takes the hook path off this batch (the norms would be
    missing)."""
    original = type(module).forward.__get__(module)

    def forward(x):
        if module.training or not isinstance(x, torch.Tensor) or not fits(x):
            output = original(x)
            ctx.as_unit(name, module, (x,), {}, output)
            return output
        if not x.requires_grad:
            ctx.fail(f"{name!r}: the attention input is not in the recorded graph")
            return original(x)
        return closed_form(x)

    return [_ForwardOverride(module, forward)]


def _get(module: nn.Module, dotted: str) -> Any:
    for part in dotted.split("."):
        module = getattr(module, part, None)  # type: ignore[assignment]
        if module is None:
            return None
    return module


def _rule_for(module: nn.Module) -> Rule | None:
    if type(module) is nn.MultiheadAttention:
        return SelfAttention(module)
    if _is_torchvision(module, "torchvision.models.vision_transformer", "VisionTransformer"):
        encoder = getattr(module, "encoder", None)
        if encoder is not None and _is_torchvision(encoder, "torchvision.models.vision_transformer", "Encoder"):
            return VitEmbeddings()
    if _is_torchvision(module, "torchvision.models.convnext", "CNBlock"):
        return LayerScale()
    from gradtrust.per_sample.conv_batch_norm import conv_batch_norm_rule  # imports this module
    from gradtrust.per_sample.maxvit_attention import maxvit_attention_rule  # imports this module
    from gradtrust.per_sample.window_attention import window_attention_rule  # imports this module

    return conv_batch_norm_rule(module) or window_attention_rule(module) or maxvit_attention_rule(module)


@dataclass
class PurviewPlan:
    """The owner of every parameter: hooked layers, rules and per-sample-autograd units, by module name."""

    layers: dict[str, nn.Module] = field(default_factory=dict)
    rules: dict[str, tuple[nn.Module, Rule]] = field(default_factory=dict)
    units: dict[str, nn.Module] = field(default_factory=dict)
    #: parameter name → (owner module name, key the owner's norms are reported under)
    columns: dict[str, tuple[str, str]] = field(default_factory=dict)


# model → (its structure when planned, the plan): planning walks every module and parameter by name (2 ms on
# mobilenet_v3_small, a tenth of its forward at batch 8); the structure is a cheaper walk, by identity.
_PLANS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], PurviewPlan]] = weakref.WeakKeyDictionary()


def _structure(model: nn.Module) -> tuple[int, ...]:
    """The identity and mode of every submodule and the identity of every parameter of ``model``: a replaced
    one, or a module switched between training and eval mode (a BatchNorm in training mode normalises by
    batch statistics, which the plan's layers and rules do not cover), changes it."""
    ids: list[int] = []
    for module in submodules(model):
        ids += (id(module), module.training)
        ids += [id(p) for p in module._parameters.values()]
    return tuple(ids)


def plan_parameters(model: nn.Module) -> PurviewPlan:
    """Assign every parameter of ``model`` to a layer, a rule or a unit (see the module docstring); the plan
    is kept for the model until a submodule or parameter is replaced or a module changes mode (``_structure``).

    Raises :class:`UnsupportedForHooks` when some parameter could only be covered by the whole model, and
    for TorchScript modules (their compiled forward never calls the Python hooks the plan relies on).
    """
    structure = _structure(model)
    cached = _PLANS.get(model)
    if cached is not None and cached[0] == structure:
        return cached[1]
    plan = _plan_parameters(model)
    _PLANS[model] = (structure, plan)
    return plan


def _plan_parameters(model: nn.Module) -> PurviewPlan:
    if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        raise UnsupportedForHooks("a TorchScript module runs in the TorchScript interpreter, which never calls "
                                  "the Python hooks per-sample gradient norms need")
    names, owners = per_sample.parameter_owners(model)
    plan = PurviewPlan()
    covered: set[str] = set()
    for module_name, module in model.named_modules():
        rule = _rule_for(module)
        if rule is None:
            continue
        prefix = f"{module_name}." if module_name else ""
        plan.rules[module_name] = (module, rule)
        for attr in rule.covers:
            owner, _, leaf = f"{prefix}{attr}".rpartition(".")
            plan.columns[f"{prefix}{attr}"] = (owner, leaf)
            covered.add(f"{prefix}{attr}")
    unit_names: set[str] = set()
    for name in names:
        module_name, module, attr = owners[name]
        if name in covered or (attr in ("weight", "bias") and per_sample.supports_hooks(module)):
            continue
        if not module_name:
            raise UnsupportedForHooks(f"parameter {name!r} ({type(module).__name__}.{attr}) belongs to the model "
                                      "itself and no rule covers it")
        unit_names.add(module_name)
    # the outermost units only: a unit covers everything inside it
    outer = sorted(n for n in unit_names if not any(n.startswith(f"{o}.") for o in unit_names))
    plan.units = {n: model.get_submodule(n) for n in outer}
    for name in names:
        if name in covered:
            continue
        module_name, module, attr = owners[name]
        unit = next((u for u in outer if name.startswith(f"{u}.")), None)
        if unit is None:
            plan.layers[module_name] = module
        plan.columns[name] = (module_name, attr)
    return plan


def _first_tensor(output: Any) -> torch.Tensor:
    """The tensor output of a unit: the output itself, or the first element of a tuple whose other elements
    carry no gradient (``nn.MultiheadAttention`` returns ``(out, None)`` with ``need_weights=False``)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        if all(not (isinstance(o, torch.Tensor) and o.requires_grad) for o in output[1:]):
            return output[0]
    raise UnsupportedForHooks(f"a unit returned {type(output).__name__} with several differentiable outputs")


@dataclass
class UnitCall:
    """What a unit received in the forward pass."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    versions: tuple[int, ...]


def unit_sq_norms(unit: nn.Module, call: UnitCall, g: torch.Tensor, chunk_bytes: int) -> tuple[dict[str, torch.Tensor],
                                                                                                str]:
    """``‖∂L_i/∂θ‖²`` per sample for every parameter ``θ`` of ``unit`` (B,) float32, and how ("vmap"/"loop").

    ``∂L_i/∂θ = J_θ(f(x_i))ᵀ g_i``: the vector-Jacobian product of the unit's function at sample ``i``'s
    input with the gradient of its output, by ``torch.func.vmap`` over samples (chunks bounded by
    ``chunk_bytes`` of per-sample gradients), else one ``torch.autograd.grad`` per sample. Exact as long as
    the unit treats samples independently (eval mode), as the whole hook path assumes.
    """
    from torch.func import functional_call, vjp, vmap

    batch = g.shape[0]
    params = {n: p.detach() for n, p in unit.named_parameters()}
    batched = [i for i, a in enumerate(call.args) if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == batch]
    if any(isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == batch for v in call.kwargs.values()):
        raise UnsupportedForHooks("a unit received a per-sample tensor as a keyword argument")

    def run(theta, xs):
        args = list(call.args)
        for i, x in zip(batched, xs, strict=True):
            args[i] = x
        return _first_tensor(functional_call(unit, theta, tuple(args), dict(call.kwargs)))

    def one(xs, gi):
        pullback = vjp(lambda theta: run(theta, [x.unsqueeze(0) for x in xs]), params)[1]
        (grads,) = pullback(gi.unsqueeze(0).to(run_dtype))
        return {n: gr.float().square().sum() for n, gr in grads.items()}

    run_dtype = g.dtype
    inputs = [call.args[i] for i in batched]
    per_sample_bytes = 4 * max(1, sum(p.numel() for p in params.values())) * 3
    step = max(1, min(batch, chunk_bytes // per_sample_bytes))
    try:
        parts = [vmap(one)([x[s:s + step] for x in inputs], g[s:s + step]) for s in range(0, batch, step)]
        return {n: torch.cat([p[n] for p in parts]) for n in params}, "vmap"
    except UnsupportedForHooks:
        raise
    except Exception:  # noqa: BLE001 - any vmap limitation: the exact per-sample loop on this unit alone
        pass
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in params}
    theta = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    for s in range(batch):
        with torch.enable_grad():
            out = run(theta, [x[s:s + 1] for x in inputs])
            grads = torch.autograd.grad(out, list(theta.values()), g[s:s + 1], allow_unused=True)
        for n, gr in zip(theta, grads, strict=True):
            rows[n].append(torch.zeros((), device=g.device) if gr is None else gr.float().square().sum())
    return {n: torch.stack(r) for n, r in rows.items()}, "loop"


class OwnerCapture:
    """Hooks for the rules and units of a :class:`PurviewPlan` (the layers use ``per_sample.LayerCapture``).

    While :attr:`active`, the backward pass fills :attr:`norms` with {(owner name, key): (B,) norms} and
    :attr:`fallback` with {unit name: "vmap" | "loop"}.
    """

    def __init__(self, plan: PurviewPlan, chunk_bytes: int, conv_strategy: str | None = None):
        self.plan = plan
        self.chunk_bytes = chunk_bytes
        self.conv_strategy = conv_strategy
        self.active = False
        # units and rule modules must run exactly once per forward pass (a second call would overwrite the first)
        self.calls: dict[str, int] = {name: 0 for name in [*plan.units, *plan.rules]}
        self.norms: dict[tuple[str, str], torch.Tensor] = {}
        self.fallback: dict[str, str] = {}
        self.error: str | None = None
        self._handles: list[Any] = []

    def __enter__(self) -> OwnerCapture:
        ctx = RuleContext(self._sink, self._fail, self._as_unit, lambda: self.active, self.chunk_bytes,
                          self.conv_strategy)
        for name, (module, rule) in self.plan.rules.items():
            self._handles += rule.attach(name, module, ctx)
            self._handles.append(module.register_forward_hook(self._count(name)))
        for name, unit in self.plan.units.items():
            self._handles.append(unit.register_forward_hook(self._unit_hook(name), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _count(self, name: str):
        def hook(module, args, output):
            self.calls[name] += 1

        return hook

    def _fail(self, why: str) -> None:
        self.error = self.error or why

    def _sink(self, owner: str, key: str, value: torch.Tensor) -> None:
        if self.active:
            self.norms[(owner, key)] = value

    def _unit_hook(self, name: str):
        def hook(module, args, kwargs, output):
            self.calls[name] += 1
            self._as_unit(name, module, args, kwargs, output)

        return hook

    def _as_unit(self, name: str, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        """On the backward pass, per-sample autograd of this call of ``module`` gives its parameters' norms."""
        detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        call = UnitCall(detached, dict(kwargs), tuple(a._version for a in detached if isinstance(a, torch.Tensor)))
        try:
            out = _first_tensor(output)
        except UnsupportedForHooks as exc:
            self._fail(str(exc))
            return
        if not out.requires_grad:
            self._fail(f"the output of {name!r} is not in the recorded graph")
            return

        def on_grad(g):
            if not self.active:
                return
            if tuple(a._version for a in call.args if isinstance(a, torch.Tensor)) != call.versions:
                raise UnsupportedForHooks(f"the input of {name!r} was modified in place after use")
            norms, how = unit_sq_norms(module, call, g.detach(), self.chunk_bytes)
            for key, value in norms.items():  # "out_proj.weight" → ("<name>.out_proj", "weight")
                owner, _, attr = f"{name}.{key}".rpartition(".")
                self.norms[(owner, attr)] = value
            self.fallback[name] = how

        out.register_hook(on_grad)
