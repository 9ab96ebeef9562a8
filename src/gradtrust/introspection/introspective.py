"""``Introspective``: introspective learning (Prabhushankar & AlRegib, NeurIPS 2022; ``docs/introspection.md``).

Stage 1 is the trained network ``f`` (sensing). Stage 2 (reflection): the introspective features
``r = vec(∂J/∂W) / ‖vec(∂J/∂W)‖₂`` of ``f``'s final linear layer under ``J = MSE(z, 1_C)``
(:mod:`gradtrust.introspection.features`), and a small MLP ``H`` (:mod:`gradtrust.introspection.head`)
trained on ``r`` of a training set to predict the label; the introspective prediction is ``argmax H(r)``.

>>> intro = Introspective(hidden=64, epochs=30, seed=0).fit(model, train_images, train_labels)
>>> out = intro.predict(model, images)
>>> out.logits, out.prediction, out.feed_forward_logits, out.feed_forward_prediction
>>> intro.score_samples(model, images)        # H's maximum softmax probability, higher = more trustworthy

Inference is one forward pass of ``f`` (the features are a closed form of its logits and penultimate
features) plus ``H``. Fitting holds the features as their rank-one factors, ``N·(C + D)`` floats, never the
dense ``N × C·D`` matrix.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from gradtrust.errors import DataError, InputError, ModelError
from gradtrust.estimator import Estimator, check_channels_first, check_int, check_number
from gradtrust.introspection.features import FeatureExtractor, IntrospectiveFeatures
from gradtrust.introspection.head import IntrospectiveHead
from gradtrust.nn.model import as_module, device_of, input_mismatch, prepare_inputs
from gradtrust.scores import Pass, method_specs

__all__ = ["Introspective", "IntrospectiveModel", "IntrospectivePrediction"]

#: The trust scores that are functions of the logits alone (:mod:`gradtrust.functional`): the registered methods
#: that read only the forward pass and are pure functions of its tensors (``cuda_graph_safe``), in registry order.
LOGIT_SCORES = tuple(spec.name for spec in method_specs() if spec.needs == {Pass.FORWARD} and spec.cuda_graph_safe)


@dataclass
class IntrospectivePrediction:
    """What :meth:`Introspective.predict` returns (CPU tensors).

    ``logits`` (B, C) float32 of ``H`` and ``prediction`` (B,) int64 = ``argmax H(r)``; NaN logits and
    prediction −1 where the feature is undefined (``valid`` False: ``∂J/∂W = 0`` or non-finite logits);
    ``feed_forward_logits``/``feed_forward_prediction``: those of ``f`` from the same forward pass.
    """

    logits: torch.Tensor
    prediction: torch.Tensor
    feed_forward_logits: torch.Tensor
    feed_forward_prediction: torch.Tensor
    valid: torch.Tensor

    def trust_scores(self, methods=LOGIT_SCORES, *, feed_forward: bool = False) -> dict[str, torch.Tensor]:
        """Trust scores of ``H``'s logits (or of ``f``'s, ``feed_forward=True``) through
        :mod:`gradtrust.functional`: ``{name: (B,) float64}``, higher = more trustworthy, for the scores of
        :data:`LOGIT_SCORES`. For the others (GradTrust on ``H``'s layer, ODIN…) run :func:`gradtrust.score` on
        :meth:`Introspective.module`."""
        from gradtrust import functional

        logits = self.feed_forward_logits if feed_forward else self.logits
        out = {}
        for name in methods:
            if name not in LOGIT_SCORES:
                raise InputError(f"{name!r} is not a function of the logits alone; choose from "
                                 f"{', '.join(LOGIT_SCORES)}, or use gradtrust.score(intro.module(model), inputs).")
            out[name] = getattr(functional, name)(logits)
        return out


def _batches(data: Any, labels: Any, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(inputs, labels)`` batches from a tensor (+ labels), a DataLoader/iterable of ``(x, y)`` pairs or
    gradtrust ``Batch``es, or a gradtrust dataset (items are ``Sample``s; unreadable ones are skipped)."""
    if isinstance(data, (torch.Tensor, np.ndarray)):
        x = torch.as_tensor(data)
        check_channels_first(tuple(x.shape), "training inputs")
        if labels is None:
            raise InputError("pass the labels of the training inputs: fit(model, inputs, labels).")
        y = torch.as_tensor(np.asarray(labels)).long().reshape(-1)
        if x.shape[0] != y.shape[0]:
            raise InputError(f"{x.shape[0]} training inputs but {y.shape[0]} labels: one label per input.")
        for lo in range(0, x.shape[0], batch_size):
            yield x[lo:lo + batch_size], y[lo:lo + batch_size]
        return
    if labels is not None:
        raise InputError("labels are given separately only with a tensor of inputs; a loader or dataset carries "
                         "its own labels.")
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        from gradtrust.data.samples import collate_samples

        data = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate_samples)
    if not isinstance(data, Iterable):
        raise InputError(f"cannot read training data from a {type(data).__name__}: pass a tensor of inputs and "
                         "labels, a DataLoader of (inputs, labels), or a gradtrust dataset.")
    for item in data:
        if hasattr(item, "inputs") and hasattr(item, "labels"):  # a gradtrust Batch
            if item.inputs is None:
                continue
            yield item.inputs, item.labels
        elif isinstance(item, (tuple, list)) and len(item) >= 2:
            yield torch.as_tensor(item[0]), torch.as_tensor(item[1]).long().reshape(-1)
        else:
            raise InputError(f"a training batch must be (inputs, labels); got a {type(item).__name__}.")


