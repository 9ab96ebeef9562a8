"""The items every dataset yields, and the collate function that sets unreadable samples aside.

A dataset never raises for one bad file: it returns a :class:`Sample` with ``input=None`` and the reason,
so that a long run records the failure and goes on (see ``docs/architecture.md``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import torch

from gradtrust.errors import DataError


class Sample(NamedTuple):
    """One dataset item: the model-ready tensor (or ``None`` when unreadable) and where it came from."""

    input: torch.Tensor | None
    label: int
    index: int  # type: ignore[assignment]  # a field named like tuple.index, part of the public API
    path: str
    error: str = ""


class Batch(NamedTuple):
    """A collated batch: the readable samples stacked, the unreadable ones listed in ``failures``."""

    inputs: torch.Tensor | None
    labels: torch.Tensor
    indices: torch.Tensor
    paths: list[str]
    failures: list[tuple[int, str, str]]

    def __len__(self) -> int:
        return len(self.paths)


def collate_samples(samples: Sequence[Sample]) -> Batch:
    """Stack the readable samples of a list into a :class:`Batch`; failed ones go to ``failures``.

    ``inputs`` is ``None`` when every sample of the batch failed.
    """
    good = [s for s in samples if s.input is not None and not s.error]
    failures = [(int(s.index), str(s.path), s.error or "unreadable") for s in samples if s.input is None or s.error]
    inputs = torch.stack([s.input for s in good if s.input is not None]) if good else None
    return Batch(
        inputs=inputs,
        labels=torch.tensor([s.label for s in good], dtype=torch.int64),
        indices=torch.tensor([s.index for s in good], dtype=torch.int64),
        paths=[s.path for s in good],
        failures=failures,
    )


def check_file(path: str | os.PathLike) -> str:
    """``path`` as a string if it names a non-empty readable file; else :class:`DataError` with a short,
    stable reason (``file not found``, ``empty file (0 bytes)``, ``cannot read file: …``) to record."""
    path = os.fspath(path)
    try:
        if os.path.getsize(path) == 0:
            raise DataError("empty file (0 bytes)")
    except FileNotFoundError:
        raise DataError("file not found") from None
    except OSError as exc:
        raise DataError(f"cannot read file: {exc.strerror or exc}") from None
    return path
