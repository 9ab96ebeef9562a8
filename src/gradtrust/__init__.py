"""GradTrust: how far to trust each prediction of a PyTorch classifier, from counterfactual gradients.

>>> import gradtrust
>>> result = gradtrust.score(model, images)          # every method that applies
>>> result["gradtrust"], result.prediction
"""

from gradtrust._version import __version__
from gradtrust.errors import DataError, GradTrustError, InputError, ModelError, UnknownNameError
from gradtrust.scores import ScoreOptions, ScoreResult, available_methods, score

__all__ = ["DataError", "GradTrustError", "InputError", "ModelError", "ScoreOptions", "ScoreResult",
           "UnknownNameError", "available_methods", "score", "__version__"]


def __getattr__(name):
    # load_model pulls in torchvision; import it on first use so `import gradtrust` stays light.
    if name in ("load_model", "LoadedModel"):
        from gradtrust import models

        return getattr(models, name)
    raise AttributeError(f"module 'gradtrust' has no attribute {name!r}")
