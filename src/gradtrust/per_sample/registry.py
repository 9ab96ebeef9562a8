"""The two registries of :mod:`gradtrust.per_sample`: layer kernels by module type, rules by module pattern.

A **kernel** (``@register_kernel(nn.Linear)`` on a :class:`Kernel` subclass, as Opacus registers grad
samplers) gives a layer's own parameters their per-sample gradients from its input and output gradient. A
**rule** (``@register_rule(nn.MultiheadAttention)`` on a callable ``module → Rule | None``) covers parameters
used outside such a layer with hooks on the activations they touch. Both are looked up by the module's exact
class, by its qualified name (so the core never imports torchvision), or, with ``subclasses=True``, by a base
class whose ``forward`` the module's class keeps. :mod:`.kernels` and :mod:`.rules` register theirs on import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from gradtrust.errors import ModelError

#: Upper bound, in bytes, on one materialised block of per-sample weight gradients.
DEFAULT_CHUNK_BYTES = 256 * 2**20


class UnsupportedForHooks(ModelError):
    """The hook path cannot compute this model's per-sample gradients exactly; use another backend
    (``backend="auto"`` takes per-sample autograd by itself)."""


def class_path(kind: type) -> str:
    """``"module.ClassName"`` of a class: the name a registration may use instead of the class itself."""
    return f"{kind.__module__}.{kind.__name__}"


def is_class(module: nn.Module, path: str) -> bool:
    """Whether ``module``'s class is exactly the one named ``path`` (``"torchvision.models.convnext.CNBlock"``)."""
    return class_path(type(module)) == path


Entry = TypeVar("Entry")


def _lookup(registry: dict[type | str, tuple[Entry, bool]], module: nn.Module) -> Entry | None:
    kind = type(module)
    found = registry.get(kind) or registry.get(class_path(kind))
    if found is not None:
        return found[0]
    for base in kind.__mro__[1:]:
        entry = registry.get(base)
        if entry is not None and entry[1] and getattr(kind, "forward", None) is getattr(base, "forward", None):
            return entry[0]
    return None


