"""Trust scores: :func:`score` (:mod:`.engine`), the method (:mod:`.registry`) and pass (:mod:`.spec`)
registries, the per-batch passes. Importing this package registers the built-in passes and methods
(:mod:`.methods`); capabilities and plug-ins load through entry points the first time the registry is read.
"""

from gradtrust.scores import methods  # noqa: F401 - registers the built-in passes and methods, in order
from gradtrust.scores.engine import score
from gradtrust.scores.options import ScoreOptions
from gradtrust.scores.registry import (
    MethodSpec,
    available_methods,
    display_name,
    get_method,
    load_plugins,
    method_specs,
    order_methods,
    paper_methods,
    register,
    register_method,
    unregister_method,
)
from gradtrust.scores.result import ScoreResult
from gradtrust.scores.spec import MethodOutput, Param, Pass, PassSpec, register_pass, unregister_pass
from gradtrust.scores.view import BatchView, UndeclaredPassError

__all__ = ["BatchView", "MethodOutput", "MethodSpec", "Param", "Pass", "PassSpec", "ScoreOptions", "ScoreResult",
           "UndeclaredPassError", "available_methods", "display_name", "get_method", "load_plugins",
           "method_specs", "order_methods", "paper_methods", "register", "register_method", "register_pass", "score",
           "unregister_method", "unregister_pass"]
