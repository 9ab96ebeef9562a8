"""Per-sample gradient norms ``‖∂L_i/∂θ_j‖²`` of every parameter tensor, from one batched backward pass.

One library (docs/per_sample.md): layer kernels registered by module type (:func:`register_kernel`,
:mod:`.kernels`), rules for module patterns (:func:`register_rule`, :mod:`.rules`), one planner that decides
which kernel, rule or per-sample-autograd unit yields each parameter's norm (:mod:`.planner`), and one call,
:func:`sq_norms`, with the whole-model ``vmap`` and ``loop`` backends behind it.
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
