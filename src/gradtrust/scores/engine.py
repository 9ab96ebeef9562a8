"""``gradtrust.score``: every requested trust score of one batch, each network pass run at most once."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from gradtrust.errors import InputError, ModelError
from gradtrust.nn.model import as_module, input_mismatch, prepare_inputs
from gradtrust.nn.state import scoring_state
from gradtrust.scores.graphs import capturable, run_captured, use_graphs
from gradtrust.scores.options import ScoreOptions
from gradtrust.scores.packing import NONFINITE, Layout, pack, to_host, unpack
from gradtrust.scores.passes import BatchPasses
from gradtrust.scores.registry import MethodSpec, available_methods, get_method
from gradtrust.scores.result import ScoreResult
from gradtrust.scores.spec import Pass, PassSpec
from gradtrust.scores.view import BatchView


def resolve_methods(methods: str | Iterable[str] | None) -> tuple[list[MethodSpec], bool]:
    """Turn ``None``/``"all"``/``"a,b"``/``["a", "b"]`` into registered methods; also say whether the list
    was explicit (explicit methods that cannot apply raise, default ones are skipped with a reason)."""
    if methods is None or methods == "all" or (not isinstance(methods, str) and list(methods) == ["all"]):
        return [get_method(name) for name in available_methods()], False
    names = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else list(methods)
    names = [n for n in names if n]
    if not names:
        raise InputError(f"no methods given; choose from: {', '.join(available_methods())}, or 'all'.")
    unique = list(dict.fromkeys(names))
    return [get_method(name) for name in unique], True


def score(model, inputs, methods: str | Iterable[str] | None = None, *, sample_ids=None,
          output_index: int | str | None = None, **options) -> ScoreResult:
    """Trust scores of a batch: ``result[name]`` has one float64 value per sample, higher = more trustworthy.

    Args:
        model: a classifier ``nn.Module`` (or a :class:`gradtrust.models.LoadedModel`) mapping a batch to
            logits (B, C). It is scored in eval mode and left exactly as it was found.
        inputs: a preprocessed float batch (B, ...), moved to the model's device and dtype.
        methods: names from :func:`gradtrust.available_methods` (a list, or a comma-separated string);
            ``None`` or ``"all"`` = every method that applies to this model (the others are listed in
            ``result.skipped``). An explicitly requested method that cannot apply raises an error.
        sample_ids: stable ids of the samples (default ``0..B−1``); MC-dropout masks depend on them, so a
            sample scores the same in any batch.
        output_index: for a model whose forward returns several outputs (a tuple, list or dict), the one that
            holds the logits (:func:`gradtrust.nn.outputs.logits_of`); without it such a model raises
            :class:`ModelError`.
        **options: the options the methods and the engine declare (``gradtrust methods`` lists them with their
            defaults; :class:`gradtrust.scores.options.ScoreOptions`), e.g. ``odin_temperature``, ``layer``,
            ``micro_batch`` (score a large batch in slices: bounds the gradient passes' memory).

    A sample whose logits are not finite has no prediction (``result.prediction`` −1, the reason in
    ``result.prediction_reasons``) and every score NaN with the reason ``"non-finite logits"``.

    Cost: the forward-pass scores (softmax, entropy, max_logit, margin, brier, logit_margin, energy, doctor,
    maxlogit_pnorm, gradtrust, gradtrust_topk, gradnorm) share one forward pass; ODIN adds an input-gradient
    pass and a forward; Purview a backward with per-sample parameter gradients; MC dropout ``T`` forwards.
    """
    module = as_module(model)
    chosen, explicit = resolve_methods(methods)
    opts = ScoreOptions.from_kwargs(**options)
    x = prepare_inputs(module, inputs)
    batch = x.shape[0]
    ids = torch.arange(batch) if sample_ids is None else torch.as_tensor(sample_ids, dtype=torch.int64).flatten()
    if ids.shape[0] != batch:
        raise InputError(f"sample_ids has {ids.shape[0]} entries for a batch of {batch} samples.")
    needs: frozenset[PassSpec] = frozenset({Pass.FORWARD}).union(*(m.needs for m in chosen))
    if opts.micro_batch is not None and batch > opts.micro_batch:
        step = opts.micro_batch
        return ScoreResult.concatenate([score(module, x[s:s + step], [m.name for m in chosen] if explicit else None,
                                              sample_ids=ids[s:s + step], output_index=output_index, **options)
                                        for s in range(0, batch, step)])

    state = scoring_state(module, freeze=False, output_index=output_index)  # BatchPasses freezes before any graph
    with state:
        passes = BatchPasses(module, x, opts, ids, needs, freeze=state.freeze)
        with input_mismatch(x):
            logits = passes.logits
        runnable: list[MethodSpec] = []
        skipped: dict[str, str] = {}
        parameters: dict[str, dict[str, Any]] = {}
        for method in chosen:
            view = BatchView(passes, method.name, method.needs)
            problem = _why_not_applicable(method, passes, view)
            if problem is not None:
                if explicit:
                    raise ModelError(f"{method.name}: {problem}")
                skipped[method.name] = problem
                continue
            runnable.append(method)
            parameters[method.name] = _method_parameters(method, passes, view)
        groups = _compute(passes, runnable)
        host = to_host([packed for packed, _ in groups] + [passes.finite, passes.prediction, logits.float()])
        scores, reasons = {}, {}
        for (_, layout), packed_host in zip(groups, host[:len(groups)], strict=True):
            group_scores, group_reasons = unpack(packed_host, layout)
            scores.update(group_scores)
            reasons.update(group_reasons)
        order = [m.name for m in runnable]  # the order the methods were asked for
        scores = {name: scores[name] for name in order}
        reasons = {name: reasons[name] for name in order}
        info: dict[str, Any] = {"final_layer": passes.final_layer_name, "num_classes": passes.num_classes}
        if any(Pass.COUNTERFACTUAL_GRADIENTS in method.needs for method in runnable):
            info["gradient_path"] = "autograd" if passes.uses_autograd_path else "closed_form"
            info["gradient_layer"] = opts.layer or passes.final_layer_name
        if passes.purview_backend_used:
            info["purview_backend"] = passes.purview_backend_used
            if passes.purview_fallback:  # submodules whose norms came from per-sample autograd
                info["purview_fallback"] = dict(passes.purview_fallback)
        # A sample whose logits are not finite has no prediction: −1, with the reason (never argmax of NaN).
        finite = host[-3].astype(bool)
        prediction = torch.from_numpy(np.where(finite, host[-2], -1).astype(np.int64))
        why = [] if finite.all() else [("" if ok else NONFINITE) for ok in finite.tolist()]
        return ScoreResult(scores=scores, prediction=prediction, logits=torch.from_numpy(host[-1]),
                           reasons=reasons, skipped=skipped, parameters=parameters, info=info,
                           prediction_reasons=why)


def _compute(passes: BatchPasses, methods: list[MethodSpec]) -> list[tuple[torch.Tensor, Layout]]:
    """Every method's output, packed on the model's device: the forward-pass scores by CUDA-graph replay
    where that applies (:mod:`gradtrust.scores.graphs`), the others op by op."""
    groups = []
    eager = methods
    if methods and use_graphs(passes):
        captured = [m for m in methods if capturable(m, passes)]
        replayed = run_captured(passes, captured) if captured else None
        if replayed is not None:
            groups.append(replayed)
            eager = [m for m in methods if m not in captured]
    if eager or not groups:
        outputs = {m.name: m(BatchView(passes, m.name, m.needs)) for m in eager}
        groups.append(pack(outputs, ~passes.finite))
    return groups


def _why_not_applicable(method: MethodSpec, passes: BatchPasses, view: BatchView) -> str | None:
    """Why ``method`` cannot run on this model: a pass it needs cannot run, or its own ``applies`` says so."""
    for needed in Pass:  # registration order, so the reason given is stable
        if needed in method.needs and needed.unavailable is not None:
            problem = needed.unavailable(passes)
            if problem is not None:
                return problem
    return method.applies(view) if method.applies is not None else None


def _method_parameters(method: MethodSpec, passes: BatchPasses, view: BatchView) -> dict[str, Any]:
    """The value of every option ``method`` reads, as actually used (``resolve``; ``layer`` named)."""
    params = {name: passes.options.get(name) for name in method.parameter_names}
    if method.resolve is not None:
        params = {name: method.resolve(view, name, value) for name, value in params.items()}
    if "layer" in params and params["layer"] is None:
        params["layer"] = passes.final_layer_name
    return params
