"""The registry of trust-score methods (timm style): the API, the CLI and the report list the same names.

A method is declared once, by :func:`register_method` (a decorator) with a :class:`MethodSpec`'s fields: the
passes it needs, its display name, formula, source and options. Registration order is the order of
``available_methods()``, of the CLI listing and of the report's columns.

**Plug-ins** (docs/methods.md) add methods and passes through the ``gradtrust.methods`` entry-point group: a
module that registers them on import, a :class:`MethodSpec`, or a function of no arguments. They load the
first time the registry is read, this package's own first (VOICE: the engine imports no capability, a
capability joins it as a plug-in does); one that fails to load is reported with a warning naming it.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from gradtrust import catalogue
from gradtrust.errors import RegistrationError, UnknownNameError
from gradtrust.scores.spec import MethodOutput, Param, Pass, PassSpec
from gradtrust.scores.view import BatchView


@dataclass(frozen=True)
class MethodSpec:
    """A registered trust score. Higher values always mean *more trustworthy*.

    Attributes:
        name: the registry name (``result[name]``, the results column, ``--methods``).
        fn: ``fn(batch: BatchView) -> MethodOutput``; reads only the passes in ``needs``.
        needs: the passes the method reads (``Pass`` members); ``Pass.FORWARD`` is always included. Reading
            any other raises :class:`~gradtrust.scores.view.UndeclaredPassError`.
        display_name: the name tables and figures show.
        summary: the formula, one sentence (``gradtrust methods`` prints it).
        source: the paper (and the release) the definition follows.
        params: the method's own options (a pass's options, e.g. ODIN's temperature, belong to the pass).
        applies: optional ``applies(batch) -> reason | None``: why the method does not apply to a model,
            beyond what its passes already check.
        resolve: optional ``resolve(batch, name, value) -> value``: the value of a parameter actually used
            (e.g. ``topk=None`` → ``min(10, C − 1)``), recorded in the manifest.
        in_paper: whether the GradTrust paper's table compares this method (the report's summary ranks
            GradTrust among these as well as among all methods).
        cuda_graph_safe: the method reads nothing but the logits and the final layer's input, so a CUDA-graph
            replay that refreshes those two tensors recomputes it exactly (:mod:`gradtrust.scores.graphs`).
        tags: free-form labels other capabilities select methods by (``"detection_baseline"``: the scalar
            baselines ``gradtrust detect`` compares by default).
    """

    name: str
    fn: Callable[[BatchView], MethodOutput]
    needs: frozenset[PassSpec]
    display_name: str
    summary: str
    source: str = ""
    params: tuple[Param, ...] = ()
    applies: Callable[[BatchView], str | None] | None = None
    resolve: Callable[[BatchView, str, Any], Any] | None = None
    in_paper: bool = False
    cuda_graph_safe: bool = False
    tags: frozenset[str] = frozenset()
    module: str = field(default="", compare=False)

    def __call__(self, batch: BatchView) -> MethodOutput:
        return self.fn(batch)

    @cached_property
    def parameter_names(self) -> tuple[str, ...]:
        """The options this method reads: its own, then those of the passes it needs (computed once: the
        engine asks for every method of every batch)."""
        names = [p.name for p in self.params]
        for needed in Pass:  # registration order, so the list is stable
            if needed in self.needs:
                names += [p.name for p in needed.params if p.name not in names]
        return tuple(names)


ENTRY_POINT_GROUP = "gradtrust.methods"

_REGISTRY: dict[str, MethodSpec] = {}
# The plug-in methods registration added to the catalogue (the built-ins are stated there).
_DESCRIBED: set[str] = set()
_PLUGINS_LOADED: list[bool] = []  # [True] once the entry points have been loaded


def register(spec: MethodSpec) -> MethodSpec:
    """Add a :class:`MethodSpec` to the registry (its name must be new)."""
    if not isinstance(spec, MethodSpec):
        raise RegistrationError(f"expected a MethodSpec, got {type(spec).__name__}")
    if not spec.name or not spec.name.isidentifier():
        raise RegistrationError(f"a method name must be a Python identifier (it becomes a results column), "
                                f"got {spec.name!r}")
    if spec.name in _REGISTRY:
        raise RegistrationError(f"a trust-score method named {spec.name!r} is already registered "
                                f"(by {_REGISTRY[spec.name].module or 'gradtrust'})")
    registered = list(Pass)
    bad = [n for n in spec.needs if n not in registered]
    if bad:
        raise RegistrationError(f"method {spec.name!r}: needs must hold registered passes (gradtrust.scores.Pass "
                                f"members), got {bad!r} (valid: {', '.join(map(repr, registered))})")
    _REGISTRY[spec.name] = spec
    if spec.name not in catalogue.CATALOGUE:  # a plug-in: reports name it too
        catalogue.describe(catalogue.MethodInfo(spec.name, spec.display_name, spec.in_paper))
        _DESCRIBED.add(spec.name)
    return spec


def register_method(name: str, *, needs: Iterable[PassSpec] = (), display_name: str | None = None,
                    summary: str | None = None, source: str = "", params: Iterable[Param] = (),
                    applies: Callable[[BatchView], str | None] | None = None,
                    resolve: Callable[[BatchView, str, Any], Any] | None = None, in_paper: bool | None = None,
                    cuda_graph_safe: bool = False, tags: Iterable[str] = ()
                    ) -> Callable[[Callable[[BatchView], MethodOutput]], Callable[[BatchView], MethodOutput]]:
    """Decorator registering ``fn(batch: BatchView) -> MethodOutput`` as the trust score ``name``.

    The arguments are :class:`MethodSpec`'s fields; ``summary`` defaults to the first paragraph of ``fn``'s
    docstring, and ``Pass.FORWARD`` is always among the ``needs``. ``display_name`` and ``in_paper`` default to
    the method's entry in :mod:`gradtrust.catalogue`, else to ``name`` and False; a new method is added to
    the catalogue. Example: docs/methods.md.
    """

    def decorate(fn: Callable[[BatchView], MethodOutput]) -> Callable[[BatchView], MethodOutput]:
        doc = (fn.__doc__ or "").strip()
        first = " ".join(doc.split("\n\n")[0].split()) if doc else name
        known = catalogue.CATALOGUE.get(name)
        shown = display_name or (known.display_name if known is not None else name)
        paper = in_paper if in_paper is not None else (known is not None and known.in_paper)
        register(MethodSpec(name=name, fn=fn, needs=frozenset(needs) | {Pass.FORWARD},
                            display_name=shown, summary=summary or first, source=source,
                            params=tuple(params), applies=applies, resolve=resolve, in_paper=paper,
                            cuda_graph_safe=cuda_graph_safe, tags=frozenset(tags),
                            module=getattr(fn, "__module__", "")))
        return fn

    return decorate


def unregister_method(name: str) -> None:
    """Remove a method (tests and interactive sessions that redefine one), and its catalogue entry if
    registering it made one."""
    _REGISTRY.pop(name, None)
    if name in _DESCRIBED:
        _DESCRIBED.discard(name)
        catalogue.CATALOGUE.pop(name, None)


def method_specs() -> list[MethodSpec]:
    """Every registered :class:`MethodSpec`, in registration order (built-ins, VOICE, then plug-ins)."""
    _ensure_loaded()
    return list(_REGISTRY.values())


def available_methods() -> list[str]:
    """Names of every registered trust score, in registration order (the report's column order)."""
    return [spec.name for spec in method_specs()]


def get_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` called ``name``; an unknown name raises an error listing the valid ones."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownNameError(
            f"unknown trust-score method {name!r}.{hint} Valid methods: {', '.join(_REGISTRY)}."
        ) from None


def display_name(name: str) -> str:
    """The display name of a registered method; an unregistered column keeps its own name."""
    _ensure_loaded()
    spec = _REGISTRY.get(name)
    return spec.display_name if spec is not None else name


def order_methods(names: Iterable[str]) -> list[str]:
    """Registered methods in registry order, then the other names in the order given (no duplicates)."""
    wanted = list(dict.fromkeys(names))
    known = [n for n in available_methods() if n in wanted]
    return known + [n for n in wanted if n not in known]


def paper_methods() -> list[str]:
    """The methods the GradTrust paper's table compares, in registry order."""
    return [spec.name for spec in method_specs() if spec.in_paper]


def load_plugins(force: bool = False) -> list[str]:
    """Load the ``gradtrust.methods`` entry points (once): this package's own first, then the others, each group
    in discovery order; return the names of the methods they added."""
    if _PLUGINS_LOADED and not force:
        return []
    _PLUGINS_LOADED[:] = [True]
    from importlib.metadata import entry_points

    before = set(_REGISTRY)
    entries = sorted(entry_points(group=ENTRY_POINT_GROUP),
                     key=lambda e: getattr(e.dist, "name", None) != "gradtrust")  # stable: keeps discovery order
    for entry in entries:
        try:
            obj = entry.load()
            if isinstance(obj, MethodSpec):
                if obj.name not in _REGISTRY:
                    register(obj)
            elif callable(obj):  # a module (the usual case) registered its methods on import already
                obj()
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not break the built-in methods
            warnings.warn(f"gradtrust: the trust-score plug-in {entry.name!r} ({entry.value}) failed to load: "
                          f"{type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=2)
    return [name for name in _REGISTRY if name not in before]


def _ensure_loaded() -> None:
    if not _PLUGINS_LOADED:
        load_plugins()
