"""Rules for module patterns, one file each; importing this package registers them all."""

from gradtrust.per_sample.rules import (
    conv_batch_norm,
    layer_scale,
    maxvit_attention,
    self_attention,
    vit_embeddings,
    window_attention,
)

__all__ = ["conv_batch_norm", "layer_scale", "maxvit_attention", "self_attention", "vit_embeddings",
           "window_attention"]
