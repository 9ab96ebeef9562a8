"""``gradtrust.evaluate_explanations``: judge any explanation map by masking the input and reading the model
(``SPEC.md`` §10, ``docs/explanations.md``). The areas, the variance split and the summary with bootstrap CIs
are the torch-free :mod:`gradtrust.evaluation.interventions`.

``P_t`` = softmax probability of the target class ``t`` (the prediction unless given). A map ``E`` (higher =
more important) is min-max normalised per image first (the order of its pixels is unchanged); pixels are ranked
by decreasing ``E``, ties in row-major order (a stable sort). Removed pixels take the fill value 0 in the
model's input space (the normalised dataset mean).

* **Deletion / insertion** (Petsiuk, Das & Saenko, BMVC 2018): ``steps = min(H·W, 100)``, ``n = ⌈H·W/steps⌉``;
  reading ``k = 0 … steps`` has the ``min(k·n, H·W)`` top-ranked pixels filled (deletion, from ``x``) or put
  back into a blurred copy of ``x`` (insertion; Petsiuk et al.'s blur: an 11×11 Gaussian, ``σ = 5``, zero
  padding); the AUC is the trapezoid area over the step axis scaled to [0, 1]
  (:func:`gradtrust.evaluation.interventions.curve_auc`).
* **Average Drop / Increase in Confidence** (Chattopadhyay et al., Grad-CAM++, WACV 2018): ``O = P_t(x ⊙ E)``;
  ``100·max(0, P_t(x) − O)/P_t(x)`` and ``100·1[O > P_t(x)]`` per sample (their means are the paper's numbers).
* **ROAD** (Rong et al., ICML 2022): for each removal fraction ``k`` (10 %, …, 90 %) the most (MoRF) or least
  (LeRF) relevant pixels are replaced by noisy linear imputation — each removed pixel the weighted mean of its 8
  neighbours (weights 1/6 direct, 1/12 diagonal), one sparse linear system per image and channel, plus
  ``noise·N(0, 1)`` — and ``road_morf``/``road_lerf`` = ``mean_k P_t(x̃_k) − P_t(x)``. Thresholds as
  pytorch-grad-cam's ``ROADMostRelevantFirstAverage``/``ROADLeastRelevantFirstAverage`` (``np.percentile``),
  whose values these equal with its ``ClassifierOutputSoftmaxTarget``.
* **What the explanation leaves uncertain** (seed 001, VOICE): ``S_x`` = the subset of the ``⌈f·H·W⌉``
  top-ranked pixels kept (the rest filled), ``f`` uniform over ``variance_levels`` (10 %, 20 %, …, 100 %);
  ``y = 1[the model's answer is t]`` with ``E(y|S_x) = P_t(S_x)``; ``V[y|S_x] = V[E(y|S_x)] + E[V(y|S_x)]``
  (:func:`gradtrust.evaluation.interventions.total_variance`).

Every table also carries two baseline maps (``baselines=True``): ``random`` (uniform noise, seeded) and
``centre`` (``1 − distance to the centre / the largest distance``), so a number can be read against chance.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from gradtrust.errors import InputError
from gradtrust.evaluation.interventions import BASELINES, curve_auc, total_variance
from gradtrust.explanations.cams import Explanation, class_ids, prepare_images
from gradtrust.explanations.layers import run_model
from gradtrust.explanations.maps import minmax
from gradtrust.explanations.perturbation import DEFAULT_BATCH_BYTES, masked_probabilities, target_probability
from gradtrust.nn.model import as_module
from gradtrust.nn.state import scoring_state

#: metric groups (``metrics=``) → the columns they fill
METRIC_COLUMNS = {
    "deletion": ("deletion_auc", "deletion_curve"),
    "insertion": ("insertion_auc", "insertion_curve"),
    "average_drop": ("average_drop", "increase_in_confidence"),
    "road": ("road_morf", "road_lerf"),
    "variance": ("variance_explained", "variance_remaining", "variance_total"),
}
ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
VARIANCE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: the 8-neighbourhood weights of ROAD's noisy linear imputation (Rong et al. 2022)
NEIGHBOURS = (
    ((1, 1), 1 / 12),
    ((0, 1), 1 / 6),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((0, -1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
)


def evaluate_explanations(
    model,
    images,
    maps,
    *,
    target=None,
    metrics: str | Iterable[str] | None = None,
    baselines: bool = True,
    steps: int | None = None,
    road_fractions: Sequence[float] = ROAD_FRACTIONS,
    road_noise: float = 0.01,
    variance_levels: Sequence[float] = VARIANCE_LEVELS,
    seed: int = 0,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    output_index: int | str | None = None,
    progress: bool = False,
) -> Any:
    """Judge explanation maps by masking: one row per map and sample (a pandas DataFrame).

    Args:
        model: a classifier ``nn.Module`` or :class:`gradtrust.LoadedModel` (eval mode, frozen, restored).
        images: the preprocessed batch (B, C, H, W) the maps explain.
        maps: a (B, H, W) array or tensor (named ``"map"``), a ``{name: (B, H, W)}`` mapping, or an
            :class:`~gradtrust.explanations.cams.Explanation` (every map it holds, at input resolution).
        target: ``t`` — ``None`` (the prediction), one class id or (B,) ids.
        metrics: groups to compute, any of ``deletion``, ``insertion``, ``average_drop`` (with Increase in
            Confidence), ``road``, ``variance`` (a list or comma-separated string); default all.
        baselines: add the ``random`` and ``centre`` maps (module docstring).
        steps: deletion/insertion steps (default ``min(H·W, 100)``).
        road_fractions, road_noise: ROAD's removal fractions and imputation noise.
        variance_levels: the kept fractions ``f`` that define ``S_x``.
        seed: the random baseline's and ROAD's noise generator.
        batch_bytes: memory bound of one forward batch of masked copies.

    Columns: ``method``, ``sample`` (position in the batch), ``baseline``, ``target``, ``probability``
    (``P_t(x)``), then those of the groups: ``deletion_auc``, ``deletion_curve`` (``steps + 1`` readings),
    ``insertion_auc``, ``insertion_curve``, ``average_drop``, ``increase_in_confidence``, ``road_morf``,
    ``road_lerf``, ``variance_explained``, ``variance_remaining``, ``variance_total``. Aggregate with
    :func:`gradtrust.evaluation.summarise_interventions` (means, bootstrap CIs, differences to the random map).
    Cost per map: ``steps + 1`` forward passes of the batch for each curve, 1 for Average Drop,
    ``2·len(road_fractions)`` plus one sparse solve per image and fraction for ROAD, ``len(variance_levels)``
    for the variance.
    """
    import pandas as pd

    groups = parse_metrics(metrics)
    module = as_module(model)
    x = prepare_images(module, images)
    if x.dim() != 4:
        raise InputError(f"evaluate_explanations takes image batches (B, C, H, W), got shape {tuple(x.shape)}.")
    named = named_maps(maps, x, baselines)
    rows: list[dict[str, Any]] = []
    with scoring_state(module, output_index=output_index), torch.no_grad():
        logits = run_model(module, x)
        t = (
            logits.argmax(1)
            if target is None
            else class_ids(target, x.shape[0], logits.shape[1], "target", logits.device)
        )
        base = target_probability(logits, t)
        if baselines:
            named.update(baseline_maps(x.shape[0], (x.shape[-2], x.shape[-1]), seed, x.device))
        gen = torch.Generator().manual_seed(seed + 1)  # ROAD's noise, drawn in a fixed order
        for name, raw in named.items():
            e = minmax(raw.to(x.device).float())
            values = evaluate_map(
                module,
                x,
                e,
                t,
                base,
                groups,
                steps=steps,
                road_fractions=road_fractions,
                road_noise=road_noise,
                variance_levels=variance_levels,
                generator=gen,
                batch_bytes=batch_bytes,
                progress=progress,
            )
            for j in range(x.shape[0]):
                row: dict[str, Any] = {
                    "method": name,
                    "sample": j,
                    "baseline": baselines and name in BASELINES,
                    "target": int(t[j]),
                    "probability": float(base[j]),
                }
                row.update({k: v[j] for k, v in values.items()})
                rows.append(row)
    return pd.DataFrame(rows)


def parse_metrics(metrics: str | Iterable[str] | None) -> list[str]:
    """Metric groups from group or column names (``"deletion_auc"`` → ``deletion``)."""
    if metrics is None:
        return list(METRIC_COLUMNS)
    wanted = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else list(metrics)
    groups = []
    for name in filter(None, wanted):
        group = (
            name if name in METRIC_COLUMNS else next((g for g, cols in METRIC_COLUMNS.items() if name in cols), None)
        )
        if group is None:
            raise InputError(f"unknown explanation metric {name!r}; choose from {', '.join(METRIC_COLUMNS)}.")
        groups.append(group)
    if not groups:
        raise InputError(f"metrics is empty; choose from {', '.join(METRIC_COLUMNS)}.")
    return list(dict.fromkeys(groups))


def named_maps(maps, x: torch.Tensor, baselines: bool) -> dict[str, torch.Tensor]:
    """``maps`` (module docstring) as ``{name: (B, H, W) float32}``, checked against the images."""
    if isinstance(maps, Explanation):
        named = {m: maps[m] for m in maps.methods}
    elif isinstance(maps, Mapping):
        named = dict(maps)
    else:
        named = {"map": maps}
    size = (x.shape[0], x.shape[-2], x.shape[-1])
    out = {}
    for name, value in named.items():
        if baselines and name in BASELINES:
            raise InputError(f"a map is named {name!r}, the name of a baseline; rename it or pass baselines=False.")
        t = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
        if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.uint8)):
            raise InputError(f"map {name!r} must hold numbers, got dtype {t.dtype}.")
        if tuple(t.shape) != size:
            raise InputError(
                f"map {name!r} has shape {tuple(t.shape)}; the images need (B, H, W) = {size} "
                "(upsample layer-resolution maps to the input size first, e.g. Explanation[m])."
            )
        if not bool(torch.isfinite(t.float()).all()):
            raise InputError(f"map {name!r} holds NaN or infinite values.")
        out[str(name)] = t.detach().float()
    return out


def baseline_maps(batch: int, size: tuple[int, int], seed: int, device: torch.device) -> dict[str, torch.Tensor]:
    """``random``: uniform noise from ``torch.Generator().manual_seed(seed)``; ``centre``: ``1 − d/d_max`` with
    ``d`` the distance to the image centre."""
    h, w = size
    noise = torch.rand(batch, h, w, generator=torch.Generator().manual_seed(seed))
    rows = torch.arange(h, dtype=torch.float32)[:, None] - (h - 1) / 2
    cols = torch.arange(w, dtype=torch.float32)[None, :] - (w - 1) / 2
    d = (rows**2 + cols**2).sqrt()
    centre = 1 - d / d.max().clamp_min(1e-12)
    return {"random": noise.to(device), "centre": centre.expand(batch, h, w).to(device)}


def gaussian_blur(x: torch.Tensor, size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """Petsiuk et al.'s insertion start: a ``size×size`` Gaussian (``σ``) per channel, zero (fill) padding."""
    r = torch.arange(size, dtype=torch.float64, device=x.device) - size // 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    kernel = g[:, None] * g[None, :]
    kernel = (kernel / kernel.sum()).to(x.dtype)
    c = x.shape[1]
    return F.conv2d(x, kernel.expand(c, 1, size, size), padding=size // 2, groups=c)


def evaluate_map(
    module: nn.Module,
    x: torch.Tensor,
    e: torch.Tensor,
    t: torch.Tensor,
    base: torch.Tensor,
    groups: list[str],
    *,
    steps: int | None,
    road_fractions: Sequence[float],
    road_noise: float,
    variance_levels: Sequence[float],
    generator: torch.Generator,
    batch_bytes: int,
    progress: bool,
) -> dict[str, list]:
    """The metric columns of one normalised map ``e`` (B, H, W) for every sample (lists of length B)."""
    b, (h, w) = x.shape[0], e.shape[-2:]
    hw = h * w
    order = torch.argsort(e.reshape(b, hw), dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(hw, device=order.device).expand(b, hw))  # rank[b, pixel]
    out: dict[str, list] = {}

    def readings(kept: torch.Tensor, keep_top: bool, background: torch.Tensor | None, desc: str) -> torch.Tensor:
        """P_t with the ``kept[k]`` top-ranked pixels present (keep_top) or removed (not keep_top): (B, K)."""

        def masks(span: slice) -> torch.Tensor:
            k = kept[span].to(rank.device)
            m = rank[:, None, :] < k[None, :, None] if keep_top else rank[:, None, :] >= k[None, :, None]
            return m.reshape(b, -1, h, w)

        parts = [
            p
            for _, _, p in masked_probabilities(
                module,
                x,
                t,
                masks,
                len(kept),
                background=background,
                batch_bytes=batch_bytes,
                progress=progress,
                desc=desc,
            )
        ]
        return torch.cat(parts, 1).double().cpu()

    if "deletion" in groups or "insertion" in groups:
        n_steps = min(hw, 100) if steps is None else int(steps)
        if n_steps < 1:
            raise InputError(f"steps must be at least 1, got {steps}.")
        per_step = math.ceil(hw / n_steps)
        counts = torch.tensor([min(k * per_step, hw) for k in range(n_steps + 1)])
        if "deletion" in groups:
            curve = readings(counts, False, None, "deletion").numpy()
            out["deletion_auc"], out["deletion_curve"] = list(curve_auc(curve)), list(curve.astype(np.float32))
        if "insertion" in groups:
            curve = readings(counts, True, gaussian_blur(x), "insertion").numpy()
            out["insertion_auc"], out["insertion_curve"] = list(curve_auc(curve)), list(curve.astype(np.float32))
    if "average_drop" in groups:
        o = (
            torch.cat(
                [p for _, _, p in masked_probabilities(module, x, t, lambda s: e[:, None], 1, batch_bytes=batch_bytes)],
                1,
            )[:, 0]
            .double()
            .cpu()
        )
        p0 = base.double().cpu()
        out["average_drop"] = list((100 * (p0 - o).clamp_min(0) / p0).numpy())
        out["increase_in_confidence"] = list((100 * (o > p0).double()).numpy())
    if "road" in groups:
        morf, lerf = road_scores(module, x, e, t, road_fractions, road_noise, generator, batch_bytes)
        start = base.double().cpu().numpy()
        out["road_morf"], out["road_lerf"] = list(morf - start), list(lerf - start)
    if "variance" in groups:
        levels = [float(f) for f in variance_levels]
        if not levels or not all(0 < f <= 1 for f in levels):
            raise InputError(f"variance_levels must be fractions in (0, 1], got {variance_levels!r}.")
        kept = torch.tensor([math.ceil(f * hw) for f in levels])
        explained, remaining = total_variance(readings(kept, True, None, "variance").numpy())
        out["variance_explained"], out["variance_remaining"] = list(explained), list(remaining)
        out["variance_total"] = list(explained + remaining)
    return out


def road_keep_masks(e: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """ROAD's keep-masks of one map for a removal ``fraction``: MoRF keeps ``E < percentile(E, 100(1 − k))``,
    LeRF keeps ``1 − E < percentile(1 − E, 100(1 − k))`` (pytorch-grad-cam's ``RemoveMostRelevantFirst`` /
    ``RemoveLeastRelevantFirst`` thresholds)."""
    q = 100 * (1 - fraction)
    inverse = 1 - e
    return e < np.percentile(e, q), inverse < np.percentile(inverse, q)


def noisy_linear_imputation(
    images: np.ndarray, keep: np.ndarray, noise: float, generator: torch.Generator
) -> np.ndarray:
    """ROAD's imputation (Rong et al. 2022) of a stack of images: every removed pixel ``i`` (``keep == False``)
    solves ``Σ_n w_n (v_i − v_n) = 0`` over its in-image neighbours ``n`` (known ``v_n`` = the image), one sparse
    system for all images and channels (block diagonal: images never see each other); then ``noise·N(0, 1)`` is
    added to the imputed values. ``images`` (N, C, H, W), ``keep`` (N, H, W) boolean."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    n, c, h, w = images.shape
    missing = np.flatnonzero(~keep.reshape(-1))  # global pixel ids image·HW + row·W + col
    if missing.size == 0:
        return images.copy()
    var = np.full(n * h * w, -1)
    var[missing] = np.arange(missing.size)
    image_of, within = np.divmod(missing, h * w)
    rows0, cols0 = np.divmod(within, w)
    flat = images.transpose(1, 0, 2, 3).reshape(c, -1).astype(np.float64)  # (C, N·H·W)
    diag = np.zeros(missing.size)
    rhs = np.zeros((missing.size, c))
    ri, ci, vals = [], [], []
    for (dr, dc), weight in NEIGHBOURS:
        r, cc = rows0 + dr, cols0 + dc
        inside = (r >= 0) & (r < h) & (cc >= 0) & (cc < w)
        diag[inside] += weight
        neighbour = image_of[inside] * h * w + r[inside] * w + cc[inside]
        eq = np.flatnonzero(inside)
        unknown = var[neighbour] >= 0
        ri.append(eq[unknown])
        ci.append(var[neighbour[unknown]])
        vals.append(np.full(int(unknown.sum()), -weight))
        np.add.at(rhs, eq[~unknown], weight * flat[:, neighbour[~unknown]].T)
    ri.append(np.arange(missing.size))
    ci.append(np.arange(missing.size))
    vals.append(diag)
    a = coo_matrix(
        (np.concatenate(vals), (np.concatenate(ri), np.concatenate(ci))), shape=(missing.size, missing.size)
    ).tocsc()
    solved = np.asarray(spsolve(a, rhs)).reshape(missing.size, c)
    out = flat.copy()
    out[:, missing] = solved.T + noise * torch.randn(c, missing.size, generator=generator, dtype=torch.float64).numpy()
    return out.reshape(c, n, h, w).transpose(1, 0, 2, 3).astype(images.dtype)


#: the most removed pixels one sparse solve of ROAD's imputation takes (copies are grouped up to it)
MAX_UNKNOWNS = 250_000


def road_scores(
    module: nn.Module,
    x: torch.Tensor,
    e: torch.Tensor,
    t: torch.Tensor,
    fractions: Sequence[float],
    noise: float,
    generator: torch.Generator,
    batch_bytes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``mean_k P_t(x̃_k)`` for MoRF and LeRF removal (B,) each; the imputed copies of a group of samples go
    through the model together (at most ``batch_bytes`` of input per forward)."""
    fractions = [float(f) for f in fractions]
    if not fractions or not all(0 < f < 1 for f in fractions):
        raise InputError(f"road_fractions must be fractions in (0, 1), got {fractions!r}.")
    images, maps = x.detach().float().cpu().numpy(), e.detach().float().cpu().numpy()
    per_forward = max(1, batch_bytes // (x[0].numel() * x.element_size()))
    group = max(1, per_forward // (2 * len(fractions)))
    morf, lerf = np.zeros(x.shape[0]), np.zeros(x.shape[0])
    for s0 in range(0, x.shape[0], group):
        owners, keeps = [], []
        for j in range(s0, min(x.shape[0], s0 + group)):
            for f in fractions:
                for keep in road_keep_masks(maps[j], f):
                    owners.append(j)
                    keeps.append(keep)
        # one sparse solve per group of consecutive copies with at most MAX_UNKNOWNS removed pixels
        removed = np.array([int((~keep).sum()) for keep in keeps])
        starts = [0]
        total = 0
        for k, more in enumerate(removed):
            if total + more > MAX_UNKNOWNS and k > starts[-1]:
                starts.append(k)
                total = 0
            total += more
        bounds = [*starts, len(keeps)]
        copies = [
            noisy_linear_imputation(images[owners[a:b]], np.stack(keeps[a:b]), noise, generator)
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        batch = torch.from_numpy(np.concatenate(copies)).to(device=x.device, dtype=x.dtype)
        n = batch.shape[0] // (2 * len(fractions))
        probs = target_probability(run_model(module, batch), t[s0 : s0 + n].repeat_interleave(2 * len(fractions)))
        probs = probs.double().cpu().numpy().reshape(n, len(fractions), 2).mean(1)
        morf[s0 : s0 + n], lerf[s0 : s0 + n] = probs[:, 0], probs[:, 1]
    return morf, lerf
