"""``digits:<name>`` specs: the bundled digits networks (:mod:`gradtrust.models.digits`) with random,
bundled or file weights."""

from __future__ import annotations

import hashlib
from typing import Any

from gradtrust.errors import ModelError, UnknownNameError
from gradtrust.models import digits
from gradtrust.models.base import LoadedModel
from gradtrust.models.specs import (
    ModelSource,
    is_existing_file,
    random_meta,
    refuse_missing_weights_file,
    register_source,
    unknown_message,
)
from gradtrust.models.state_dict import load_state, read_weights_file


def load_digits(name: str, weights: Any, num_classes: int | None) -> LoadedModel:
    """``digits:<name>`` with random (None), bundled (``"DEFAULT"``/``"bundled"``) or file weights."""
    valid = digits.available_digits_models()
    if name not in valid:
        raise UnknownNameError(unknown_message("digits model", name, valid, prefix="digits:"))
    class_names = [str(c) for c in digits.DIGITS_CLASSES]
    if num_classes is not None and num_classes != len(class_names):
        raise ModelError(f"digits:{name} has {len(class_names)} classes, not num_classes={num_classes}")
    meta: dict[str, Any] = {"family": "digits", "architecture": name, "class_names_source": "DIGITS_CLASSES"}
    sha = weights_str = None
    if weights is None:
        module = digits.build_digits_model(name, pretrained=False)
        meta.update(random_meta())
    elif isinstance(weights, str) and weights.strip().lower() in ("default", "bundled") and not is_existing_file(weights):
        module = digits.build_digits_model(name, pretrained=True)
        weights_str = "bundled"
        meta.update(weights_kind="bundled", pretrained=True)
        ref = digits.digits_weights_file(name)
        sha = hashlib.sha256(ref.read_bytes()).hexdigest()
        meta["weights_file"] = str(ref)
    elif is_existing_file(weights):
        module = digits.build_digits_model(name, pretrained=False)
        state, weights_str, sha = read_weights_file(weights, meta, set(module.state_dict()))
        load_state(module, state, f"digits:{name}", weights_str)
    else:
        refuse_missing_weights_file(weights)
        raise UnknownNameError(
            f"unknown weights {weights!r} for digits:{name}; valid: None (random), 'DEFAULT' or 'bundled' "
            "(the shipped weights), or a local .pth/.safetensors file"
        )
    return LoadedModel(
        module=module,
        transform=None,
        class_names=class_names,
        num_classes=len(class_names),
        spec=f"digits:{name}",
        weights=weights_str,
        weights_sha256=sha,
        input_kind="tensor",
        meta=meta,
    )


register_source(ModelSource("digits", load_digits, digits.available_digits_models))
