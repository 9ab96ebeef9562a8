"""Per-layer kernels, one file per layer family; importing this package registers them all."""

from gradtrust.per_sample.kernels import convolution, linear, normalisation

__all__ = ["convolution", "linear", "normalisation"]
