"""One device-to-host transfer per batch: every method's values and NaN masks, the prediction and the logits.

:func:`pack` stacks the methods' outputs, left on the model's device, into one float64 tensor and its
:class:`Layout`; :func:`to_host` copies several such tensors to the CPU in one transfer (one GPU synchronisation
per batch, whatever the number of methods); :func:`unpack` applies the NaN policy on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gradtrust.scores.spec import MethodOutput

NONFINITE = "non-finite logits"
OVERFLOW = "the score is not a number for this sample (numerical overflow)"


@dataclass(frozen=True)
class Layout:
    """The rows of a packed tensor: one per method (in order), then one mask per reason."""

    methods: tuple[str, ...]
    reasons: tuple[tuple[str, ...], ...]  # each method's ``undefined`` reasons, in priority order


def pack(outputs: dict[str, MethodOutput], not_finite: torch.Tensor) -> tuple[torch.Tensor, Layout]:
    """``outputs`` and the non-finite-logits mask as one (methods + 1 + masks, B) float64 tensor, and its layout."""
    device = not_finite.device
    values = [o.values.detach().to(device=device, dtype=torch.float64) for o in outputs.values()]
    masks = [not_finite] + [m.to(device) for o in outputs.values() for m in o.undefined.values()]
    packed = torch.cat([torch.stack(values), torch.stack(masks).to(torch.float64)]) if values else \
        torch.stack(masks).to(torch.float64)
    layout = Layout(tuple(outputs), tuple(tuple(o.undefined) for o in outputs.values()))
    return packed, layout


def to_host(tensors: list[torch.Tensor]) -> list[np.ndarray]:
    """Copy ``tensors`` (one device, dtypes numpy has) to the CPU as arrays of the same shapes and dtypes, in one
    transfer: their bytes are concatenated on the device and split again on the host."""
    if not tensors:
        return []
    raw = torch.cat([t.detach().contiguous().reshape(-1).view(torch.uint8) for t in tensors]).cpu().numpy()
    out, start = [], 0
    for t in tensors:
        size = t.numel() * t.element_size()
        dtype = torch.empty((), dtype=t.dtype).numpy().dtype
        out.append(raw[start:start + size].view(dtype).reshape(tuple(t.shape)))
        start += size
    return out


def unpack(packed: np.ndarray, layout: Layout) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """The NaN policy on a packed group: ``({method: (B,) float64}, {method: [reason or ""] * B})``.

    A value is NaN, with the first reason that holds, where the logits are not finite, where one of the
    method's ``undefined`` masks holds, or where it came out NaN anyway (overflow).
    """
    n = len(layout.methods)
    all_values, all_masks = packed[:n], packed[n:].astype(bool)
    batch = packed.shape[1]
    if not all_masks.any() and not np.isnan(all_values).any():  # the usual batch: every value defined
        return ({name: torch.from_numpy(all_values[k].copy()) for k, name in enumerate(layout.methods)},
                {name: [""] * batch for name in layout.methods})
    any_mask = np.asarray(all_masks.any(axis=1))
    any_nan = np.asarray(np.isnan(all_values).any(axis=1))
    scores, reasons = {}, {}
    row = 1  # all_masks[0] is the non-finite-logits mask shared by every method
    for k, (name, texts_own) in enumerate(zip(layout.methods, layout.reasons, strict=True)):
        rows = [0, *range(row, row + len(texts_own))]
        row += len(texts_own)
        vals = all_values[k].copy()
        if not any_nan[k] and not any_mask[rows].any():  # the usual case: defined everywhere
            scores[name], reasons[name] = torch.from_numpy(vals), [""] * batch
            continue
        codes = np.zeros(batch, dtype=np.int64)
        for code in range(len(rows), 0, -1):  # the first reason that holds wins
            codes[all_masks[rows[code - 1]]] = code
        codes[(codes == 0) & np.isnan(vals)] = len(rows) + 1
        vals[codes > 0] = np.nan
        scores[name] = torch.from_numpy(vals)
        reasons[name] = np.array(["", NONFINITE, *texts_own, OVERFLOW], dtype=object)[codes].tolist()
    return scores, reasons
