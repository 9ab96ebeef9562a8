"""A detection experiment: known data + challenge sets → features → detectors and baselines → one table.

The procedure of Purview (Lee, Prabhushankar & AlRegib, IEEE Access 2023; ``docs/detection.md``):

1. the known data (what the network was trained for) is split ONCE by a seeded permutation into a fitting
   part (``fit_fraction``) and an evaluation part;
2. each challenge set is made: adversarial and corrupted versions of the known images keep their source
   image's part (so the detector never sees any version of an evaluated image), OOD sets get their own
   seeded split;
3. per sample: Purview's gradient features, the penultimate features and the scalar trust scores;
4. per challenge: the detectors are fitted on the fitting parts of known vs that challenge, and every
   detector and baseline is evaluated on the evaluation parts only (checked: :class:`SplitError`).

Per-set results are stored as Parquet files (written atomically, reused when their identity matches, so
an interrupted run resumes where it stopped).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gradtrust.data.specs import is_data_spec
from gradtrust.detection.challenges import Challenge, attack, builtin_ood, check_same_geometry, corrupt, per_channel
from gradtrust.detection.detector import DETECTOR_KINDS, Detector
from gradtrust.detection.features import feature_layout, gradient_features
from gradtrust.detection.mahalanobis import MahalanobisDetector
from gradtrust.detection.metrics import evaluate_detection
from gradtrust.errors import InputError, ModelError
from gradtrust.nn.hooks import final_layer_candidates, final_linear, recording
from gradtrust.nn.model import as_module
from gradtrust.nn.outputs import model_logits
from gradtrust.scores import method_specs, score

__all__ = ["DEFAULT_BASELINES", "DetectionResult", "DetectionSettings", "KnownData", "SplitError", "run_detection",
           "split_positions"]

#: Scalar trust scores evaluated beside the detectors: the methods tagged ``"detection_baseline"`` in the registry
#: (registry order), plus Mahalanobis.
DEFAULT_BASELINES = (*(spec.name for spec in method_specs() if "detection_baseline" in spec.tags), "mahalanobis")
FORMAT_VERSION = 1
SET_FILE = "set.parquet"


class SplitError(AssertionError):
    """An evaluated sample was in the fitting data (must never happen)."""


@dataclass
class KnownData:
    """The known data as model inputs ``x`` (N, ...) with labels ``y``; ``mean``/``std``: the model's
    input normalisation (pixels in [0, 1] → ``(p − mean)/std``), ``None`` when inputs are pixels."""

    x: torch.Tensor
    y: torch.Tensor
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    description: str = ""

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None or self.std is None:
            return x
        return x * per_channel(self.std, x) + per_channel(self.mean, x)

    def from_pixels(self, p: torch.Tensor) -> torch.Tensor:
        if self.mean is None or self.std is None:
            return p
        return (p - per_channel(self.mean, p)) / per_channel(self.std, p)


@dataclass
class DetectionSettings:
    """What one experiment computes (every field is recorded in the manifest)."""

    challenges: list[Challenge]
    fit_fraction: float = 0.5
    seed: int = 0
    eps: float = 8 / 255
    detectors: tuple[str, ...] = DETECTOR_KINDS
    baselines: tuple[str, ...] = DEFAULT_BASELINES
    grouping: str = "tensor"
    label: str = "ones"
    n_bootstrap: int = 200
    batch_size: int = 256
    ood_samples: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.challenges:
            raise InputError("no challenge set given.")
        if not 0.05 <= self.fit_fraction <= 0.95:
            raise InputError(f"fit_fraction must lie in [0.05, 0.95], got {self.fit_fraction}.")
        for kind in self.detectors:
            if kind not in DETECTOR_KINDS:
                raise InputError(f"unknown detector {kind!r}; valid: {', '.join(DETECTOR_KINDS)}.")
        from gradtrust.scores import available_methods

        valid = set(available_methods()) | {"mahalanobis"}
        unknown = [b for b in self.baselines if b not in valid]
        if unknown:
            raise InputError(f"unknown baselines {unknown}; valid: {', '.join(sorted(valid))}.")


def split_positions(n: int, fit_fraction: float, seed: int, stream: int = 0) -> np.ndarray:
    """Boolean mask (n,): True = fitting part. A seeded permutation; ``round(n · fit_fraction)`` fit."""
    rng = np.random.default_rng([seed, 11, stream])
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[: int(round(n * fit_fraction))]] = True
    return mask


def _penultimate_and_logits(module: nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The input of the final ``nn.Linear`` (:mod:`gradtrust.nn.hooks`; flattened) and the logits, as float64
    arrays."""
    with recording(final_layer_candidates(module)) as calls, torch.no_grad():
        logits = model_logits(module, x)
    final = final_linear(module, calls, logits.shape[-1])
    if final is None:
        raise ModelError("the Mahalanobis baseline reads the input of the model's final nn.Linear, and this model "
                         "has none; leave mahalanobis out of the baselines.")
    penultimate = final.input.detach().reshape(final.input.shape[0], -1)
    return penultimate.double().cpu().numpy(), logits.double().cpu().numpy()