class Kernel:
    """Per-sample gradients of one layer type's own parameters from its input ``a`` and output gradient ``g``.

    Subclasses implement :meth:`grads`; :meth:`sq_norms` defaults to the squared norms of those gradients,
    formed in blocks of samples of at most ``chunk_bytes``, and is overridden where a closed or Gram form is
    cheaper. :meth:`supports` says whether this module's configuration is covered exactly.
    """

    def supports(self, module: nn.Module) -> bool:
        return True

    def grads(self, module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
        """``∂L_i/∂θ`` for each parameter ``θ`` of the module itself: {attribute: (B, *θ.shape) float32}."""
        raise NotImplementedError

    def sq_norms(self, module: nn.Module, a: torch.Tensor, g: torch.Tensor, chunk_bytes: int,
                 conv_strategy: str | None) -> dict[str, torch.Tensor]:
        """``‖∂L_i/∂θ‖²`` per sample for each parameter of the module itself: {attribute: (B,) float32}."""
        per_sample_bytes = 4 * sum(p.numel() for p in module._parameters.values() if p is not None)  # (no name walk)
        step = max(1, chunk_bytes // max(per_sample_bytes, 1))
        parts: dict[str, list[torch.Tensor]] = {}
        for start in range(0, a.shape[0], step):
            for name, grad in self.grads(module, a[start:start + step], g[start:start + step]).items():
                parts.setdefault(name, []).append(grad.flatten(1).square().sum(1))
        return {name: torch.cat(chunks) for name, chunks in parts.items()}


_KERNELS: dict[type | str, tuple[Kernel, bool]] = {}

K = TypeVar("K", bound=type[Kernel])


def register_kernel(*kinds: type[nn.Module] | str, subclasses: bool = False) -> Callable[[K], K]:
    """Class decorator: an instance of the decorated :class:`Kernel` serves modules of ``kinds`` (classes or
    qualified class names), and with ``subclasses`` their subclasses that keep the registered ``forward``."""

    def decorator(cls: K) -> K:
        _KERNELS.update(dict.fromkeys(kinds, (cls(), subclasses)))
        return cls

    return decorator


def kernel_for(module: nn.Module) -> Kernel | None:
    """The registered kernel that covers ``module`` exactly, or None."""
    kernel = _lookup(_KERNELS, module)
    return kernel if kernel is not None and kernel.supports(module) else None


def supports_hooks(module: nn.Module) -> bool:
    """Whether the per-sample gradient of ``module``'s own parameters can be formed from (input, grad)."""
    return kernel_for(module) is not None


def _kernel(module: nn.Module) -> Kernel:
    kernel = kernel_for(module)
    if kernel is None:
        raise UnsupportedForHooks(f"no per-sample kernel covers {type(module).__name__} in this configuration")
    return kernel


def parameter_grads(module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample gradients of ``module``'s own parameters by its kernel, each (B, *param.shape) float32."""
    return _kernel(module).grads(module, a, g)


def parameter_sq_norms(module: nn.Module, a: torch.Tensor, g: torch.Tensor, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                       conv_strategy: str | None = None) -> dict[str, torch.Tensor]:
    """``‖∂L_i/∂θ‖²₂`` per sample for each of ``module``'s own parameters by its kernel: {name: (B,) float32}.

    Per-sample gradients are formed in blocks of at most ``chunk_bytes``; ``conv_strategy`` forces how
    convolution weight norms are computed (:mod:`gradtrust.per_sample.conv_strategy`)."""
    return _kernel(module).sq_norms(module, a, g, chunk_bytes, conv_strategy)


@dataclass(frozen=True)
class RuleContext:
    """What a rule's hooks report to, and the settings of this forward pass's norms."""

    #: sink(module name, parameter attribute, (B,) squared norms)
    sink: Callable[[str, str, torch.Tensor], None]
    #: fail(why): the hook path cannot cover this model (said in the forward pass, raised when the norms are read)
    fail: Callable[[str], None]
    #: as_unit(name, module, args, kwargs, output): treat this call of the module as a per-sample-autograd unit
    as_unit: Callable[[str, nn.Module, tuple, dict, Any], None]
    #: whether the backward pass now running is the norms' own: another one through the same graph (ODIN's
    #: input gradient) fires the same tensor hooks, and a rule with costly norms skips them then
    active: Callable[[], bool] = lambda: True
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    conv_strategy: str | None = None  # forces how convolution norms are computed (ScoreOptions.conv_strategy)

    def when_active(self, hook: Callable[[torch.Tensor], None]) -> Callable[[torch.Tensor], None]:
        """``hook`` as a tensor hook that does nothing outside the norms' own backward pass."""

        def gated(g: torch.Tensor) -> None:
            if self.active():
                hook(g)

        return gated


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


RuleFactory = Callable[[nn.Module], "Rule | None"]
_RULES: dict[type | str, tuple[RuleFactory, bool]] = {}
F = TypeVar("F", bound=RuleFactory)


def register_rule(*kinds: type[nn.Module] | str, subclasses: bool = False) -> Callable[[F], F]:
    """Decorator: ``factory(module)`` (a :class:`Rule` subclass, or a function returning a rule or None where
    the module is not of the rule's form) serves modules of ``kinds``, as :func:`register_kernel`."""

    def decorator(factory: F) -> F:
        _RULES.update(dict.fromkeys(kinds, (factory, subclasses)))
        return factory

    return decorator


def rule_for(module: nn.Module) -> Rule | None:
    """The rule covering some parameters of ``module``, or None."""
    factory = _lookup(_RULES, module)
    return None if factory is None else factory(module)


class ForwardOverride:
    """Replaces ``module.forward`` until :meth:`remove` (a handle like a hook's)."""

    def __init__(self, module: nn.Module, forward: Callable[..., Any]):
        self.module = module
        module.forward = forward  # an instance attribute shadows the method until remove()

    def remove(self) -> None:
        self.module.__dict__.pop("forward", None)


def override_single_input(name: str, module: nn.Module, fits: Callable[[torch.Tensor], bool],
                          closed_form: Callable[[torch.Tensor], torch.Tensor], ctx: RuleContext) -> list[Any]:
    """Handles that make ``module(x)`` run ``closed_form(x)`` (a rule's decomposed forward, which reports its
    norms) while the norms' forward is recorded. A call outside the rule's form (training mode, or ``fits(x)``
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

    return [ForwardOverride(module, forward)]
