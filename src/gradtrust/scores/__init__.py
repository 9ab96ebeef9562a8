"""Trust scores: the method registry, the per-batch passes and ``score``.

* :func:`score` (:mod:`.engine`): every requested score of one batch, each pass run once.
* :func:`register_method`, :class:`MethodSpec`, :class:`Pass`, :class:`Param` (:mod:`.registry`,
  :mod:`.spec`): how a method is declared; :func:`available_methods`, :func:`get_method` read it back.
* :class:`ScoreOptions` (:mod:`.options`), :class:`ScoreResult` (:mod:`.result`).
"""

from gradtrust.scores.engine import score
from gradtrust.scores.options import ScoreOptions
from gradtrust.scores.registry import (
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
from gradtrust.scores.spec import MethodOutput, MethodSpec, Param, Pass
from gradtrust.scores.view import BatchView, UndeclaredPassError

__all__ = ["BatchView", "MethodOutput", "MethodSpec", "Param", "Pass", "ScoreOptions", "ScoreResult",
           "UndeclaredPassError", "available_methods", "display_name", "get_method", "load_plugins",
           "method_specs", "order_methods", "paper_methods", "register", "register_method", "score", "unregister_method"]
