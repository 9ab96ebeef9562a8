"""Scoring options: every option is a :class:`~gradtrust.scores.spec.Param`, declared once, by the pass that
reads it (:attr:`PassSpec.params`), by a method (``topk``), or by the engine (:data:`ENGINE_PARAMS`).
:class:`ScoreOptions` holds one value for each. Defaults follow the GradTrust release (``docs/methods.md``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gradtrust.errors import OptionError, UnknownNameError
from gradtrust.per_sample import CONV_STRATEGIES, DEFAULT_CHUNK_BYTES
from gradtrust.scores.registry import method_specs
from gradtrust.scores.spec import Param, Pass


def positive(value: Any) -> str | None:
    """A :attr:`Param.check`: the value must be > 0."""
    return None if value > 0 else "must be > 0"


def at_least_one(value: Any) -> str | None:
    """A :attr:`Param.check`: the value must be >= 1."""
    return None if value >= 1 else "must be an integer >= 1"


def parse_stds(value: Any) -> tuple[float, ...] | None:
    """``"0.2,0.3"`` / ``(0.2, 0.3)`` → ``(0.2, 0.3)``; ``None`` when not positive numbers."""
    if value is None:
        return None
    items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
    try:
        numbers = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        return None
    return numbers if numbers and all(v > 0 for v in numbers) else None


#: Options of the engine itself, read by no method.
ENGINE_PARAMS: tuple[Param, ...] = (
    Param("chunk_bytes", int, DEFAULT_CHUNK_BYTES,
          "memory bound for one block of materialised per-sample gradients", positive),
    Param("micro_batch", int, None, "score at most this many samples per pass: a larger batch is scored in "
          "slices (the same numbers; samples are independent in eval mode). Bounds the peak memory of the "
          "gradient passes, which grows with the batch like a training step's", at_least_one),
    Param("cuda_graphs", bool, True, "on a GPU, replay the forward-pass scores as one captured CUDA graph per "
          "batch shape (the same numbers, one launch instead of ~150); false runs them op by op"),
    Param("conv_strategy", str, "auto", "how per-sample convolution weight norms are computed (all exact): 'auto' "
          "(on a CPU a fixed rule on each layer's shapes, conv_strategy.choose), or one strategy wherever it applies",
          choices=("auto", *CONV_STRATEGIES)),
)


def known_params() -> dict[str, Param]:
    """Every option a score call accepts: engine, pass and registered-method options, by name.

    A name declared twice must be declared identically (two methods may share a ``Param`` object).
    """
    methods = method_specs()  # first: loading the plug-ins may register passes
    params: dict[str, Param] = {}
    groups: list[Iterable[Param]] = [ENGINE_PARAMS, *(p.params for p in Pass), *(spec.params for spec in methods)]
    for group in groups:
        for param in group:
            existing = params.setdefault(param.name, param)
            if existing != param:
                raise OptionError(f"the scoring option {param.name!r} is declared twice with different "
                                  f"definitions: {existing} and {param}")
    return params


def builtin_param_names() -> set[str]:
    """The options this package declares (engine, passes, built-in methods), without plug-ins' options."""
    methods = method_specs()  # first: loading the plug-ins may register passes
    names = {p.name for p in ENGINE_PARAMS}
    names |= {p.name for needed in Pass if needed.module.startswith("gradtrust.") for p in needed.params}
    names |= {p.name for spec in methods if spec.module.startswith("gradtrust.") for p in spec.params}
    return names


class ScoreOptions:
    """The value of every scoring option (defaults where not given), validated once; an unknown name or a bad
    value raises an error that lists the valid options. Read an option as an attribute or with :meth:`get`.
    """

    __slots__ = ("_hash", "_values")

    def __init__(self, values: dict[str, Any] | None = None, **kwargs: Any):
        params = known_params()
        given = {**(values or {}), **kwargs}
        unknown = sorted(set(given) - set(params))
        if unknown:
            raise UnknownNameError(f"unknown scoring option(s) {', '.join(unknown)}. Valid options: "
                                   f"{', '.join(sorted(params))}.")
        resolved = {name: (param.validate(given[name]) if name in given else param.default)
                    for name, param in params.items()}
        object.__setattr__(self, "_values", resolved)
        object.__setattr__(self, "_hash", None)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> ScoreOptions:
        """Build options from keyword arguments, rejecting unknown names and bad values clearly."""
        return cls(kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no scoring option {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("ScoreOptions is immutable")

    def get(self, name: str) -> Any:
        return self._values[name]

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ScoreOptions) and self._values == other._values

    def __hash__(self) -> int:  # computed once: options key the per-model caches of every batch
        if self._hash is None:
            object.__setattr__(self, "_hash", hash(tuple(sorted((k, repr(v)) for k, v in self._values.items()))))
        return self._hash

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"ScoreOptions({inner})"
