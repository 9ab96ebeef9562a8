"""Who provides each parameter's per-sample squared gradient norm: one planner for every caller.

Every parameter tensor gets exactly one *owner* (docs/per_sample.md): a **layer** with a registered kernel
(:mod:`.kernels`), a **rule** for a known use outside such a layer (:mod:`.rules`), or a **unit**: the smallest
submodule owning a parameter nothing else covers, which alone goes through per-sample autograd
(:func:`.capture.unit_sq_norms`). A parameter whose owner would be the whole model makes :func:`plan_parameters`
raise :class:`UnsupportedForHooks`, and :func:`gradtrust.per_sample.sq_norms` takes the ``vmap`` or ``loop`` backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from gradtrust.nn.cache import cached
from gradtrust.per_sample import kernels, rules  # noqa: F401 - importing them registers every kernel and rule
from gradtrust.per_sample.registry import Rule, UnsupportedForHooks, rule_for, supports_hooks

#: The namespace of the plans in :mod:`gradtrust.nn.cache` (``gradtrust.nn.cache.clear(model, PLANS)``).
PLANS = "per_sample_plan"


def parameter_owners(model: nn.Module) -> tuple[list[str], dict[str, tuple[str, nn.Module, str]]]:
    """Parameter names in ``named_parameters()`` order and, for each, the module and attribute owning it."""
    names = [name for name, _ in model.named_parameters()]
    by_id = {id(p): name for name, p in model.named_parameters()}
    owners: dict[str, tuple[str, nn.Module, str]] = {}
    for module_name, module in model.named_modules():
        for attr, p in module.named_parameters(recurse=False):
            name = by_id.get(id(p))
            if name is not None and name not in owners:
                owners[name] = (module_name, module, attr)
    return names, owners


@dataclass
class Plan:
    """The owner of every planned parameter: kernel layers, rules and per-sample-autograd units, by module name."""

    #: the planned parameters, in ``named_parameters()`` order or the order asked for: the columns of the norms
    names: list[str] = field(default_factory=list)
    layers: dict[str, nn.Module] = field(default_factory=dict)
    rules: dict[str, tuple[nn.Module, Rule]] = field(default_factory=dict)
    units: dict[str, nn.Module] = field(default_factory=dict)
    #: parameter name → (owner module name, key the owner's norms are reported under)
    columns: dict[str, tuple[str, str]] = field(default_factory=dict)


def plan_parameters(model: nn.Module, params: Sequence[str] | None = None,
                    structure: tuple[int, ...] | None = None) -> Plan:
    """Assign every parameter of ``model`` (or only those named in ``params``) to a layer, a rule or a unit,
    kept in :mod:`gradtrust.nn.cache` (namespace :data:`PLANS`) while the model's structure stays (``structure``:
    its :func:`~gradtrust.nn.cache.structure_key` when the caller has it already). Raises
    :class:`UnsupportedForHooks` when some planned parameter could only be covered by the whole model, and for
    TorchScript modules (their compiled forward never calls the Python hooks the plan relies on).
    """
    key = None if params is None else tuple(dict.fromkeys(params))
    return cached(model, PLANS, key, lambda: _plan(model, key), structure)


def _plan(model: nn.Module, params: tuple[str, ...] | None) -> Plan:
    if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        raise UnsupportedForHooks("a TorchScript module runs in the TorchScript interpreter, which never calls "
                                  "the Python hooks per-sample gradient norms need")
    names, owners = parameter_owners(model)
    wanted = None if params is None else set(params)
    if params is not None:
        unknown = [name for name in params if name not in owners]
        if unknown:
            raise UnsupportedForHooks(f"{unknown[:3]} are not parameters of {type(model).__name__}")
        names = list(params)  # the caller's order
    plan = Plan(names=names)
    covered: set[str] = set()
    for module_name, module in model.named_modules():
        rule = rule_for(module)
        prefix = f"{module_name}." if module_name else ""
        if rule is None or (wanted is not None and not wanted.intersection(f"{prefix}{a}" for a in rule.covers)):
            continue
        plan.rules[module_name] = (module, rule)
        for attr in rule.covers:
            owner, _, leaf = f"{prefix}{attr}".rpartition(".")
            plan.columns[f"{prefix}{attr}"] = (owner, leaf)
            covered.add(f"{prefix}{attr}")
    unit_names: set[str] = set()
    for name in names:
        module_name, module, attr = owners[name]
        if name in covered or (attr in ("weight", "bias") and supports_hooks(module)):
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
