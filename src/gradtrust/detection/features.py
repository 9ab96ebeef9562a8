"""Purview's gradient features: per-sample squared gradient norms of every parameter tensor (or layer).

For a sample ``x`` with logits ``z = f(x)`` and a confounding label ``y ∈ {0, 1}^C`` (all ones by default),

    J(x) = (1/C) Σ_c BCEWithLogits(z_c, y_c),        d_j(x) = ‖∂J(x)/∂θ_j‖²₂

for each parameter tensor ``θ_j`` (``grouping="tensor"``), or summed over the tensors a layer owns
(``grouping="layer"``: ``d_l = Σ_{j ∈ l} d_j``). Source: Lee, Prabhushankar & AlRegib, "Probing the Purview
of Neural Networks via Gradient Analysis", IEEE Access 2023; see ``docs/detection.md``.

All samples come from ONE batched backward pass: :class:`gradtrust.per_sample.layers.LayerCapture` records
each layer's input and output gradient, and :func:`gradtrust.per_sample.layers.parameter_sq_norms` turns
them into per-sample norms (ghost norms where cheaper). Models the hooks cannot cover exactly (class tokens,
attention in-projections, layers run twice) fall back to ``torch.func.vmap`` and, failing that, to a
per-sample loop — both from the same module, both exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradtrust.errors import InputError, ModelError, UnknownNameError
from gradtrust.nn.model import as_module, input_mismatch, prepare_inputs
from gradtrust.nn.outputs import model_logits
from gradtrust.nn.state import scoring_state
from gradtrust.per_sample import layers as per_sample
from gradtrust.per_sample.layers import LayerCapture, UnsupportedForHooks

__all__ = ["GROUPINGS", "FeatureLayout", "feature_layout", "gradient_features"]

GROUPINGS = ("tensor", "layer")
BACKENDS = ("auto", "hooks", "vmap", "loop")


class FeatureLayout:
    """Which parameter tensors the features cover and how they are grouped into columns.

    ``tensors`` are parameter names in ``named_parameters()`` order; ``columns`` the feature names (the
    tensor names, or the owning module names for ``grouping="layer"``); ``column_of[t]`` the column of
    tensor ``t``.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] | None, grouping: str):
        if grouping not in GROUPINGS:
            raise UnknownNameError(f"grouping={grouping!r} is unknown; use one of {', '.join(GROUPINGS)}.")
        names, owners = per_sample.parameter_owners(model)
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
            take_all = "" in layers
            chosen = [n for n in names if take_all or owners[n][0] in layers or owners[n][0].startswith(prefixes)]
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


