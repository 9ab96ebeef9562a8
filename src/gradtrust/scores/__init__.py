"""Trust scores: the method registry, the per-batch passes and ``score``."""

from gradtrust.scores.engine import score
from gradtrust.scores.passes import ScoreOptions
from gradtrust.scores.registry import Method, available_methods, get_method, register_method
from gradtrust.scores.result import ScoreResult

__all__ = ["Method", "ScoreOptions", "ScoreResult", "available_methods", "get_method", "register_method", "score"]
