"""``gradtrust.explain``: "Why P?", "What if not P?" and "Why P, rather than Q?" maps of a batch.

Maps (Prabhushankar & AlRegib, "Explanatory Paradigms in Neural Networks", IEEE SPM 2022; Selvaraju et al.,
Grad-CAM, ICCV 2017; ``docs/explanations.md``), with ``α_k = mean_{i,j} ∂S/∂A_k(i,j)``:

=================  =====================  ==========================  ===========================
method             question               objective ``S``             map
=================  =====================  ==========================  ===========================
``gradcam``        Why P?                 ``z_P``                     ``ReLU(Σ_k α_k A_k)``
``counterfactual`` What if not P?         ``z_P``                     ``ReLU(−Σ_k α_k A_k)``
``contrast``       Why P, rather than Q?  ``CE(z, Q)``                ``ReLU(Σ_k α_k A_k)``
=================  =====================  ==========================  ===========================

then bilinear upsampling to the input size and per-image min-max normalisation (a constant map → zeros).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from gradtrust.errors import InputError, ModelError
from gradtrust.explanations.forward import Captured, capture
from gradtrust.explanations.layers import LayerSpec, model_signature, resolve_layer, run_model
from gradtrust.explanations.maps import minmax, upsample, weighted_map
from gradtrust.explanations.perturbation import PERTURBATION_METHODS, PerturbationOptions, perturbation_maps
from gradtrust.explanations.weights import DEFAULT_CHUNK_BYTES, ChannelWeights, find_closed_form_head
from gradtrust.nn.cache import cached
from gradtrust.nn.model import as_module, prepare_inputs
from gradtrust.nn.state import scoring_state

#: the gradient maps (one forward and at most one batched backward per batch; the default of :func:`explain`)
CAM_METHODS = ("gradcam", "counterfactual", "contrast")
#: every explanation method, in display order: the gradient maps, then the interventions (many masked passes)
METHODS = CAM_METHODS + PERTURBATION_METHODS
QUESTIONS = {"gradcam": "Why P?", "counterfactual": "What if not P?", "contrast": "Why P, rather than Q?",
             "occlusion": "Where does hiding a patch lower P?", "rise": "Which random views keep P?",
             "shape": "Which removals lower P?"}


@dataclass
class Explanation:
    """The maps of one batch.

    ``layer_maps[m]``: (B, h, w) float32 ReLU'd maps at the layer's resolution, before upsampling and
    normalisation (``contrast`` is (B, C, h, w) with ``contrast="all"``); the interventions (``occlusion``,
    ``rise``, ``shape``) are signed (B, H, W) maps at input resolution. ``ex[m]``: the same upsampled to the
    input size and min-max normalised per image into [0, 1], computed on first access (with
    ``contrast="all"`` that is B·C·H·W floats: 6.4 GB for 32 ImageNet images at 224², so upsample the classes
    you need from ``layer_maps`` with :func:`gradtrust.explanations.maps.upsample` and ``minmax`` instead). ``target`` (P) and
    ``contrast`` (Q) are the classes actually used, (B,) int64 (``contrast`` is ``None`` without a contrast
    map or with ``contrast="all"``). ``valid`` is False for samples whose logits are not finite: their maps
    are zeros. ``closed_form`` says whether the weights came from the GAP + linear closed form. ``layer`` is
    ``""`` when only interventions ran (they read no layer).
    """

    layer_maps: dict[str, torch.Tensor]
    layer: str
    target: torch.Tensor
    contrast: torch.Tensor | None
    logits: torch.Tensor
    input_size: tuple[int, int]
    closed_form: bool
    valid: torch.Tensor
    _full: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def __getitem__(self, method: str) -> torch.Tensor:
        if method not in self.layer_maps:
            raise KeyError(f"no {method!r} map in this explanation; it has: {', '.join(self.layer_maps)}.")
        if method not in self._full:
            self._full[method] = minmax(upsample(self.layer_maps[method], self.input_size))
        return self._full[method]

    def __contains__(self, method: object) -> bool:
        return method in self.layer_maps

    @property
    def methods(self) -> list[str]:
        return list(self.layer_maps)

    @property
    def prediction(self) -> torch.Tensor:
        return self.logits.argmax(1)


def prepare_images(module: nn.Module, images) -> torch.Tensor:
    """:func:`gradtrust.nn.model.prepare_inputs`, and a refusal of anything but image or video batches."""
    x = prepare_inputs(module, images)
    if x.dim() < 4:
        raise InputError(f"explanations need image (B, C, H, W) or video (B, C, T, H, W) inputs, got shape "
                         f"{tuple(x.shape)}.")
    return x


def class_ids(value, batch: int, num_classes: int, what: str, device: torch.device) -> torch.Tensor:
    """``value`` (an int, a sequence or a (B,) tensor of class ids) as a validated (B,) int64 tensor."""
    ids = torch.as_tensor(value, device=device)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise InputError(f"{what} must be integer class ids, got dtype {ids.dtype}.")
    ids = ids.long()
    if ids.dim() == 0:
        ids = ids.expand(batch)
    if ids.dim() != 1 or ids.shape[0] != batch:
        raise InputError(f"{what} must be one class id or one per sample ({batch}), got shape {tuple(ids.shape)}.")
    bad = (ids < 0) | (ids >= num_classes)
    if bad.any():
        raise InputError(f"{what} holds class id {int(ids[bad][0])}, outside 0..{num_classes - 1} "
                         f"(the model has {num_classes} classes).")
    return ids.clone()


def runner_up(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The highest-logit class other than ``target`` (the second-highest logit when ``target`` is the
    prediction)."""
    masked = logits.detach().float().clone()
    masked[torch.arange(masked.shape[0], device=masked.device), target] = -torch.inf
    return masked.argmax(1)


