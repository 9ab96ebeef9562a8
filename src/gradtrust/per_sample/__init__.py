"""Per-sample gradient norms: per-layer kernels, rules for module patterns, one planner."""
