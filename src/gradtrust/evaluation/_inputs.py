"""Input checks and the rank encoding every metric of :mod:`gradtrust.evaluation` is computed from.

The rank encoding
-----------------
Every metric of this package depends on the scores only through their order, with ties kept together.
``rank_codes`` therefore maps the scores to integer *codes*: equal scores share a code, a higher score has a
higher code, and NaN scores get code 0, below everything else (``-inf`` gets the next code, then the finite
values, then ``+inf``). All thresholds, percentiles and tie groups are then exact integer computations,
immune to ``inf``, NaN and floating-point rounding. ``+0.0`` and ``-0.0`` are one value.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from gradtrust.errors import InputError
from gradtrust.estimator import as_array


def to_numpy(x: Any, name: str) -> np.ndarray:
    """A 1-D NumPy array from an array, a torch tensor (any device), a pandas Series or a list."""
    a = as_array(x, name)
    if a.ndim != 1:
        raise InputError(
            f"`{name}` must be 1-D (one value per sample); got an array of shape {a.shape}."
        )
    return a


def as_scores(x: Any, name: str = "scores") -> np.ndarray:
    """The scores as a float64 1-D array (NaN and ±inf allowed)."""
    a = to_numpy(x, name)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        try:
            a = a.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"`{name}` must hold numbers; got dtype {a.dtype}.") from exc
    if np.iscomplexobj(a):
        raise InputError(f"`{name}` must be real numbers; got dtype {a.dtype}.")
    return a.astype(np.float64, copy=False)


def as_correct(x: Any, name: str = "correct") -> np.ndarray:
    """Correctness flags as a bool 1-D array; accepts bools or the numbers 0 and 1."""
    a = to_numpy(x, name)
    if a.dtype == bool:
        return a
    if a.dtype == object or not np.issubdtype(a.dtype, np.number):
        raise InputError(f"`{name}` must be booleans or 0/1; got dtype {a.dtype}.")
    ok = (a == 0) | (a == 1)
    if not np.all(ok):
        bad = a[~ok][:5]
        raise InputError(
            f"`{name}` must be booleans or 0/1 (1 = the prediction is correct); "
            f"found {int((~ok).sum())} other value(s), e.g. {bad.tolist()}."
        )
    return a.astype(bool)


def as_labels(x: Any, name: str) -> np.ndarray:
    """Class labels or predictions: any 1-D array of hashable values without NaN."""
    a = to_numpy(x, name)
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise InputError(f"`{name}` holds NaN or infinite values; class labels must be defined.")
    return a


def check_lengths(**arrays: np.ndarray) -> int:
    """The common length of the arrays; a clear error for empty input or different lengths."""
    lengths = {name: len(a) for name, a in arrays.items()}
    distinct = set(lengths.values())
    if len(distinct) > 1:
        said = ", ".join(f"`{name}` has {n}" for name, n in lengths.items())
        raise InputError(f"The inputs must have one value per sample, but their lengths differ: {said}.")
    n = distinct.pop()
    if n == 0:
        raise InputError(
            "The inputs are empty (0 samples): a metric needs at least one scored sample."
        )
    return n


class Ranked(NamedTuple):
    """Scores encoded as integer tie-group codes (see the module docstring)."""

    codes: np.ndarray  # (n,) int64, 0..m-1, ascending with the score, NaN lowest
    values: np.ndarray  # (m,) float64, the score of each code (NaN for the NaN group)
    n_nan: int


def rank_codes(scores: np.ndarray) -> Ranked:
    """Integer tie-group codes of the scores: NaN < -inf < finite values < +inf, ties share a code."""
    nan = np.isnan(scores)
    n_nan = int(nan.sum())
    if n_nan == 0:
        values, codes = np.unique(scores, return_inverse=True)
        return Ranked(codes.astype(np.int64, copy=False), values, 0)
    values, inv = np.unique(scores[~nan], return_inverse=True)
    codes = np.zeros(scores.shape[0], dtype=np.int64)
    codes[~nan] = inv + 1
    return Ranked(codes, np.concatenate(([np.nan], values)), n_nan)


def group_counts(codes: np.ndarray, correct: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Per tie group the number of correct and of wrong samples, shaped (1, m), groups in **descending**
    score order (column 0 = the highest score value, column m-1 = the lowest, NaN if any)."""
    down = (m - 1) - codes
    pos = np.bincount(down[correct], minlength=m)
    neg = np.bincount(down[~correct], minlength=m)
    return pos[None, :].astype(np.int64), neg[None, :].astype(np.int64)


def prepare(scores: Any, correct: Any) -> tuple[np.ndarray, np.ndarray, Ranked]:
    """Checked (scores, correct) and their rank encoding."""
    s = as_scores(scores)
    c = as_correct(correct)
    check_lengths(scores=s, correct=c)
    return s, c, rank_codes(s)


def encode_classes(labels: np.ndarray, predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Labels and predictions as indices 0..K-1 into the sorted union of their values."""
    try:
        classes, inv = np.unique(np.concatenate((labels, predictions)), return_inverse=True)
    except TypeError as exc:
        raise InputError(
            f"`labels` and `predictions` must hold values of one comparable type: {exc}"
        ) from exc
    n = labels.shape[0]
    inv = inv.astype(np.int64, copy=False).reshape(-1)
    return inv[:n], inv[n:], int(classes.shape[0])


class Groups:
    """Per-tie-group counts of b rows (the data, or b bootstrap resamples of it), groups in descending score
    order, with the cumulative sums every metric needs computed once and shared.

    ``pos``/``neg`` are (b, m) int arrays: correct / wrong samples per group. Empty groups (a resample that
    missed a score value) are allowed and contribute nothing to any metric.
    """

    def __init__(self, pos: np.ndarray, neg: np.ndarray) -> None:
        self.pos = pos
        self.neg = neg
        self._cache: dict[str, np.ndarray] = {}

    def _get(self, name: str, make) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = make()
        return self._cache[name]

    @property
    def total(self) -> np.ndarray:
        """Samples per group."""
        return self._get("total", lambda: self.pos + self.neg)

    @property
    def accepted(self) -> np.ndarray:
        """Samples accepted at each threshold (cumulative from the highest score)."""
        return self._get("accepted", lambda: np.cumsum(self.total, axis=1))

    @property
    def errors(self) -> np.ndarray:
        """Wrong predictions accepted at each threshold."""
        return self._get("errors", lambda: np.cumsum(self.neg, axis=1))

    @property
    def hits(self) -> np.ndarray:
        """Correct predictions accepted at each threshold."""
        return self._get("hits", lambda: np.cumsum(self.pos, axis=1))

    @property
    def n_pos(self) -> np.ndarray:
        """Correct predictions per row."""
        return self._get("n_pos", lambda: self.pos.sum(axis=1))

    @property
    def n_neg(self) -> np.ndarray:
        """Wrong predictions per row."""
        return self._get("n_neg", lambda: self.neg.sum(axis=1))

    @property
    def n(self) -> np.ndarray:
        """Samples per row."""
        return self.n_pos + self.n_neg


def dot_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products of two (b, m) arrays, without a (b, m) temporary."""
    return np.einsum("ij,ij->i", a, b)