def gradient_features(model: Any, images: Any, label: Any = "ones", layers: Sequence[str] | None = None,
                      grouping: str = "tensor", backend: str = "auto",
                      chunk_bytes: int = per_sample.DEFAULT_CHUNK_BYTES,
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
    with scoring_state(module, output_index=output_index):
        with torch.no_grad(), input_mismatch(x):
            num_classes = model_logits(module, x[:1]).shape[-1]
        y = confounding_label(label, num_classes, x.shape[0], x.device)
        per_tensor = _per_tensor_norms(module, x, y, layout, backend, chunk_bytes)
    return layout.group(per_tensor.double()).cpu()


def _per_tensor_norms(module: nn.Module, x: torch.Tensor, y: torch.Tensor, layout: FeatureLayout,
                      backend: str, chunk_bytes: int) -> torch.Tensor:
    """(B, len(layout.tensors)) float32 per-tensor squared norms by the first backend that applies."""
    if backend in ("auto", "hooks"):
        try:
            return _norms_by_hooks(module, x, y, layout, chunk_bytes)
        except UnsupportedForHooks as exc:
            if backend == "hooks":
                raise ModelError(f"backend='hooks' cannot handle this model: {exc}") from exc
    all_names = [name for name, _ in module.named_parameters()]
    columns = [all_names.index(n) for n in layout.tensors]
    # The per-sample paths take a loss of the logits alone; the label rides along by sample position.
    if backend in ("auto", "vmap"):
        try:
            with torch.enable_grad():
                rows = _vmap_with_labels(module, x, y)
            return rows[:, columns]
        except Exception as exc:  # noqa: BLE001 - any vmap limitation falls through to the exact loop
            if backend == "vmap":
                raise ModelError(f"backend='vmap' failed on this model: {exc}") from exc
    rows = torch.cat([per_sample.sq_norms_by_loop(module, x[i:i + 1], _label_loss(y[i:i + 1]))
                      for i in range(x.shape[0])])
    return rows[:, columns]


def _label_loss(target: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``z ↦ J(z; target)``: the confounding loss with a fixed label row, for the per-sample paths."""

    def loss(z: torch.Tensor) -> torch.Tensor:
        return confounding_loss(z, target)

    return loss


def _vmap_with_labels(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``per_sample.sq_norms_by_vmap`` with a per-sample label: each distinct label row is one vmap call."""
    chunk = per_sample.vmap_chunk_size(module)
    unique, inverse = torch.unique(y, dim=0, return_inverse=True)
    out = torch.empty(x.shape[0], sum(1 for _ in module.parameters()), device=x.device)
    for k in range(unique.shape[0]):
        rows = (inverse == k).nonzero().flatten()
        target = unique[k:k + 1]
        out[rows] = per_sample.sq_norms_by_vmap(module, x[rows], _label_loss(target), chunk)
    return out


def _norms_by_hooks(module: nn.Module, x: torch.Tensor, y: torch.Tensor, layout: FeatureLayout,
                    chunk_bytes: int) -> torch.Tensor:
    """One forward with layer captures, one batched backward of ``Σ_i J_i``; raise UnsupportedForHooks."""
    layers: dict[str, nn.Module] = {}
    for name in layout.tensors:
        module_name, owner, attr = layout.owners[name]
        if attr not in ("weight", "bias") or not per_sample.supports_hooks(owner):
            raise UnsupportedForHooks(f"parameter {name!r} ({type(owner).__name__}.{attr}) is not hook-supported")
        layers[module_name] = owner
    capture = LayerCapture(layers)
    roots: list[torch.Tensor] = []

    def start_graph(mod, args, output):
        # The parameters are frozen and the input needs no gradient, so the graph starts at the output of
        # each captured layer that nothing recorded feeds (usually only the first one): the backward then
        # stops there instead of running down to the image. A clone keeps in-place ops off the leaf.
        if isinstance(output, torch.Tensor) and not output.requires_grad and output.is_floating_point():
            leaf = output.detach().requires_grad_(True)
            roots.append(leaf)
            return leaf.clone()
        return None

    handles = [m.register_forward_hook(start_graph, prepend=True) for m in layers.values()]
    try:
        with capture, torch.enable_grad():
            logits = per_sample.model_logits(module, x)
    finally:
        for handle in handles:
            handle.remove()
    bad = {n: c for n, c in capture.calls.items() if c != 1}
    if bad:
        raise UnsupportedForHooks(f"layers not run exactly once per forward pass: {bad}")
    if not roots or not logits.requires_grad:
        raise UnsupportedForHooks("the logits do not depend differentiably on the captured layers")
    norms: dict[tuple[str, str], torch.Tensor] = {}

    def on_grad(layer_name, mod, a, g):
        for attr, value in per_sample.parameter_sq_norms(mod, a, g, chunk_bytes).items():
            norms[(layer_name, attr)] = value

    capture.on_grad, capture.active = on_grad, True
    try:
        torch.autograd.grad(confounding_loss(logits, y).sum(), roots, allow_unused=True)
    finally:
        capture.active, capture.on_grad = False, None
    zeros = torch.zeros(x.shape[0], device=x.device)
    columns = [norms.get((layout.owners[n][0], layout.owners[n][2]), zeros) for n in layout.tensors]
    return torch.stack(columns, dim=1)