def check_features(y: torch.Tensor, num_classes: int, valid: torch.Tensor) -> None:
    """Clear errors for training features that cannot be fitted: labels outside the model's classes
    (DataError), undefined (NaN) features (InputError)."""
    bad = (y < 0) | (y >= num_classes)
    if bool(bad.any()):
        raise DataError(f"{int(bad.sum())} training label(s) are not classes of the model (it has {num_classes} "
                        f"outputs; labels seen: {sorted(set(y[bad].tolist()))[:8]}): the training set's classes "
                        "differ from the model's. Map the dataset's classes to the model's outputs first.")
    if not bool(valid.all()):
        n_bad = int((~valid).sum())
        raise InputError(f"{n_bad} of {valid.numel()} training sample(s) have NaN introspective features (the "
                         "gradient is zero or the logits are not finite, e.g. all-zero features before the final "
                         "layer): remove them from the training set or check the model.")


class Introspective(Estimator):
    """Introspective learning: fit ``H`` on the introspective features of ``f`` (see the module docstring).

    ``f`` is never saved with ``H``: every method takes it as its first argument. ``hidden``: width of ``H``'s
    hidden layer; ``lr``, ``weight_decay``: Adam's; ``seed``: ``H``'s initialisation and the order of the
    training samples; ``layer``: the ``nn.Linear`` of ``f`` the features come from (default: the final one; any
    other goes through autograd); ``output_index`` (:func:`gradtrust.nn.outputs.logits_of`) is saved with ``H``.
    """

    format_name = "gradtrust.introspective"
    format_version = 2
    fitted_attribute = "head_"
    fit_call = ".fit(model, train_data, labels)"
    saved_by = "fitted introspective network (Introspective.save or `gradtrust introspect fit --out DIR`)"
    unsaved_params = ("progress",)

    def __init__(self, hidden: int = 64, epochs: int = 30, *, lr: float = 1e-3, weight_decay: float = 1e-4,
                 batch_size: int = 128, seed: int = 0, layer: str | None = None, progress: bool = False,
                 output_index: int | str | None = None) -> None:
        self.hidden, self.epochs, self.lr, self.weight_decay = hidden, epochs, lr, weight_decay
        self.batch_size, self.seed, self.layer, self.progress = batch_size, seed, layer, progress
        self.output_index = output_index

    def _check_params(self) -> None:
        for name in ("hidden", "epochs", "batch_size"):
            check_int(name, getattr(self, name))
        check_number("lr", self.lr, strict=True)
        check_number("weight_decay", self.weight_decay)
        check_int("seed", self.seed, minimum=0)

    # ------------------------------------------------------------------------------------------ fit
    def features(self, model: Any, data: Any, labels: Any = None, *, batch_size: int = 256
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The training features as factors: ``(a (N, C), h (N, D), labels (N,), feed-forward logits (N, C))``.

        Raises InputError for an empty set or undefined (NaN) features, DataError for labels outside the
        model's classes.
        """
        self._check_params()
        module = as_module(model)
        extractor = FeatureExtractor(module, self.layer, output_index=self.output_index)
        parts: list[IntrospectiveFeatures] = []
        ys: list[torch.Tensor] = []
        from tqdm import tqdm

        with torch.no_grad():
            for x, y in tqdm(_batches(data, labels, batch_size), desc="introspective features", unit="batch",
                             disable=not self.progress):
                if x.shape[0] == 0:
                    continue
                with input_mismatch(x):
                    parts.append(extractor(prepare_inputs(module, x)))
                ys.append(y.cpu())
        if not parts:
            raise InputError("the training set is empty: introspective learning needs labelled training samples.")
        logits, a, h, valid = (torch.cat(field).cpu() for field in zip(*parts, strict=True))
        y = torch.cat(ys)
        self.layer = extractor.layer
        self.info_: dict[str, Any] = {**getattr(self, "info_", {}), "closed_form": bool(extractor.closed_form)}
        check_features(y, logits.shape[1], valid)
        return a, h, y, logits

    def fit(self, model: Any, data: Any, labels: Any = None) -> Introspective:
        """Fit ``H`` on the introspective features of ``data`` (see :meth:`features` for what it accepts).

        Training: Adam on the cross-entropy of ``H(r)`` against the labels, ``epochs`` passes in a seeded
        random order, full precision on the model's device.
        """
        t0 = time.perf_counter()
        a, h, y, logits = self.features(model, data, labels)
        return self.fit_features(a, h, y, logits, device=device_of(as_module(model)), t0=t0)

    def fit_features(self, a: torch.Tensor, h: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, *,
                     device: torch.device | str = "cpu", t0: float | None = None) -> Introspective:
        """Fit ``H`` on features already extracted (the factors of :meth:`features`, or
        :func:`gradtrust.introspection.cache.cached_features`)."""
        self._check_params()
        t0 = time.perf_counter() if t0 is None else t0
        device = torch.device(device)
        classes = torch.unique(y)
        if classes.numel() < 2:
            raise InputError(f"the training set holds one class only ({int(classes[0])}): H learns to tell "
                             "classes apart and needs at least two.")
        generator = torch.Generator().manual_seed(self.seed)
        head = IntrospectiveHead(a.shape[1], h.shape[1], self.hidden, generator=generator).to(device)
        opt = torch.optim.Adam(head.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        n = y.shape[0]
        history = []
        from tqdm import tqdm

        head.train()
        for _ in tqdm(range(self.epochs), desc="training H", unit="epoch", disable=not self.progress):
            order = torch.randperm(n, generator=generator)
            total = 0.0
            for lo in range(0, n, self.batch_size):
                idx = order[lo:lo + self.batch_size]
                out = head(a[idx].to(device), h[idx].to(device))
                loss = nn.functional.cross_entropy(out, y[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * idx.numel()
            history.append(total / n)
        head.eval()
        with torch.no_grad():
            train_pred = torch.cat([head(a[lo:lo + 1024].to(device), h[lo:lo + 1024].to(device)).argmax(1).cpu()
                                    for lo in range(0, n, 1024)])
        self.head_ = head
        self.info_ = {**getattr(self, "info_", {}), **{
            "train_samples": n, "num_classes": int(a.shape[1]), "num_features": int(h.shape[1]),
            "layer": self.layer, "train_loss": [round(v, 6) for v in history],
            "train_accuracy": float((train_pred == y).float().mean()),
            "train_accuracy_feed_forward": float((logits.argmax(1) == y).float().mean()),
            "fit_seconds": round(time.perf_counter() - t0, 3),
        }}
        return self

    # -------------------------------------------------------------------------------------- predict
    def _extractor_for(self, module: nn.Module) -> FeatureExtractor:
        """One extractor per model, kept between calls: its layer discovery (one extra forward of one
        sample) then happens once, not on every ``predict``."""
        cached = getattr(self, "_extractor", None)
        if cached is None or cached[0] is not module or cached[1] != self.layer:
            cached = (module, self.layer, FeatureExtractor(module, self.layer, output_index=self.output_index))
            self._extractor = cached
        return cached[2]

    def module(self, model: Any) -> IntrospectiveModel:
        """``f`` and ``H`` as one ``nn.Module`` (input → ``H``'s logits), e.g. for :func:`gradtrust.score`."""
        return IntrospectiveModel(as_module(model), self.check_fitted(), self.layer, self.output_index)

    def predict(self, model: Any, inputs: torch.Tensor, *, batch_size: int = 256) -> IntrospectivePrediction:
        """``H``'s and ``f``'s logits and predictions for a batch of model-ready inputs (one forward of ``f``)."""
        head = self.check_fitted()
        module = as_module(model)
        if not isinstance(inputs, torch.Tensor) or inputs.dim() < 2 or inputs.shape[0] == 0:
            raise InputError("inputs must be a non-empty batch tensor (batch first), ready for the model.")
        check_channels_first(tuple(inputs.shape), "inputs")
        extractor = self._extractor_for(module)
        outs = []
        with torch.no_grad(), input_mismatch(inputs):
            for lo in range(0, inputs.shape[0], batch_size):
                f = extractor(prepare_inputs(module, inputs[lo:lo + batch_size]))
                if f.a.shape[1] != head.num_classes or f.h.shape[1] != head.num_features:
                    raise ModelError(f"H was fitted on features of shape ({head.num_classes}, {head.num_features}); "
                                     f"this model gives ({f.a.shape[1]}, {f.h.shape[1]}): not the model H was "
                                     "fitted on.")
                outs.append((head(f.a, f.h).float(), f))
        logits = torch.cat([o for o, _ in outs]).cpu()
        valid = torch.cat([f.valid for _, f in outs]).cpu()
        ff = torch.cat([f.logits for _, f in outs]).cpu()
        prediction = torch.where(valid, logits.nan_to_num(nan=0.0).argmax(1), torch.full_like(valid, -1, dtype=torch.long))
        logits[~valid] = float("nan")
        return IntrospectivePrediction(logits, prediction, ff, ff.argmax(1), valid)

    def score_samples(self, model: Any, inputs: torch.Tensor, *, method: str = "softmax") -> np.ndarray:
        """A trust score of ``H``'s logits per sample (N,) float64, higher = more trustworthy: ``method`` is
        one of :data:`LOGIT_SCORES` (default the maximum softmax probability); NaN where the feature is
        undefined."""
        return self.predict(model, inputs).trust_scores([method])[method].double().numpy()

    # ------------------------------------------------------------------------------------ save/load
    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``H``'s shape and training facts; its weights."""
        head = self.head_
        state = {"num_classes": head.num_classes, "num_features": head.num_features, "info": self.info_}
        return state, {k: v.detach().cpu().numpy() for k, v in head.state_dict().items()}

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        head = IntrospectiveHead(state["num_classes"], state["num_features"], self.hidden)
        head.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in arrays.items()})
        self.head_ = head.eval()
        self.info_ = dict(state["info"])


class IntrospectiveModel(nn.Module):
    """``x ↦ H(r(f, x))``: the network the introspective prediction comes from, as one module (its final
    ``nn.Linear`` is ``H``'s output layer, so every trust score of :func:`gradtrust.score` applies to it).
    Samples whose feature is undefined get NaN logits."""

    def __init__(self, model: nn.Module, head: IntrospectiveHead, layer: str | None = None,
                 output_index: int | str | None = None) -> None:
        super().__init__()
        self.model, self.head = model, head
        self._extractor = FeatureExtractor(model, layer, output_index=output_index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self._extractor(x)
        a = torch.nan_to_num(f.a, nan=0.0).to(self.head.first.dtype)
        h = torch.nan_to_num(f.h, nan=0.0).to(self.head.first.dtype)
        logits = self.head(a, h)
        if not bool(f.valid.all()):
            # in place, so that the output stays the output of H's final nn.Linear (gradtrust.score then uses
            # its closed forms on H)
            logits.masked_fill_(~f.valid[:, None].to(logits.device), math.nan)
        return logits
