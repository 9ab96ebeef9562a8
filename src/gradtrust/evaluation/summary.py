"""Every metric at once: for one score (:func:`evaluate`), for a results table (:func:`evaluate_frame`), and
batch by batch (:class:`TrustEvaluator`, torchmetrics style)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gradtrust import schema
from gradtrust.errors import InputError, UnknownNameError
from gradtrust.evaluation import risk as _risk
from gradtrust.evaluation import selective as _sel
from gradtrust.evaluation._inputs import as_labels, as_scores, check_lengths
from gradtrust.evaluation.bootstrap import bootstrap_ci, check_settings, percentile_interval, vectorised_bootstrap
from gradtrust.evaluation.references import oracle_reference, random_reference

__all__ = ["METRICS", "evaluate", "evaluate_frame", "TrustEvaluator"]

#: The metrics :func:`evaluate` returns, in table order. AUAC/AUFC in [0, 100]; the others are fractions.
METRICS = ("auac", "aufc", "aurc", "eaurc", "augrc", "auroc", "fpr_at_95tpr")


def evaluate(
    scores: Any,
    labels: Any,
    predictions: Any,
    *,
    ci: bool = False,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int | None = 0,
) -> dict[str, float]:
    """Every metric of docs/methods.md ("Evaluation protocol") for one trust score.

    ``scores``: higher = more trustworthy; NaN = undefined (counted in ``n_nan``, ranked least trustworthy by
    every metric); ``correct = labels == predictions``. ``ci`` adds bootstrap percentile intervals
    ``<metric>_low`` / ``<metric>_high`` for every metric (:func:`gradtrust.evaluation.bootstrap_ci`, all
    metrics on the same resamples of ``n_resamples``, ``confidence``, ``seed``).

    Returns ``n`` (samples), ``n_nan`` (NaN scores), ``accuracy``, then ``auac``, ``aufc`` (in [0, 100]),
    ``aurc``, ``eaurc``, ``augrc``, ``auroc``, ``fpr_at_95tpr`` (fractions; ``auroc`` and ``fpr_at_95tpr`` NaN
    when all predictions are correct or all wrong), and the intervals if ``ci``. An ``InputError`` for empty
    input, different lengths or undefined labels.
    """
    (s, y, p), ranked, c, g, f1 = _sel._classified(scores, labels, predictions)
    if ci:
        check_settings(n_resamples, confidence)
    out: dict[str, float] = {
        "n": len(s),
        "n_nan": ranked.n_nan,
        "accuracy": float(c.mean()),
        "auac": float(100.0 * _sel._accuracy_curve_groups(g).mean()),
        "aufc": float(100.0 * f1.mean()),
        "aurc": float(_risk._aurc_groups(g)[0]),
        "eaurc": float(_risk._eaurc_groups(g)[0]),
        "augrc": float(_risk._augrc_groups(g)[0]),
        "auroc": float(_risk._auroc_groups(g)[0]),
        "fpr_at_95tpr": float(_risk._fpr95_groups(g)[0]),
    }
    if ci:
        dists = vectorised_bootstrap(list(METRICS), s, y, p, int(n_resamples), seed)
        for name in METRICS:
            out[f"{name}_low"], out[f"{name}_high"] = percentile_interval(dists[name], float(confidence))
    return out


def _default_methods(df: Any) -> list[str]:
    methods = schema.method_columns(df)
    if not methods:
        raise InputError(
            "The results table has no score column (a float column besides "
            f"{', '.join(schema.BASE_COLUMNS)}); columns: {list(df.columns)}."
        )
    return methods


def evaluate_frame(
    df: Any,
    methods: Sequence[str] | None = None,
    *,
    ci: bool = False,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int | None = 0,
    references: bool = False,
) -> Any:
    """Every metric for every method of a results table: a pandas DataFrame, one row per method.

    ``df``: a results DataFrame (``scores.parquet``): ``label``, ``prediction`` and one float column per method
    (higher = more trustworthy, NaN when undefined). ``methods``: the score columns to evaluate, in row order;
    default every float column other than ``index``, ``path``, ``label``, ``prediction``, ``correct`` and
    ``nan_reason_*``. ``ci``, ``n_resamples``, ``confidence``, ``seed``: as in :func:`evaluate`.
    ``references`` appends the rows ``random_reference`` and ``oracle_reference``
    (:mod:`gradtrust.evaluation.references`; NaN where a reference does not define a metric).

    The result is indexed by ``method``, with the columns of :func:`evaluate` plus ``n_unlabeled``: rows with an
    unknown label (``label < 0``, the dataset convention) are left out of every metric and counted.
    ``correct`` is recomputed as ``label == prediction``.
    """
    import pandas as pd

    missing = [col for col in ("label", "prediction") if col not in df.columns]
    if missing:
        raise InputError(
            f"The results table lacks the column(s) {missing}; it has {list(df.columns)}."
        )
    if methods is None:
        methods = _default_methods(df)
    else:
        methods = list(methods)
        unknown = [mt for mt in methods if mt not in df.columns]
        if unknown:
            raise UnknownNameError(
                f"Method column(s) {unknown} are not in the results table; "
                f"available: {_default_methods(df)}."
            )
    labels = df["label"].to_numpy()
    predictions = df["prediction"].to_numpy()
    keep = np.ones(len(df), dtype=bool)
    if np.issubdtype(labels.dtype, np.number):
        keep = labels >= 0
    n_unlabeled = int((~keep).sum())
    if not keep.any():
        raise InputError(
            f"No row of the results table has a known label ({n_unlabeled} rows with label < 0): "
            "nothing to evaluate."
        )
    labels, predictions = labels[keep], predictions[keep]
    rows = {}
    for method in methods:
        row = evaluate(
            df[method].to_numpy()[keep],
            labels,
            predictions,
            ci=ci,
            n_resamples=n_resamples,
            confidence=confidence,
            seed=seed,
        )
        row["n_unlabeled"] = n_unlabeled
        rows[method] = row
    if references:
        correct = labels == predictions
        base = {"n": int(keep.sum()), "n_nan": 0, "n_unlabeled": n_unlabeled}
        rows["random_reference"] = {**base, **random_reference(correct)}
        rows["oracle_reference"] = {**base, **oracle_reference(correct)}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "method"
    columns = ["n", "n_nan", "n_unlabeled", "accuracy"]
    for name in METRICS:
        columns.append(name)
        if ci:
            columns += [f"{name}_low", f"{name}_high"]
    out = out.reindex(columns=columns)
    return out.astype({"n": "int64", "n_nan": "int64", "n_unlabeled": "int64"})


class TrustEvaluator:
    """Accumulates batches and computes every metric at the end (torchmetrics style).

    Example::

        ev = TrustEvaluator()
        for batch in loader:
            ev.update(scores, labels, predictions)
        metrics = ev.compute()   # the dict of :func:`evaluate`
        ev.reset()

    Inputs may be NumPy arrays, torch tensors (any device) or lists; they are copied to NumPy on
    ``update``. The constructor's arguments are passed to :func:`evaluate`.
    """

    def __init__(
        self,
        *,
        ci: bool = False,
        n_resamples: int = 1000,
        confidence: float = 0.95,
        seed: int | None = 0,
    ) -> None:
        if ci:
            check_settings(n_resamples, confidence)
        self.ci = ci
        self.n_resamples = n_resamples
        self.confidence = confidence
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._predictions: list[np.ndarray] = []

    @property
    def n_samples(self) -> int:
        """Samples accumulated so far."""
        return int(sum(a.shape[0] for a in self._scores))

    def update(self, scores: Any, labels: Any, predictions: Any) -> None:
        """Add one batch (checked now: lengths must match; an empty batch is allowed and ignored)."""
        s = as_scores(scores)
        y = as_labels(labels, "labels")
        p = as_labels(predictions, "predictions")
        if not (s.shape[0] == y.shape[0] == p.shape[0]):
            check_lengths(scores=s, labels=y, predictions=p)  # raises, naming the lengths
        if s.shape[0] == 0:
            return
        self._scores.append(s.copy())
        self._labels.append(np.array(y, copy=True))
        self._predictions.append(np.array(p, copy=True))

    def compute(self) -> dict[str, float]:
        """Every metric over all batches so far (see :func:`evaluate`); an error if there were none."""
        if not self._scores:
            raise InputError("TrustEvaluator.compute() before any non-empty update(): no samples.")
        return evaluate(
            np.concatenate(self._scores),
            np.concatenate(self._labels),
            np.concatenate(self._predictions),
            ci=self.ci,
            n_resamples=self.n_resamples,
            confidence=self.confidence,
            seed=self.seed,
        )


def anomaly_summary(score: np.ndarray, inlier: np.ndarray, *, resamples: int = 1000, confidence: float = 0.95,
                     seed: int = 0) -> dict[str, Any]:
    """AUROC (inliers positive) and FPR@95%TPR (share of anomalies kept when 95% of inliers are) of a
    higher-is-more-normal score, with percentile bootstrap CIs (``gradtrust.evaluation``)."""
    out: dict[str, Any] = {"n": int(len(score)), "n_inlier": int(inlier.sum()),
                           "auroc": _risk.auroc(score, inlier), "fpr_at_95tpr": _risk.fpr_at_95tpr(score, inlier)}
    if resamples and 0 < out["n_inlier"] < out["n"]:
        out["auroc_ci"] = list(bootstrap_ci("auroc", score, inlier, n_resamples=resamples, confidence=confidence,
                                            seed=seed))
        out["fpr_at_95tpr_ci"] = list(bootstrap_ci("fpr_at_95tpr", score, inlier, n_resamples=resamples,
                                                   confidence=confidence, seed=seed))
    return out
