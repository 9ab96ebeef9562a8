"""A classifier restricted to a subset of its outputs: the final ``nn.Linear`` keeps only the subset's rows.

ImageNet-A, -R and -O are scored on a 1000-class model by keeping the logits of their 200 classes only
(Hendrycks et al. 2021: ``output = model(x)[:, indices_in_1k]``; accuracy and the OOD scores are then over those
200 classes). Slicing the final layer's weight rows gives exactly those logits — ``W[S] h + b[S] = (W h + b)[S]`` —
and keeps the final ``nn.Linear`` that the gradient-based trust scores differentiate.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from gradtrust.errors import ModelError
from gradtrust.models.base import LoadedModel

__all__ = ["model_for_dataset", "restrict_outputs"]


def restrict_outputs(
    loaded: LoadedModel, indices: Sequence[int], class_names: Sequence[str] | None = None
) -> LoadedModel:
    """A copy of ``loaded`` whose outputs are ``logits[:, indices]`` (see the module docstring).

    The final layer is the last ``nn.Linear`` with as many outputs as the model (what the scores engine takes as
    the final layer); layers after it must act on each logit alone (none, or an identity), as in torchvision's
    and timm's classifiers. ``class_names``: the new outputs' names (default: the model's names at ``indices``).
    Raises :class:`ModelError` when there is no such layer or an index is out of range.
    """
    idx = [int(i) for i in indices]
    total = loaded.num_classes
    if not idx or total is None or min(idx) < 0 or max(idx) >= total:
        raise ModelError(f"cannot restrict {loaded.spec} ({total} outputs) to the outputs {idx[:5]}…: out of range")
    module = copy.deepcopy(loaded.module)
    finals = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.Linear) and m.out_features == total]
    if not finals:
        raise ModelError(
            f"cannot restrict {loaded.spec} to a subset of its {total} outputs: it has no final nn.Linear "
            f"with {total} outputs"
        )
    name, final = finals[-1]
    sliced = nn.Linear(
        final.in_features, len(idx), bias=final.bias is not None, device=final.weight.device, dtype=final.weight.dtype
    )
    rows = torch.tensor(idx, device=final.weight.device)
    with torch.no_grad():
        sliced.weight.copy_(final.weight.index_select(0, rows))
        if final.bias is not None and sliced.bias is not None:
            sliced.bias.copy_(final.bias.index_select(0, rows))
    sliced.weight.requires_grad_(final.weight.requires_grad)
    if sliced.bias is not None and final.bias is not None:
        sliced.bias.requires_grad_(final.bias.requires_grad)
    parent_name, _, child = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    if isinstance(parent, nn.Sequential) and child.isdigit():
        parent[int(child)] = sliced
    else:
        setattr(parent, child, sliced)
    names = [str(n) for n in class_names] if class_names is not None else [loaded.class_names[i] for i in idx]
    if len(names) != len(idx):
        raise ModelError(f"{len(names)} class names for {len(idx)} outputs")
    meta = {**loaded.meta, "output_subset": {"layer": name, "indices": idx, "of": total}}
    return dataclasses.replace(loaded, module=module, class_names=names, num_classes=len(idx), meta=meta)


def model_for_dataset(model: LoadedModel, dataset: Any) -> LoadedModel:
    """The model to score ``dataset`` with: for a 200-class ImageNet subset (ImageNet-A/R/O: the dataset has
    ``output_subset``, the 1000-class indices of its classes) and a 1000-output model, the model restricted to the
    subset's logits (:func:`restrict_outputs`, as the subsets' papers score them); else ``model`` itself."""
    subset = getattr(dataset, "output_subset", None)
    if not subset or model.num_classes != 1000:
        return model
    return restrict_outputs(model, subset, [str(c) for c in dataset.classes])
