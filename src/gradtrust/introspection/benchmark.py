"""The built-in introspective-learning comparison on the bundled digits networks (``docs/introspection.md``).

For every bundled network ``f``: ``H`` is fitted on the digits training split (the split ``f`` was trained
on), then ``f`` and ``H`` predict the clean test split and its corrupted copies (severity 1). Per (network,
condition) and for each of ``f`` and ``H``: accuracy, ECE (15 bins) and the AUROC of the maximum softmax
probability for telling right from wrong predictions, each with a percentile bootstrap CI; and the paired
accuracy difference ``H − f`` with its CI (both on the same resamples).

A control separates introspection from a second classifier: an MLP of ``H``'s size (same hidden width,
optimiser, epochs and seed) trained on the same two unit factors ``â`` (= the normalised ``z − 1``) and
``ĥ`` concatenated, instead of their outer product — the normalised gradient ``vec(â ĥᵀ)``. Where ``H``
beats ``f`` but the control does as well, the gain is a second classifier's on ``f``'s features, not the
gradient form's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradtrust.evaluation import auroc, bootstrap_indices
from gradtrust.evaluation import calibration as cal
from gradtrust.evaluation.bootstrap import ci_text, percentile_interval

__all__ = ["BenchmarkResult", "CONDITIONS", "run_benchmark"]

#: (corruption, severity) of the test conditions, clean first.
CONDITIONS: tuple[tuple[str | None, int], ...] = (
    (None, 1), ("gaussian_noise", 1), ("blur", 1), ("contrast", 1))


@dataclass
class BenchmarkResult:
    frame: Any
    markdown: str
    files: dict[str, Path] = field(default_factory=dict)
    elapsed_s: float = 0.0


def _metrics(logits: np.ndarray, prediction: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> dict[str, Any]:
    """Accuracy, ECE and AUROC of the maximum softmax probability, with bootstrap distributions on ``idx``."""
    conf = cal.softmax(logits).max(axis=1)
    correct = prediction == labels
    out: dict[str, Any] = {"accuracy": float(correct.mean()), "ece": cal.expected_calibration_error(conf, correct),
                           "auroc": auroc(conf, correct)}
    if idx.shape[0]:
        out["dist"] = {
            "accuracy": correct[idx].mean(axis=1),
            "ece": np.array([cal.expected_calibration_error(conf[i], correct[i]) for i in idx]),
            "auroc": np.array([auroc(conf[i], correct[i]) for i in idx]),
        }
    out["correct"] = correct
    return out


def _control(a: torch.Tensor, h: torch.Tensor, y: torch.Tensor, hidden: int, epochs: int, seed: int):
    """The control network: ``Linear(C + D, hidden) → ReLU → Linear(hidden, C)`` on the concatenation
    ``[√C·â, √D·ĥ]`` — the same unit factors ``H`` sees, side by side instead of as the gradient ``vec(â ĥᵀ)``
    (scaled so the entries have mean square 1, as ``H``'s are) — trained exactly as ``H`` is (Adam, lr 1e-3,
    weight decay 1e-4, batch 128, the same epochs and seeded order)."""
    c, d = a.shape[1], h.shape[1]

    def inputs(a2: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
        return torch.cat([a2 * c**0.5, h2 * d**0.5], dim=1)

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(c + d, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, c))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    xs = inputs(a, h)
    for _ in range(epochs):
        order = torch.randperm(xs.shape[0], generator=gen)
        for lo in range(0, xs.shape[0], 128):
            idx = order[lo:lo + 128]
            loss = torch.nn.functional.cross_entropy(net(xs[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()

    def predict(a2: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net(inputs(a2, h2))

    return predict


def run_benchmark(names: list[str] | None, out_dir: Path, *, hidden: int = 64, epochs: int = 30, seed: int = 0,
                  resamples: int = 1000, progress: bool = False) -> BenchmarkResult:
    """Fit, evaluate, and write ``table.md`` / ``table.csv`` into ``out_dir`` (see the module docstring)."""
    import pandas as pd

    from gradtrust.data.digits import DigitsDataset
    from gradtrust.errors import UnknownNameError
    from gradtrust.introspection.introspective import Introspective
    from gradtrust.models import available_digits_models, load_model

    t0 = time.perf_counter()
    available = [m.split(":", 1)[-1] for m in available_digits_models()]
    names = [n.split(":", 1)[-1] for n in (names or available)]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise UnknownNameError(f"unknown digits network(s) {', '.join(unknown)}; bundled: {', '.join(available)}.")
    x_train, y_train = DigitsDataset("train").tensors()
    tests = {c: DigitsDataset("test", corruption=c, severity=s).tensors() for c, s in CONDITIONS}
    rows = []
    from tqdm import tqdm

    for name in tqdm(names, desc="fitting H, evaluating", unit="network", disable=not progress):
        model = load_model(f"digits:{name}", "DEFAULT")
        intro = Introspective(hidden=hidden, epochs=epochs, seed=seed).fit(model, x_train, y_train)
        a_train, h_train, _, _ = intro.features(model, x_train, y_train)
        control = _control(a_train, h_train, y_train, hidden, epochs, seed)
        for corruption, severity in CONDITIONS:
            x, y = tests[corruption]
            labels = y.numpy()
            pred = intro.predict(model, x)
            idx = bootstrap_indices(labels.shape[0], resamples, seed) if resamples else np.zeros((0, 0), np.int64)
            ff = _metrics(pred.feed_forward_logits.double().numpy(), pred.feed_forward_prediction.numpy(), labels, idx)
            it = _metrics(pred.logits.double().numpy(), pred.prediction.numpy(), labels, idx)
            factors = intro._extractor_for(model.module)(x)
            control_logits = control(torch.nan_to_num(factors.a), torch.nan_to_num(factors.h)).double().numpy()
            ct = _metrics(control_logits, control_logits.argmax(1), labels, idx)
            row: dict[str, Any] = {"network": f"digits:{name}",
                                   "condition": "clean" if corruption is None else f"{corruption}/{severity}",
                                   "n": int(labels.shape[0]), "H_train_accuracy": intro.info_["train_accuracy"]}
            for key in ("accuracy", "ece", "auroc"):
                for tag, m in (("ff", ff), ("intro", it), ("control", ct)):
                    row[f"{key}_{tag}"] = m[key]
                    row[f"{key}_{tag}_low"], row[f"{key}_{tag}_high"] = (
                        percentile_interval(m["dist"][key], 0.95) if "dist" in m else (float("nan"), float("nan")))
            row["delta_accuracy"] = it["accuracy"] - ff["accuracy"]
            diff = it["correct"][idx].mean(axis=1) - ff["correct"][idx].mean(axis=1) if idx.shape[0] else np.zeros(0)
            row["delta_accuracy_low"], row["delta_accuracy_high"] = percentile_interval(diff, 0.95)
            rows.append(row)
    frame = pd.DataFrame(rows)
    markdown = benchmark_markdown(frame, hidden=hidden, epochs=epochs, seed=seed, resamples=resamples)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(markdown, encoding="utf-8")
    frame.to_csv(out / "table.csv", index=False)
    return BenchmarkResult(frame, markdown, {"md": out / "table.md", "csv": out / "table.csv"},
                           time.perf_counter() - t0)


def _cell(row, key: str) -> str:
    return ci_text(row[key], row[f"{key}_low"], row[f"{key}_high"], digits=1)


def benchmark_markdown(frame, *, hidden: int, epochs: int, seed: int, resamples: int) -> str:
    header = ["network", "condition", "accuracy f", "accuracy H", "Δ accuracy H − f", "ECE f", "ECE H",
              "AUROC(MSP) f", "AUROC(MSP) H", "control: accuracy of MLP[â, ĥ]"]
    lines = [
        "Feed-forward f vs introspective H (hidden "
        f"{hidden}, {epochs} epochs, seed {seed}) on the digits test split (n = 901), ×100. "
        f"[low, high]: 95% percentile bootstrap CI ({resamples} resamples; Δ is paired). "
        "ECE: 15 equal-width bins, lower is better; AUROC of the maximum softmax probability for telling right "
        "from wrong predictions, higher is better. Control: an MLP of H's size trained the same way on the same "
        "unit factors â = (z − 1)/‖z − 1‖ and ĥ = h/‖h‖ concatenated, instead of their outer product (the "
        "gradient).", "",
        "| " + " | ".join(header) + " |", "| --- | --- | " + " | ".join("---:" for _ in header[2:]) + " |"]
    for _, r in frame.iterrows():
        lines.append("| " + " | ".join([
            r["network"], r["condition"], _cell(r, "accuracy_ff"), _cell(r, "accuracy_intro"),
            _cell(r, "delta_accuracy"), _cell(r, "ece_ff"), _cell(r, "ece_intro"), _cell(r, "auroc_ff"),
            _cell(r, "auroc_intro"), _cell(r, "accuracy_control")]) + " |")
    return "\n".join(lines) + "\n"
