"""Timing shared by the benchmark scripts (run as ``python benchmarks/<script>.py``, so this folder is on the path):
wall time of one call, synchronised on a GPU, and the interleaved minima of a call against a plain forward pass."""

from __future__ import annotations

import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    """Wall time of ``fn()``, with the GPU's queued work finished before and after."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def ratio_to_forward(model, x, work, repeats: int, device) -> tuple[float, float]:
    """(min time of ``work``, min time of a plain forward of ``x``) over interleaved repeats, after one warm-up each
    (allocator, kernels, hook discovery): interleaving puts both under the same load."""

    def forward():
        with torch.no_grad():
            model(x)

    forward(), work()
    works, forwards = [], []
    for _ in range(repeats):
        forwards.append(timed(forward, device))
        works.append(timed(work, device))
    return min(works), min(forwards)
