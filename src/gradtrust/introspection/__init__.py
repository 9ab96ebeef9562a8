"""Introspective learning (Prabhushankar & AlRegib, NeurIPS 2022): a second-stage network ``H`` that predicts
the class again from the gradient of ``MSE(z, 1_C)`` at ``f``'s final linear layer. See
``docs/introspection.md``."""

from gradtrust.introspection.features import FeatureExtractor, IntrospectiveFeatures
from gradtrust.introspection.head import IntrospectiveHead
from gradtrust.introspection.introspective import Introspective, IntrospectiveModel, IntrospectivePrediction

__all__ = ["FeatureExtractor", "Introspective", "IntrospectiveFeatures", "IntrospectiveHead", "IntrospectiveModel",
           "IntrospectivePrediction"]