class Session:
    """One batch's forward pass, layer and channel weights (shared by :func:`explain` and :func:`voice`)."""

    def __init__(self, module: nn.Module, x: torch.Tensor, layer: str | None, gradient_path: str = "auto",
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        if gradient_path not in ("auto", "closed_form", "autograd"):
            raise InputError(f"gradient_path must be 'auto', 'closed_form' or 'autograd', got {gradient_path!r}.")
        self.spec: LayerSpec = resolve_layer(module, x, layer)
        cap: Captured | None = None
        head = None
        # {(layer, input shape, dtype): whether the closed form held on the last batch checked}
        known = cached(module, "explanation_closed_form", None, dict[tuple, bool])
        key = (self.spec.name, *model_signature(x))
        # A layer whose last batch failed the closed-form check goes straight to the graph forward (the
        # check is still made whenever the no-graph forward runs).
        if gradient_path == "closed_form" or (gradient_path == "auto" and known.get(key, True)):
            cap = capture(module, x, self.spec, graph=False)
            head = find_closed_form_head(module, self.spec, cap)
            if head is None and gradient_path == "closed_form":
                raise InputError(f"gradient_path='closed_form': layer {self.spec.name!r} does not feed global "
                                 "average pooling and a final linear layer (the pooled activations do not reproduce "
                                 "the logits); use gradient_path='auto'.")
            if bool(torch.isfinite(cap.logits).all()):  # a NaN batch says nothing about the structure
                known[key] = head is not None
        if head is None:
            cap = capture(module, x, self.spec, graph=True)
            if not cap.logits.requires_grad:
                raise ModelError(no_gradient_reason(self.spec.name))
        assert cap is not None
        self.cap = cap
        self.weights = ChannelWeights(cap, head, chunk_bytes=chunk_bytes, spec=self.spec)
        self.logits = cap.logits.detach()
        self.valid = torch.isfinite(self.logits).all(1)
        self.num_classes = self.logits.shape[1]

    def finish(self, maps: torch.Tensor) -> torch.Tensor:
        """ReLU'd maps with non-finite samples zeroed (a NaN map never leaks out)."""
        maps = maps.clamp_min(0)
        shape = (-1,) + (1,) * (maps.dim() - 1)
        ok = self.valid.reshape(shape) & torch.isfinite(maps)
        return torch.where(ok, maps, torch.zeros_like(maps))


def no_gradient_reason(layer: str) -> str:
    return (f"the logits do not depend on layer {layer!r} through autograd (the model computes its output from "
            "that layer without a gradient: a detach, torch.no_grad or a non-differentiable step after it), so no "
            "gradient map exists there; choose another layer= or explain the network whose features it reads")


def gradient_reaches_logits(module: nn.Module, x: torch.Tensor, layer: str | None) -> bool:
    """Whether the logits are differentiable with respect to ``layer``'s output (one single-sample forward with a
    graph, kept in the per-model cache per layer and input shape)."""
    spec = resolve_layer(module, x, layer)
    return cached(module, "explanation_gradient_reaches", (spec.name, *model_signature(x)),
                  lambda: bool(capture(module, x[:1], spec, graph=True).logits.requires_grad))


def explain(model, images, methods: str | Iterable[str] = CAM_METHODS, layer: str | None = None, target=None,
            contrast=None, *, gradient_path: str = "auto", chunk_bytes: int = DEFAULT_CHUNK_BYTES,
            output_index: int | str | None = None, perturbation: PerturbationOptions | None = None,
            progress: bool = False) -> Explanation:
    """Grad-CAM ("Why P?"), Counterfactual-CAM ("What if not P?"), Contrast-CAM ("Why P, rather than Q?") and the
    interventions occlusion, RISE and SHAPE (:mod:`gradtrust.explanations.perturbation`).

    The model (an ``nn.Module`` or a :class:`gradtrust.LoadedModel`) runs in eval mode with frozen parameters
    and is left exactly as found; ``images``: a preprocessed batch (B, C, H, W) or video (B, C, T, H, W).
    ``methods``: any of :data:`METHODS` (a list or comma-separated string; default the three gradient maps).
    ``layer``: the module whose output is explained (default: the last spatial layer before global pooling;
    for class-token ViTs the last block's first LayerNorm — see ``docs/explanations.md``). ``target`` (P):
    ``None`` (the prediction), an int, or (B,) class ids. ``contrast`` (Q): ``None`` (the highest logit other
    than P), an int, (B,) class ids, or ``"all"`` for the Contrast-CAM of every class (``layer_maps["contrast"]``
    is then (B, C, h, w)). ``gradient_path``: ``"auto"`` (the closed form when the layer feeds GAP + the final
    linear layer, verified on the batch; batched autograd otherwise), ``"closed_form"`` (error when it does not
    apply) or ``"autograd"``. ``chunk_bytes`` bounds one chunk of classes (``contrast="all"``, general path).
    ``perturbation``: the :class:`PerturbationOptions` of occlusion, RISE and SHAPE (masks, grid, patch, stride,
    seed, memory bound; default ``PerturbationOptions()``); ``progress``: a bar over the masked passes.

    Cost: one forward pass with the closed form; otherwise one forward pass with a graph from the layer on
    and one batched backward (over two cotangents, or over chunks of classes for ``contrast="all"``). The
    interventions add ``B·K`` masked single-image passes (``K`` = patches or masks), packed into large batches.
    """
    wanted = parse_methods(methods)
    if isinstance(contrast, str) and contrast != "all":
        raise InputError(f"contrast must be None, class ids or 'all', got {contrast!r}.")
    options = perturbation if perturbation is not None else PerturbationOptions()
    if not isinstance(options, PerturbationOptions):
        raise InputError(f"perturbation must be a PerturbationOptions, got {type(options).__name__}.")
    module = as_module(model)
    x = prepare_images(module, images)
    with scoring_state(module, output_index=output_index):
        return explain_batch(module, x, wanted, layer, target, contrast, gradient_path=gradient_path,
                             chunk_bytes=chunk_bytes, perturbation=options, progress=progress)


def explain_batch(module: nn.Module, x: torch.Tensor, wanted: list[str], layer: str | None = None, target=None,
                  contrast=None, *, gradient_path: str = "auto", chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                  perturbation: PerturbationOptions | None = None, progress: bool = False) -> Explanation:
    """:func:`explain` on a prepared batch of a module already in its scoring state (the run's entry point)."""
    cams = [m for m in wanted if m in CAM_METHODS]
    if cams:
        ex = explain_session(Session(module, x, layer, gradient_path, chunk_bytes), x, cams, target, contrast)
    else:
        ex = forward_explanation(module, x, target)
    add_interventions(module, x, ex, wanted, perturbation or PerturbationOptions(), progress)
    ex.layer_maps = {m: ex.layer_maps[m] for m in wanted}
    return ex


def forward_explanation(module: nn.Module, x: torch.Tensor, target=None) -> Explanation:
    """An :class:`Explanation` with no map yet from one plain forward pass (interventions only: no layer)."""
    with torch.no_grad():
        logits = run_model(module, x).detach()
    p = logits.argmax(1) if target is None else class_ids(target, x.shape[0], logits.shape[1], "target", logits.device)
    return Explanation(layer_maps={}, layer="", target=p, contrast=None, logits=logits.float(),
                       input_size=(x.shape[-2], x.shape[-1]), closed_form=False, valid=torch.isfinite(logits).all(1))


def add_interventions(module: nn.Module, x: torch.Tensor, ex: Explanation, wanted: list[str],
                      options: PerturbationOptions, progress: bool = False) -> None:
    """Add the intervention maps of ``wanted`` (for ``ex.target``) to ``ex``; non-finite samples get zeros."""
    interventions = [m for m in wanted if m in PERTURBATION_METHODS]
    if not interventions:
        return
    maps = perturbation_maps(module, x, ex.logits, ex.target, interventions, options, progress)
    ok = ex.valid[:, None, None]
    ex.layer_maps.update({m: torch.where(ok & torch.isfinite(v), v, torch.zeros_like(v)) for m, v in maps.items()})


def parse_methods(methods: str | Iterable[str]) -> list[str]:
    """``"gradcam,contrast"`` or a list → validated, de-duplicated method names."""
    wanted = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else list(methods)
    wanted = list(dict.fromkeys(m for m in wanted if m))
    unknown = [m for m in wanted if m not in METHODS]
    if unknown or not wanted:
        raise InputError(f"unknown explanation method(s) {unknown}; choose from {', '.join(METHODS)}.")
    return wanted


def explain_session(s: Session, x: torch.Tensor, wanted: list[str], target=None, contrast=None) -> Explanation:
    """The maps of :func:`explain` from an existing :class:`Session` (its forward pass and weights)."""
    all_classes = isinstance(contrast, str)
    batch, device = x.shape[0], s.logits.device
    p = s.logits.argmax(1) if target is None else class_ids(target, batch, s.num_classes, "target", device)
    q = None
    if "contrast" in wanted and not all_classes:
        if contrast is None:
            q = runner_up(s.logits, p)
        else:
            q = class_ids(contrast, batch, s.num_classes, "contrast", device)
            same = q == p
            if same.any():
                raise InputError(f"contrast equals target for sample {int(torch.nonzero(same)[0])} "
                                 f"(class {int(q[same][0])}): 'Why P, rather than P?' has no answer; choose "
                                 "another contrast class or leave contrast=None (the runner-up).")
    acts = s.cap.activations
    out: dict[str, torch.Tensor] = {}
    need_p = bool({"gradcam", "counterfactual"} & set(wanted))
    alpha_p = alpha_q = None
    if need_p and q is not None:
        alpha_p, alpha_q = s.weights.gradcam_and_contrast(p, q)
    elif need_p:
        alpha_p = s.weights.gradcam(p)
    elif q is not None:
        alpha_q = s.weights.contrast(q)
    if alpha_p is not None:
        raw = weighted_map(alpha_p, acts)
        if "gradcam" in wanted:
            out["gradcam"] = s.finish(raw)
        if "counterfactual" in wanted:
            out["counterfactual"] = s.finish(-raw)
    if "contrast" in wanted:
        if alpha_q is not None:
            out["contrast"] = s.finish(weighted_map(alpha_q, acts))
        else:
            parts = [s.finish(weighted_map(a, acts)) for _, a in s.weights.contrast_all()]
            out["contrast"] = torch.cat(parts, dim=1)
    ordered = {m: out[m] for m in wanted}
    return Explanation(layer_maps=ordered, layer=s.spec.name, target=p, contrast=q, logits=s.logits.float(),
                       input_size=(x.shape[-2], x.shape[-1]), closed_form=s.weights.closed_form, valid=s.valid)
