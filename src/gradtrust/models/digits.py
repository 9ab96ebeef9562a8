"""The bundled digits networks: small classifiers of the built-in digits, with weights shipped in the package.

Every network is an ``nn.Sequential`` taking ``(N, 1, 8, 8)`` inputs in ``[0, 1]`` (see
:class:`gradtrust.data.digits.DigitsDataset`) whose LAST module is an ``nn.Linear(…, 10)`` producing the
logits, so trust scores can read its input as the penultimate features. They differ in capacity, hence
in accuracy:

==================  ================================================================  ===========
name                layers                                                            features
==================  ================================================================  ===========
``digits_tiny``     Flatten → Linear(64, 3) → Tanh → Linear(3, 10)                    3
``digits_linear``   Flatten → Linear(64, 10)                                          64 (pixels)
``digits_mlp``      Flatten → Linear(64, 64) → ReLU → Dropout(0.3) → Linear(64, 10)   64
``digits_cnn``      Conv(1→16)+BN+ReLU → Conv(16→32)+BN+ReLU → MaxPool(2) → Flatten   64
                    → Linear(512, 64) → ReLU → Dropout(0.3) → Linear(64, 10)
==================  ================================================================  ===========

``digits_mlp`` and ``digits_cnn`` have dropout (for MC dropout), ``digits_cnn`` has batch norm.
The weights (``weights/digits_<…>.safetensors``) are produced by ``scripts/train_digits.py``, which calls
:func:`train_digits_model` — deterministic (CPU, one thread, fixed seed, epochs and optimizer) — on the
train split of :mod:`gradtrust.data.digits`; ``weights/digits_accuracy.json`` records their accuracies.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources

import torch
from torch import nn

from gradtrust.data.digits import DIGITS_CLASSES
from gradtrust.errors import ModelError, UnknownNameError

__all__ = [
    "DIGITS_CLASSES",
    "available_digits_models",
    "build_digits_model",
    "digits_accuracy_table",
    "digits_weights_file",
    "train_digits_model",
]


@dataclass(frozen=True)
class _Recipe:
    build: Callable[[], nn.Module]
    epochs: int
    lr: float
    weight_decay: float = 0.0
    batch_size: int = 32


# Changing a recipe changes the shipped weights: re-run scripts/train_digits.py afterwards.
_RECIPES: dict[str, _Recipe] = {
    "digits_tiny": _Recipe(lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 3), nn.Tanh(), nn.Linear(3, 10)),
                           epochs=40, lr=2e-2),
    "digits_linear": _Recipe(lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), epochs=3, lr=1e-2),
    "digits_mlp": _Recipe(lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.3),
                                                nn.Linear(64, 10)), epochs=20, lr=3e-3, weight_decay=1e-4),
    "digits_cnn": _Recipe(lambda: nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 10),
    ), epochs=10, lr=3e-3, weight_decay=1e-4),
}

_WEIGHTS_DIR = "models/weights"
ACCURACY_FILE = "digits_accuracy.json"


def available_digits_models() -> list[str]:
    """The names of the bundled digits networks."""
    return list(_RECIPES)


def _recipe(name: str) -> _Recipe:
    if name not in _RECIPES:
        raise UnknownNameError(
            f"unknown digits model {name!r}; valid names: {', '.join(available_digits_models())}"
        )
    return _RECIPES[name]


def digits_weights_file(name: str):
    """The packaged weights file of a bundled network (an ``importlib.resources`` Traversable)."""
    _recipe(name)
    return resources.files("gradtrust").joinpath(_WEIGHTS_DIR).joinpath(f"{name}.safetensors")


def build_digits_model(name: str, pretrained: bool = True) -> nn.Module:
    """A bundled digits network in eval mode, with its shipped weights (or freshly initialised ones)."""
    recipe = _recipe(name)
    model = recipe.build()
    if pretrained:
        from safetensors.torch import load as load_safetensors

        ref = digits_weights_file(name)
        try:
            data = ref.read_bytes()
        except (FileNotFoundError, OSError) as exc:
            raise ModelError(
                f"the weights of {name!r} are missing from the package ({ref}); "
                "run `python scripts/train_digits.py` to create them"
            ) from exc
        try:
            state = load_safetensors(data)
            model.load_state_dict(state, strict=True)
        except Exception as exc:  # corrupt file or mismatching architecture
            raise ModelError(
                f"the shipped weights of {name!r} ({ref}) do not fit its architecture: {exc}; "
                "re-run `python scripts/train_digits.py`"
            ) from exc
    return model.eval()


def digits_accuracy_table() -> dict:
    """The accuracies recorded by ``scripts/train_digits.py`` (``{}`` when the file is absent)."""
    ref = resources.files("gradtrust").joinpath(_WEIGHTS_DIR).joinpath(ACCURACY_FILE)
    try:
        return json.loads(ref.read_text(encoding="utf-8"))
    except (FileNotFoundError, OSError):
        return {}


@contextlib.contextmanager
def _deterministic_cpu(seed: int) -> Iterator[None]:
    """Seeded, deterministic, single-threaded torch; the caller's RNG state and settings are restored."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)


def train_digits_model(name: str, *, epochs: int | None = None, seed: int = 0) -> nn.Module:
    """Train a bundled network from scratch on the clean digits train split; returns it in eval mode.

    Deterministic: CPU, one thread, ``torch.manual_seed(seed)``, deterministic algorithms, Adam with the
    network's fixed recipe, mini-batches drawn by a generator seeded with ``seed``. ``epochs`` overrides the
    recipe's (for quick checks); the defaults with ``seed=0`` reproduce the shipped weights.
    """
    from gradtrust.data.digits import DigitsDataset

    recipe = _recipe(name)
    n_epochs = recipe.epochs if epochs is None else int(epochs)
    inputs, labels = DigitsDataset("train").tensors()
    with _deterministic_cpu(seed):
        model = recipe.build()
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        loss_fn = nn.CrossEntropyLoss()
        order = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(n_epochs):
            perm = torch.randperm(len(labels), generator=order)
            for start in range(0, len(perm), recipe.batch_size):
                batch = perm[start : start + recipe.batch_size]
                if len(batch) < 2:  # batch norm cannot train on one sample
                    continue
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(inputs[batch]), labels[batch])
                loss.backward()
                optimizer.step()
    return model.eval()
