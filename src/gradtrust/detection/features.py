"""Purview's gradient features: per-sample squared gradient norms of every parameter tensor (or layer).

For a sample ``x`` with logits ``z = f(x)`` and a confounding label ``y ∈ {0, 1}^C`` (all ones by default),

    J(x) = (1/C) Σ_c BCEWithLogits(z_c, y_c),        d_j(x) = ‖∂J(x)/∂θ_j‖²₂

for each parameter tensor ``θ_j`` (``grouping="tensor"``), or summed over the tensors a layer owns
(``grouping="layer"``: ``d_l = Σ_{j ∈ l} d_j``). Source: Lee, Prabhushankar & AlRegib, "Probing the Purview
of Neural Networks via Gradient Analysis", IEEE Access 2023; see ``docs/detection.md``.

The norms come from :func:`gradtrust.per_sample.sq_norms`, the engine under Purview's score too: the same
kernels, rules (attention, convolution + BatchNorm, layer scale…) and per-sample-autograd units, from ONE
batched backward pass; models the hooks cannot cover fall back to ``torch.func.vmap``, then to a per-sample
loop, all exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from gradtrust.errors import InputError, ModelError, UnknownNameError
from gradtrust.nn.model import as_module, input_mismatch, prepare_inputs
from gradtrust.nn.outputs import model_logits
from gradtrust.nn.state import scoring_state
from gradtrust.per_sample import BACKENDS, DEFAULT_CHUNK_BYTES, sq_norms
from gradtrust.per_sample.planner import parameter_owners

__all__ = ["GROUPINGS", "FeatureLayout", "feature_layout", "gradient_features"]

GROUPINGS = ("tensor", "layer")
T = TypeVar("T")


class FeatureLayout:
    """Which parameter tensors the features cover and how they are grouped into columns.

    ``tensors`` are parameter names in ``named_parameters()`` order; ``columns`` the feature names (the
    tensor names, or the owning module names for ``grouping="layer"``); ``column_of[t]`` the column of
    tensor ``t``.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] | None, grouping: str):
        if grouping not in GROUPINGS:
            raise UnknownNameError(f"grouping={grouping!r} is unknown; use one of {', '.join(GROUPINGS)}.")
        names, owners = parameter_owners(model)
        if not names:
            raise ModelError(f"{type(model).__name__} has no parameters, so it has no gradient features.")
        if layers is None:
            chosen = names
        else:
            if isinstance(layers, str):
                layers = [layers]
            modules = dict(model.named_modules())
            unknown = [name for name in layers if name not in modules]
            if unknown:
                candidates = sorted({owners[n][0] for n in names})
                raise UnknownNameError(f"layers {unknown} are not modules of this model; modules that own "
                                       f"parameters: {', '.join(candidates[:12])}{' …' if len(candidates) > 12 else ''}.")
            prefixes = tuple(name + "." for name in layers if name)
            chosen = [n for n in names if "" in layers or owners[n][0] in layers or owners[n][0].startswith(prefixes)]
            if not chosen:
                raise ModelError(f"layers {list(layers)} own no parameters, so they have no gradient features.")
        self.tensors: list[str] = chosen
        self.owners = {n: owners[n] for n in chosen}
        self.grouping = grouping
        if grouping == "tensor":
            self.columns = list(chosen)
        else:
            self.columns = list(dict.fromkeys(owners[n][0] or "<root>" for n in chosen))
        index = {c: i for i, c in enumerate(self.columns)}
        self.column_of = {n: index[n if grouping == "tensor" else (owners[n][0] or "<root>")] for n in chosen}

    def group(self, per_tensor: torch.Tensor) -> torch.Tensor:
        """(B, len(tensors)) per-tensor features → (B, len(columns)) by summing tensors of one column."""
        if self.grouping == "tensor":
            return per_tensor
        out = per_tensor.new_zeros(per_tensor.shape[0], len(self.columns))
        cols = torch.tensor([self.column_of[n] for n in self.tensors], device=per_tensor.device)
        return out.index_add_(1, cols, per_tensor)


