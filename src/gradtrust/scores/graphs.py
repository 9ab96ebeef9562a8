"""The forward-pass scores of a batch, replayed on a GPU as one captured CUDA graph.

The forward-pass scores (softmax, entropy, … gradtrust, gradnorm) are cheap arithmetic on the logits and the
penultimate features, but launched one operation at a time from Python they are ~150 tiny kernels: on an
H100 that cost ~3 ms per batch, half of resnet50's forward at batch 32 (``benchmarks/bench_networks.py
--device cuda``). So the first batch of a given shape is *captured* (``torch.cuda.CUDAGraph``) on static copies
of the logits and features; every later batch copies its own into them and *replays* the record: one launch,
the same numbers bit for bit.

Only ``cuda_graph_safe`` methods are captured, and those reading the counterfactual gradients only where these
come in closed form: another method could read something (the input, the model) a replay would not update. A
capture that fails is remembered and those methods run op by op. Each captured set keeps a small memory pool
as long as the model keeps its structure (:mod:`gradtrust.nn.cache`, namespace ``"cuda_graphs"``); at most
:data:`MAX_GRAPHS_PER_MODEL` per model. ``cuda_graphs=False`` turns this off.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import torch
from torch import nn

from gradtrust.nn import cache
from gradtrust.scores.packing import Layout, pack
from gradtrust.scores.passes import BatchPasses
from gradtrust.scores.registry import MethodSpec
from gradtrust.scores.spec import Pass
from gradtrust.scores.view import BatchView

#: Captured method stages kept per model (batch shapes × method sets × options), oldest dropped first.
MAX_GRAPHS_PER_MODEL = 8


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    logits: torch.Tensor  # static inputs, overwritten before each replay
    features: torch.Tensor | None
    packed: torch.Tensor  # static output, overwritten by each replay
    layout: Layout


_FAILED = object()  # a key whose capture failed: run its methods op by op


def _graphs_of(model: nn.Module) -> OrderedDict[Hashable, object]:
    """The captured stages of ``model``, oldest first, kept in the per-model cache."""
    return cache.cached(model, "cuda_graphs", None, OrderedDict)


def capturable(method: MethodSpec, passes: BatchPasses) -> bool:
    """Whether ``method`` may run inside a captured graph on this batch (see the module docstring)."""
    return method.cuda_graph_safe and (Pass.COUNTERFACTUAL_GRADIENTS not in method.needs
                                       or not passes.uses_autograd_path)


def use_graphs(passes: BatchPasses) -> bool:
    """Whether this batch's capturable methods go through a CUDA graph: on a GPU, unless turned off."""
    return passes.options.cuda_graphs and passes.forward_logits.is_cuda and not torch.cuda.is_current_stream_capturing()


def run_captured(passes: BatchPasses, methods: list[MethodSpec]) -> tuple[torch.Tensor, Layout] | None:
    """The packed outputs (:func:`gradtrust.scores.packing.pack`) of ``methods`` on this batch by graph replay,
    capturing the graph first if this is the first batch of its kind; None if it cannot be captured.

    The returned tensor is the graph's static output: copy it (``to_host`` does) before the next call.
    """
    logits = passes.forward_logits
    features = passes.final_layer_input
    key = (tuple(m.name for m in methods), passes.options, passes.final_layer_name, logits.device,
           logits.shape, logits.dtype, logits.stride(),
           None if features is None else (features.shape, features.dtype, features.stride()))
    per_model = _graphs_of(passes.model)
    captured = per_model.get(key)
    if captured is None:
        captured = _capture(passes, methods, logits, features)
        per_model[key] = captured
        while len(per_model) > MAX_GRAPHS_PER_MODEL:
            per_model.popitem(last=False)
    if not isinstance(captured, _Captured):
        return None
    per_model.move_to_end(key)
    captured.logits.copy_(logits)
    if captured.features is not None and features is not None:
        captured.features.copy_(features)
    captured.graph.replay()
    return captured.packed, captured.layout


def _capture(passes: BatchPasses, methods: list[MethodSpec], logits: torch.Tensor,
             features: torch.Tensor | None) -> _Captured | object:
    static_logits = logits.clone()
    static_features = None if features is None else features.clone()

    def stage() -> tuple[torch.Tensor, Layout]:
        shadow = passes.over_outputs(static_logits, static_features)
        outputs = {m.name: m(BatchView(shadow, m.name, m.needs)) for m in methods}
        return pack(outputs, ~shadow.finite)

    device = logits.device
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    try:
        # Warm up on the side stream first, so that lazy initialisations (libraries, kernels) happen outside
        # the capture, as torch.cuda.graphs asks; then capture there. (``with torch.cuda.graph(...)`` would
        # also run gc.collect() and empty the allocator's cache: ~0.7 s per capture in a process holding a
        # dataset run's objects.)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            stage()
            graph = torch.cuda.CUDAGraph()
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                packed, layout = stage()
            finally:
                graph.capture_end()
        current.wait_stream(side)
    except Exception:  # noqa: BLE001 - an operation CUDA cannot record: these methods run op by op
        current.wait_stream(side)
        return _FAILED
    return _Captured(graph, static_logits, static_features, packed, layout)


def captured_graphs(model: nn.Module) -> int:
    """How many method stages are captured for ``model`` (failed captures not counted)."""
    return sum(isinstance(c, _Captured) for c in _graphs_of(model).values())
