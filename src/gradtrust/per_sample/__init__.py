"""Per-sample gradient norms ``‖∂L_i/∂θ_j‖²`` of every parameter tensor, from one batched backward pass:
:func:`sq_norms` (:mod:`.engine`), planned by :mod:`.planner` over the :mod:`.registry` (docs/per_sample.md).
"""

from gradtrust.per_sample.conv_strategy import STRATEGIES as CONV_STRATEGIES
from gradtrust.per_sample.engine import BACKENDS, NormRecorder, SqNorms, autograd_sq_norms, clear, sq_norms
from gradtrust.per_sample.registry import (
    DEFAULT_CHUNK_BYTES,
    Kernel,
    Rule,
    RuleContext,
    UnsupportedForHooks,
    register_kernel,
    register_rule,
)

__all__ = ["BACKENDS", "CONV_STRATEGIES", "DEFAULT_CHUNK_BYTES", "Kernel", "NormRecorder", "Rule", "RuleContext",
           "SqNorms", "UnsupportedForHooks", "autograd_sq_norms", "clear", "register_kernel", "register_rule",
           "sq_norms"]