def feature_layout(model: Any, layers: Sequence[str] | None = None, grouping: str = "tensor") -> FeatureLayout:
    """The column names (and grouping) :func:`gradient_features` uses for ``model``."""
    return FeatureLayout(as_module(model), layers, grouping)


def confounding_label(label: Any, num_classes: int, batch: int, device: torch.device) -> torch.Tensor:
    """The target ``y`` (B, C) float32: ``"ones"`` → all ones; a 0/1 vector (C,) or matrix (B, C) as given."""
    if isinstance(label, str):
        if label != "ones":
            raise UnknownNameError(f"label={label!r} is unknown; use 'ones' or an n-hot 0/1 tensor of shape (C,) "
                                   "or (B, C).")
        return torch.ones(batch, num_classes, device=device)
    y = torch.as_tensor(label, device=device).float()
    if y.dim() == 1:
        y = y.unsqueeze(0).expand(batch, -1)
    if y.dim() != 2 or y.shape[1] != num_classes or y.shape[0] != batch:
        raise InputError(f"label of shape {tuple(torch.as_tensor(label).shape)} does not fit a batch of {batch} "
                         f"samples and {num_classes} classes; give (C,) or (B, C) 0/1 values.")
    if not bool(((y == 0) | (y == 1)).all()):
        raise InputError("label must hold only 0 and 1 (an n-hot confounding label).")
    return y


def confounding_loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample ``J = (1/C) Σ_c BCEWithLogits(z_c, y_c)`` (B,), in float32."""
    zf = z.float()
    return F.binary_cross_entropy_with_logits(zf, y.to(zf.device), reduction="none").mean(1)


def _all_ones_loss(z: torch.Tensor) -> torch.Tensor:
    """``J(z; y = 1)``, the default confounding label's loss."""
    return confounding_loss(z, torch.ones_like(z, dtype=torch.float32))


def gradient_features(model: Any, images: Any, label: Any = "ones", layers: Sequence[str] | None = None,
                      grouping: str = "tensor", backend: str = "auto", chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                      output_index: int | str | None = None) -> torch.Tensor:
    """Purview gradient features ``d_j = ‖∂J/∂θ_j‖²₂`` per sample, (B, J) float64 on the CPU.

    ``J = (1/C) Σ_c BCEWithLogits(z_c, y_c)`` with ``y`` the confounding label (``"ones"`` or any n-hot
    0/1 tensor of shape (C,) or (B, C)). ``layers``: module names whose parameters (recursively) are kept
    (default: all); ``grouping="layer"`` sums the tensors each module owns. Column names:
    :func:`feature_layout`. ``backend``: ``"auto"`` (hooks, else vmap, else loop) or one of them.
    Source: Lee et al., IEEE Access 2023 (Purview); ``docs/detection.md``. The model is used in eval
    mode and left as it was found. ``output_index``: for a model returning several outputs, the one holding
    the logits (:func:`gradtrust.nn.outputs.logits_of`).
    """
    module = as_module(model)
    if backend not in BACKENDS:
        raise UnknownNameError(f"backend={backend!r} is unknown; use one of {', '.join(BACKENDS)}.")
    layout = FeatureLayout(module, layers, grouping)
    x = prepare_inputs(module, images)
    with scoring_state(module, output_index=output_index), input_mismatch(x):
        loss: Callable[..., torch.Tensor] = _all_ones_loss
        targets = None
        if not (isinstance(label, str) and label == "ones"):  # all ones: no forward pass to count the classes
            with torch.no_grad():
                num_classes = model_logits(module, x[:1]).shape[-1]
            targets, loss = confounding_label(label, num_classes, x.shape[0], x.device), confounding_loss
        params = None if len(layout.tensors) == sum(1 for _ in module.parameters()) else layout.tensors
        per_tensor = sq_norms(module, x, loss, targets=targets, backend=backend, params=params,
                              chunk_bytes=chunk_bytes).values
    return layout.group(per_tensor.double()).cpu()