def compute_set(module: nn.Module, x: torch.Tensor, settings: DetectionSettings) -> dict[str, np.ndarray]:
    """Per-sample gradient features, penultimate features, logits and scalar scores of one set (batched)."""
    scalar = [b for b in settings.baselines if b != "mahalanobis"]
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, x.shape[0], settings.batch_size):
        xb = x[start:start + settings.batch_size]
        values = {"grad": gradient_features(module, xb, label=settings.label, grouping=settings.grouping).numpy()}
        values["pen"], values["logits"] = _penultimate_and_logits(module, xb)
        reuse = _purview_from_features(values["grad"], scalar, settings)
        values.update(reuse)
        rest = [name for name in scalar if f"score.{name}" not in reuse]
        if rest:
            result = score(module, xb, rest, seed=settings.seed)
            for name in rest:
                values[f"score.{name}"] = np.asarray(result[name], dtype=np.float64)
        for key, value in values.items():
            parts.setdefault(key, []).append(value)
    return {k: np.concatenate(v) for k, v in parts.items()}


def _purview_from_features(grad: np.ndarray, scalar: list[str], settings: DetectionSettings) -> dict[str, np.ndarray]:
    """The Purview scalars from the per-tensor features already computed (saves a second gradient pass).

    ``purview_initial = −mean_{j < ⌊m/2⌋} d_j``, ``purview_final = −mean_{j ≥ ⌈m/2⌉} d_j`` with ``J`` tensors,
    ``m = J − 1`` (Lee et al., IEEE Access 2023, as ``gradtrust.score`` computes them; the tests compare the
    two). Only when the features are exactly those norms: every tensor, label all ones, no grouping.
    """
    if settings.grouping != "tensor" or settings.label != "ones":
        return {}
    j = grad.shape[1]
    m = j - 1
    parts = {"purview_initial": slice(0, m // 2), "purview_final": slice((m + 1) // 2, j)}
    out = {}
    for name, columns in parts.items():
        chosen = grad[:, columns]
        if name in scalar and chosen.shape[1] > 0 and np.isfinite(chosen).all():
            out[f"score.{name}"] = -chosen.mean(axis=1)
    return out


class DetectSet:
    """One set's per-sample features (:func:`compute_set` per batch) as a :class:`gradtrust.runs.Task`: run in
    resumable chunks into ``sets/<set>/`` and merged into ``sets/<set>/set.parquet`` (``position``, ``fit``,
    ``label``, ``g:<tensor>``, ``h:<i>``, ``z:<i>`` and ``score.<method>`` columns)."""

    kind, format, verb, desc = "detect", f"gradtrust.detect-set/{FORMAT_VERSION}", "computed", "detect"
    outputs: tuple[str, ...] = (SET_FILE,)

    def __init__(self, module: nn.Module, settings: DetectionSettings, identity: dict, columns: list[str],
                 fit: np.ndarray, labels: np.ndarray) -> None:
        self.module, self.settings, self._identity = module, settings, identity
        self.columns, self.fit, self.labels = columns, fit, labels

    def identity(self) -> dict:
        return self._identity

    def probe(self, inputs: torch.Tensor, index: int) -> None:
        """Nothing to check on one sample: the model was checked before the sets are made."""

    def batch(self, batch: Any, inputs: torch.Tensor | None) -> dict[str, np.ndarray]:
        assert inputs is not None  # in-memory sets have no unreadable sample
        return compute_set(self.module, inputs, self.settings)

    def chunk(self, parts: list[dict[str, np.ndarray]]) -> tuple[Any, dict]:
        import pyarrow as pa

        values = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        data = {f"g:{c}": values["grad"][:, i] for i, c in enumerate(self.columns)}
        data.update({f"h:{i}": column for i, column in enumerate(values["pen"].T)})
        data.update({f"z:{i}": column for i, column in enumerate(values["logits"].T)})
        data.update({k: v for k, v in values.items() if k.startswith("score.")})
        return pa.table(data), {}

    def finish(self, folder: Any, layout: Any, metas: list[dict], execution: dict) -> None:
        import pyarrow as pa

        from gradtrust.runs import chunks as ch

        table = pa.concat_tables([ch.read_chunk_table(layout.path(folder.out, k)).replace_schema_metadata(None)
                                  for k in range(layout.num_chunks)])
        for i, (name, column) in enumerate((("position", np.arange(len(self.fit))), ("fit", self.fit),
                                            ("label", self.labels))):
            table = table.add_column(i, name, pa.array(column))
        ch.write_chunk(folder.out / SET_FILE, table, {"run": folder.run_id})


def _unframe(frame: Any) -> dict[str, np.ndarray]:
    cols = list(frame.columns)
    out = {key: frame[[c for c in cols if c.startswith(prefix)]].to_numpy(np.float64)
           for key, prefix in (("grad", "g:"), ("pen", "h:"), ("logits", "z:"))}
    out.update(fit=frame["fit"].to_numpy(bool), label=frame["label"].to_numpy(np.int64))
    out.update({c: frame[c].to_numpy(np.float64) for c in cols if c.startswith("score.")})
    return out


def make_challenge(module: nn.Module, known: KnownData, challenge: Challenge, settings: DetectionSettings,
                   loaded: Any = None) -> tuple[torch.Tensor, np.ndarray | None]:
    """The challenge inputs, and (for derived sets) the known position each one was made from."""
    if challenge.kind == "attack":
        adv = attack(module, known.x, known.y, challenge.name, eps=settings.eps, seed=settings.seed,
                     mean=known.mean, std=known.std, batch_size=settings.batch_size)
        return adv, np.arange(known.x.shape[0])
    if challenge.kind == "corruption":
        pixels = known.to_pixels(known.x).clamp(0, 1)
        corrupted = corrupt(pixels, challenge.name, int(challenge.level or 1), seed=settings.seed)
        return known.from_pixels(corrupted), np.arange(known.x.shape[0])
    # OOD
    geometry = tuple(known.x.shape[1:])
    if os.path.isdir(challenge.name) or is_data_spec(challenge.name):  # a folder, or svhn:FILE, cifar10c:DIR:fog:3…
        x = _load_folder(challenge.name, loaded, settings.ood_samples)
    else:
        if len(geometry) != 3:
            raise InputError(f"built-in OOD sets are images; the known inputs have shape {geometry}.")
        n = settings.ood_samples or known.x.shape[0]
        x = known.from_pixels(builtin_ood(challenge.name, (geometry[1], geometry[2]), geometry[0], n=n,
                                          seed=settings.seed))
    check_same_geometry(known.x, x, challenge.key)
    return x, None


def _load_folder(path: str, loaded: Any, limit: int | None) -> torch.Tensor:
    from gradtrust.data import collate_samples
    from gradtrust.data.open import open_dataset

    if loaded is None:
        raise InputError("an OOD folder needs the LoadedModel (for its preprocessing).")
    dataset = open_dataset(path, loaded)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    batch = collate_samples([dataset[i] for i in range(n)])
    if batch.inputs is None:
        raise InputError(f"no readable image in the challenge folder {path}.")
    return batch.inputs


def run_detection(loaded: Any, known: KnownData, settings: DetectionSettings, out: str | os.PathLike,
                  identity: dict[str, Any] | None = None, show_progress: bool = True, force: bool = False,
                  echo: Callable[[str], None] | None = None, chunk_size: int | None = None) -> DetectionResult:
    """Run the whole experiment for one model; write ``out/sets/<set>/``; return a :class:`DetectionResult`.

    Each set is a run of the one run engine (:func:`gradtrust.runs.task.run_task`: resumable chunks, a set
    computed with other settings refused unless ``force``, shared between ``torchrun`` processes).

    Its table (a pandas DataFrame) has one row per (challenge, method): ``challenge``, ``group``,
    ``level``, ``method``, ``kind`` ("detector" or "baseline"), ``auroc``, ``fpr_at_95tpr``,
    ``detection_error`` (each with ``_low``/``_high`` 95% bootstrap bounds), ``n_known``, ``n_challenge``.
    """
    import pandas as pd
    import pyarrow.parquet as pq

    from gradtrust.nn.model import device_of
    from gradtrust.runs.chunks import read_chunk_meta
    from gradtrust.runs.task import TensorSamples, run_task, task_folder

    settings.validate()
    module = as_module(loaded)
    if known.x.shape[0] < 4:
        raise InputError(f"the known data holds {known.x.shape[0]} samples; a detection experiment needs at least 4.")
    out_dir = Path(out)
    (out_dir / "sets").mkdir(parents=True, exist_ok=True)
    columns = feature_layout(module, grouping=settings.grouping).columns
    base_identity = {"settings": {k: v for k, v in asdict(settings).items()
                                                            if k not in ("challenges", "n_bootstrap", "detectors")},
                     "identity": identity or {}, "known": known.description, "n_known": int(known.x.shape[0])}
    known_fit = split_positions(known.x.shape[0], settings.fit_fraction, settings.seed)
    known_labels = known.y.cpu().numpy()

    # Fail early: every OOD folder exists and every challenge name is valid before any long work.
    for item in settings.challenges:
        if item.kind == "ood" and not (os.path.isdir(item.name) or is_data_spec(item.name)
                                       or item.name in ("mnist", "patches")):
            raise InputError(f"ood={item.name}: no such folder, not a data spec (gradtrust datasets) and not a "
                             "built-in OOD set (mnist, patches).")
    if any(item.kind == "attack" for item in settings.challenges):
        from gradtrust.detection.challenges import check_attackable

        check_attackable(module, known.x[:1])

    # OOD sets do not depend on the model: make them now, so a folder of the wrong size fails before any work.
    ood_inputs = {item.key: make_challenge(module, known, item, settings, loaded)[0]
                  for item in settings.challenges if item.kind == "ood"}

    sets: dict[str, dict[str, np.ndarray]] = {}
    for stream, ch in enumerate([None, *settings.challenges]):
        key = "known" if ch is None else ch.key
        # The set's fit flags and labels come with its inputs; its identity (hence its folder) does not need them.
        task = DetectSet(module, settings, {**base_identity, "set": key}, columns, np.empty(0, bool), np.empty(0))
        folder = task_folder(task, out_dir / "sets" / _file_name(key), settings.batch_size, chunk_size)
        path = folder.out / SET_FILE
        if folder.differences() == [] and (read_chunk_meta(path) or {}).get("run") == folder.run_id:
            sets[key] = _unframe(pq.read_table(path).to_pandas())  # computed by an earlier run
            continue
        if ch is None:
            x, fit, labels = known.x, known_fit, known_labels
        else:
            x, source = (ood_inputs[key], None) if key in ood_inputs else make_challenge(module, known, ch, settings,
                                                                                         loaded)
            if source is not None:
                fit, labels = known_fit[source], known_labels[source]
            else:
                fit = split_positions(x.shape[0], settings.fit_fraction, settings.seed, stream=stream)
                labels = np.full(x.shape[0], -1, dtype=np.int64)
        task.fit, task.labels = fit, labels
        run_task(task, TensorSamples(x.detach().cpu()), folder.out, batch_size=settings.batch_size,
                 chunk_size=chunk_size, device=device_of(module), force=force, progress=show_progress, echo=echo)
        sets[key] = _unframe(pq.read_table(path).to_pandas())

    rows = []
    known_set = sets["known"]
    bad = ~np.isfinite(known_set["logits"]).all(axis=1)
    if bad.any():  # fitting on them would fail deep in a detector (NaN features, a non-converging eigensolver)
        raise ModelError(f"the model gives non-finite logits (NaN or inf) for {int(bad.sum())} of the "
                         f"{bad.size} known images: detection fits on their features, which are then undefined. "
                         "Check the model and its preprocessing (--input-size, --mean/--std) first.")
    maha = None
    if "mahalanobis" in settings.baselines:
        maha = MahalanobisDetector().fit(known_set["pen"][known_set["fit"]], known_set["label"][known_set["fit"]])
    curves: dict[str, tuple[dict[str, np.ndarray], np.ndarray]] = {}
    for challenge in settings.challenges:
        ch_rows, scores, is_known = evaluate_challenge(known_set, sets[challenge.key], challenge, settings, maha)
        rows += ch_rows
        curves[challenge.key] = (scores, is_known)
    return DetectionResult(table=pd.DataFrame(rows), sets=sets, curves=curves, columns=columns)


@dataclass
class DetectionResult:
    """``table``: one row per (challenge, method); ``sets``: per-set arrays (``grad``, ``pen``, ``fit``…);
    ``curves``: per challenge, the evaluated scores of every method and the known/challenge mask."""

    table: Any
    sets: dict[str, dict[str, np.ndarray]]
    curves: dict[str, tuple[dict[str, np.ndarray], np.ndarray]]
    columns: list[str]


def evaluate_challenge(known: dict[str, np.ndarray], chal: dict[str, np.ndarray], ch: Challenge,
                       settings: DetectionSettings, maha: MahalanobisDetector | None
                       ) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], np.ndarray]:
    """Fit the detectors on the fitting parts, evaluate everything on the evaluation parts only."""
    kf, cf = known["fit"], chal["fit"]
    ke, ce = ~kf, ~cf
    if ke.sum() == 0 or ce.sum() == 0 or kf.sum() == 0 or cf.sum() == 0:
        raise InputError(f"challenge {ch.key}: too few samples to split into fitting and evaluation parts.")
    is_known = np.r_[np.ones(int(ke.sum()), bool), np.zeros(int(ce.sum()), bool)]
    scores: dict[str, tuple[str, np.ndarray]] = {}
    # derived sets: no evaluated image may have any version in the fitting data
    if ch.kind != "ood" and (chal["fit"].shape != kf.shape or bool((ce & kf).any()) or bool((cf & ke).any())):
        raise SplitError(f"{ch.key}: a challenge image and its source image are in different parts.")
    evaluated = np.r_[known["grad"][ke], chal["grad"][ce]]
    for kind in settings.detectors:
        det = Detector(kind=kind, seed=settings.seed).fit(known["grad"][kf], chal["grad"][cf])
        scores[f"purview_{kind}"] = ("detector", det.score(evaluated))
    for name in settings.baselines:
        if name == "mahalanobis":
            if maha is not None:
                scores["mahalanobis"] = ("baseline", np.r_[maha.score(known["pen"][ke]), maha.score(chal["pen"][ce])])
            continue
        scores[name] = ("baseline", np.r_[known[f"score.{name}"][ke], chal[f"score.{name}"][ce]])
    rows = []
    for method, (kind, s) in scores.items():
        metrics = evaluate_detection(s, is_known, n_resamples=settings.n_bootstrap, seed=settings.seed)
        rows.append({"challenge": ch.key, "group": ch.group, "level": ch.level, "method": method, "kind": kind,
                     **metrics, "n_known": int(ke.sum()), "n_challenge": int(ce.sum())})
    return rows, {m: s for m, (_, s) in scores.items()}, is_known


def _file_name(key: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    return safe if len(safe) < 80 else safe[:60] + "_" + hashlib.sha256(key.encode()).hexdigest()[:8]
