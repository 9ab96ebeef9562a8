"""timm models: ``timm.create_model(name, pretrained=False)``, weights from local files only, timm's
preprocessing (``resolve_data_config`` + ``create_transform``)."""

from __future__ import annotations

from typing import Any, cast

from torch import nn

from gradtrust.errors import ModelError, UnknownNameError
from gradtrust.models.base import LoadedModel
from gradtrust.models.specs import (
    ModelSource,
    did_you_mean,
    is_existing_file,
    random_meta,
    refuse_missing_weights_file,
    register_source,
    std_meta,
)
from gradtrust.models.state_dict import build_on_meta, fit_num_classes, load_state, read_weights_file


def import_timm():
    """The ``timm`` package (with ``timm.data``); a `ModelError` with the install command when it is missing."""
    try:
        import timm
        import timm.data  # noqa: F401
    except ImportError as exc:
        raise ModelError(
            "timm: models need the optional dependency timm, which is not installed: "
            "pip install 'gradtrust[timm]'"
        ) from exc
    return timm


def load_timm(name: str, weights: Any, num_classes: int | None) -> LoadedModel:
    """``timm:<name>``: ``timm.create_model(name, pretrained=False)`` with random or local-file weights."""
    timm = import_timm()
    if not timm.is_model(name):
        valid = timm.list_models()
        raise UnknownNameError(
            f"unknown timm model {name!r}" + did_you_mean(name, valid, prefix="timm:")
            + f" ({len(valid)} models; see timm.list_models())"
        )
    meta: dict[str, Any] = {"family": "timm", "architecture": name, "timm_version": timm.__version__}

    def build(c: int | None) -> nn.Module:
        kwargs = {} if c is None else {"num_classes": c}
        return timm.create_model(name, pretrained=False, **kwargs)

    sha = weights_str = None
    if weights is None:
        meta.update(random_meta())
        module = build(num_classes)
        meta["num_classes_source"] = "argument" if num_classes is not None else "default"
    elif not is_existing_file(weights):
        refuse_missing_weights_file(weights)
        hub_id = _timm_hub_id(timm, name)
        where = (
            f" The weights of {hub_id} are at https://huggingface.co/{hub_id} (model.safetensors)."
            if hub_id else ""
        )
        raise ModelError(
            f"timm models take weights from a local file only (.safetensors/.pth/.bin), got {weights!r}; "
            f"GradTrust never downloads anything.{where}"
        )
    else:
        state, weights_str, sha = read_weights_file(weights, meta)
        probe: Any = build_on_meta(lambda: build(None))  # timm models carry num_classes
        default_classes = int(probe.num_classes)
        classes, state, align = fit_num_classes(build, state, num_classes, default_classes, f"timm:{name}")
        meta.update(align)
        module = build(classes)
        load_state(module, state, f"timm:{name}", weights_str)

    classes = int(cast(Any, module).num_classes)
    data_config = timm.data.resolve_data_config({}, model=module, use_test_size=True)
    transform = timm.data.create_transform(**data_config)
    meta["data_config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()}
    meta["preprocessing"] = "timm resolve_data_config(use_test_size=True) + create_transform"
    meta.update(std_meta(data_config.get("std")))
    class_names, source = _timm_class_names(timm, module, classes)
    meta["class_names_source"] = source
    return LoadedModel(
        module=module,
        transform=transform,
        class_names=class_names,
        num_classes=classes,
        spec=f"timm:{name}",
        weights=weights_str,
        weights_sha256=sha,
        input_kind="image",
        meta=meta,
    )


def _timm_hub_id(timm: Any, name: str) -> str | None:
    try:
        cfg = timm.models.get_pretrained_cfg(name)
        return getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    except Exception:  # pragma: no cover - depends on the timm version
        return None


def _timm_class_names(timm: Any, module: nn.Module, classes: int) -> tuple[list[str], str]:
    try:
        subset = timm.data.infer_imagenet_subset(module)
        if subset:
            info = timm.data.ImageNetInfo(subset)
            if info.num_classes() == classes:
                names = [d.split(",")[0].strip() for d in info.label_descriptions()]
                return names, f"timm ImageNetInfo({subset!r})"
    except Exception:  # pragma: no cover - older timm without ImageNetInfo
        pass
    return [str(i) for i in range(classes)], "indices"


def timm_names() -> list[str]:
    """Every timm model name (``timm.list_models()``); a `ModelError` when timm is not installed."""
    return list(import_timm().list_models())


register_source(ModelSource("timm", load_timm, timm_names, listed_by_default=False))
