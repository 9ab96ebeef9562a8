"""`SelectOutput`: score a model whose forward returns several outputs (a tuple, a list, a dict).

GradTrust needs one logits tensor per batch. A model that returns ``(logits, features)`` (or a dict) is
wrapped so that its forward returns ``output[index]``: ``load_model(..., output_index=0)`` or
``gradtrust score --output-index 0``. The wrapped model's layers are named ``model.<name>`` (for
``--option layer=…``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gradtrust.errors import ModelError

__all__ = ["SelectOutput"]


class SelectOutput(nn.Module):
    """``forward(x) = model(x)[index]`` (an int for tuples/lists, a key for dicts)."""

    def __init__(self, model: nn.Module, index: int | str) -> None:
        super().__init__()
        self.model = model
        self.index = index

    def forward(self, x: torch.Tensor) -> Any:
        out = self.model(x)
        try:
            return out[self.index]
        except (IndexError, KeyError, TypeError) as exc:
            size = f" of {len(out)} outputs" if isinstance(out, (tuple, list, dict)) else ""
            raise ModelError(f"output_index={self.index!r} does not select an output of the model: it returned "
                             f"a {type(out).__name__}{size}") from exc

    def extra_repr(self) -> str:
        return f"index={self.index!r}"
