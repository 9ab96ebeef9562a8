"""GradTrust: how far to trust each prediction of a PyTorch classifier, from counterfactual gradients.

>>> import gradtrust
>>> result = gradtrust.score(model, images)          # every method that applies
>>> result["gradtrust"], result.prediction

The public names are imported on first use, so ``import gradtrust`` (and ``gradtrust --help``) stays light:
torch is imported when a name that needs it is first read.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gradtrust._version import __version__
from gradtrust.errors import DataError, GradTrustError, InputError, ModelError, OptionError, UnknownNameError

#: public name → the module that defines it (imported lazily by ``__getattr__``).
_LAZY: dict[str, str] = {name: module for module, names in {
    "gradtrust.scores": ("score", "ScoreOptions", "ScoreResult", "available_methods", "get_method", "register_method",
                         "register_pass", "MethodSpec", "Pass", "PassSpec"),
    "gradtrust.functional": ("functional",),
    "gradtrust.introspection": ("Introspective",),
    "gradtrust.models": ("load_model", "LoadedModel"),
    "gradtrust.detection": ("gradient_features", "Detector"),
    "gradtrust.gradcon": ("GradCON",),
    "gradtrust.explanations": ("explain", "voice", "Explanation", "VoiceResult", "evaluate_explanations"),
    "gradtrust.cpu_memory": ("keep_freed_memory",),
    "gradtrust.errors": ("NotFittedError",),
    "gradtrust.trusted": ("TrustedClassifier", "TrustedOutput"),
    "gradtrust.selective": ("selective",),
}.items() for name in names}

__all__ = ["DataError", "Detector", "GradCON", "GradTrustError", "InputError", "Introspective", "LoadedModel",
           "MethodSpec", "ModelError", "NotFittedError", "OptionError", "Pass", "PassSpec", "ScoreOptions",
           "ScoreResult", "UnknownNameError", "__version__", "available_methods", "functional", "get_method",
           "gradient_features", "load_model", "register_method", "register_pass", "score"]
__all__ += ["Explanation", "VoiceResult", "evaluate_explanations", "explain", "voice"]  # gradtrust.explanations
__all__ += ["keep_freed_memory"]  # gradtrust.cpu_memory
__all__ += ["TrustedClassifier", "TrustedOutput", "selective"]  # gradtrust.trusted, gradtrust.selective

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from gradtrust import functional, selective
    from gradtrust.cpu_memory import keep_freed_memory
    from gradtrust.detection import Detector, gradient_features
    from gradtrust.errors import NotFittedError
    from gradtrust.explanations import Explanation, VoiceResult, evaluate_explanations, explain, voice
    from gradtrust.gradcon import GradCON
    from gradtrust.introspection import Introspective
    from gradtrust.models import LoadedModel, load_model
    from gradtrust.scores import (
        MethodSpec,
        Pass,
        PassSpec,
        ScoreOptions,
        ScoreResult,
        available_methods,
        get_method,
        register_method,
        register_pass,
        score,
    )
    from gradtrust.trusted import TrustedClassifier, TrustedOutput


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gradtrust' has no attribute {name!r}")
    imported = importlib.import_module(module)
    value = imported if module.endswith("." + name) else getattr(imported, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
