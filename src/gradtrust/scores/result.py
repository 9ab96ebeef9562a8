"""What :func:`gradtrust.score` returns."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch

from gradtrust.schema import reason_column


@dataclass
class ScoreResult(Mapping):
    """Trust scores of one batch: ``result[name]`` is a 1-D float64 CPU tensor, higher = more trustworthy.

    Attributes:
        scores: ``{method: (B,) float64}`` in the order the methods were asked for.
        prediction: ``ŷ = argmax_c z_c`` (B,) int64; −1 where the logits are not finite (no prediction).
        logits: the model's logits (B, C) float32 on the CPU.
        reasons: ``{method: [str] * B}``: why a value is NaN ("" where it is defined).
        skipped: ``{method: reason}`` for default methods that do not apply to this model.
        parameters: ``{method: {option: value}}``: the options each method read.
        info: how the scores were computed (final layer name, gradient path, Purview backend).
        prediction_reasons: why a sample has no prediction (``"non-finite logits"``), ``""`` where it has one;
            empty when every sample has one. :meth:`to_dataframe` writes it as ``nan_reason_prediction``.
    """

    scores: dict[str, torch.Tensor]
    prediction: torch.Tensor
    logits: torch.Tensor
    reasons: dict[str, list[str]]
    skipped: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, dict] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    prediction_reasons: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self.scores[name]
        except KeyError:
            extra = f" It was skipped: {self.skipped[name]}" if name in self.skipped else ""
            raise KeyError(f"no score {name!r} in this result (scores: {', '.join(self.scores)}).{extra}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.scores)

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def concatenate(cls, parts: list[ScoreResult]) -> ScoreResult:
        """The result of consecutive slices of one batch, as one result (``skipped`` and ``parameters`` from
        the first slice; ``info`` merged, a later slice's Purview fallbacks added)."""
        first = parts[0]
        info = dict(first.info)
        fallback = {k: v for part in parts for k, v in part.info.get("purview_fallback", {}).items()}
        if fallback:
            info["purview_fallback"] = fallback
        why = ([r for p in parts for r in (p.prediction_reasons or [""] * p.batch_size)]
               if any(p.prediction_reasons for p in parts) else [])
        return cls(scores={name: torch.cat([p.scores[name] for p in parts]) for name in first.scores},
                   prediction=torch.cat([p.prediction for p in parts]), logits=torch.cat([p.logits for p in parts]),
                   reasons={name: [r for p in parts for r in p.reasons[name]] for name in first.reasons},
                   skipped=dict(first.skipped), parameters=dict(first.parameters), info=info,
                   prediction_reasons=why)

    @property
    def methods(self) -> list[str]:
        return list(self.scores)

    @property
    def batch_size(self) -> int:
        return int(self.prediction.shape[0])

    def nan_reasons(self, name: str) -> dict[int, str]:
        """``{sample position: reason}`` for every NaN value of score ``name``."""
        return {i: r for i, r in enumerate(self.reasons[name]) if r}

    def to_dataframe(self, reasons: bool = True):
        """One row per sample: ``prediction``, one float64 column per method and, where a method produced
        a NaN, a ``nan_reason_<method>`` column; ``nan_reason_prediction`` where a sample has no prediction
        (pandas is imported lazily)."""
        import pandas as pd

        frame = pd.DataFrame({"prediction": self.prediction.numpy(),
                              **{name: values.numpy() for name, values in self.scores.items()}})
        if reasons and any(self.prediction_reasons):
            frame[reason_column("prediction")] = self.prediction_reasons
        if reasons:
            for name, why in self.reasons.items():
                if any(why):
                    frame[reason_column(name)] = why
        return frame
