"""Errors a user can act on. Each message says what is wrong and what to do about it."""


class GradTrustError(ValueError):
    """Base class for every error GradTrust raises on bad input."""


class UnknownNameError(GradTrustError, KeyError):
    """An unknown method, model or option name; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class ModelError(GradTrustError):
    """The model cannot be loaded or scored as asked (no final linear layer, bad weights…)."""


class InputError(GradTrustError):
    """The inputs have the wrong shape, dtype or content."""


class DataError(GradTrustError):
    """A dataset cannot be read (empty folder, class mismatch, unreadable label file…)."""


class OptionError(GradTrustError):
    """A scoring option has a bad value, or two declarations of one option disagree."""


class RegistrationError(GradTrustError, TypeError):
    """A trust-score method or pass cannot be registered as declared (a plug-in author's mistake)."""


class NotFittedError(InputError, ModelError):
    """An estimator used before ``fit`` (or ``load``). It is an :class:`InputError` and a :class:`ModelError`
    too, the classes the estimators raised before it, so that handlers written for those still catch it."""
