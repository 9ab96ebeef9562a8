"""evaluate / evaluate_frame / TrustEvaluator, and the numpy-only import of gradtrust.evaluation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gradtrust.errors import InputError, UnknownNameError
from gradtrust.evaluation import (
    METRICS,
    TrustEvaluator,
    auac,
    aufc,
    augrc,
    aurc,
    auroc,
    bootstrap_ci,
    eaurc,
    evaluate,
    evaluate_frame,
    fpr_at_95tpr,
    oracle_reference,
    random_reference,
)


def data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    s = np.round(rng.normal(size=n), 1)
    c = rng.random(n) < 1 / (1 + np.exp(-(2 * s + 1)))
    s[rng.random(n) < 0.05] = np.nan
    y = rng.integers(0, 6, n)
    p = np.where(c, y, (y + rng.integers(1, 6, n)) % 6)
    return s, y, p


def test_evaluate_equals_the_single_functions():
    s, y, p = data()
    c = y == p
    out = evaluate(s, y, p)
    assert out["n"] == 400 and out["n_nan"] == int(np.isnan(s).sum()) > 0
    assert out["accuracy"] == pytest.approx(c.mean())
    singles = {
        "auac": auac(s, c),
        "aufc": aufc(s, y, p),
        "aurc": aurc(s, c),
        "eaurc": eaurc(s, c),
        "augrc": augrc(s, c),
        "auroc": auroc(s, c),
        "fpr_at_95tpr": fpr_at_95tpr(s, c),
    }
    assert set(METRICS) == set(singles)
    for name, value in singles.items():
        assert out[name] == pytest.approx(value, abs=1e-12), name


def test_evaluate_with_ci_matches_bootstrap_ci():
    s, y, p = data()
    c = y == p
    out = evaluate(s, y, p, ci=True, n_resamples=100, seed=3)
    for name in METRICS:
        assert out[f"{name}_low"] <= out[name] <= out[f"{name}_high"], name
    assert (out["aurc_low"], out["aurc_high"]) == pytest.approx(
        bootstrap_ci(aurc, s, c, n_resamples=100, seed=3)
    )
    assert (out["aufc_low"], out["aufc_high"]) == pytest.approx(
        bootstrap_ci(aufc, s, y, p, n_resamples=100, seed=3)
    )


def test_evaluate_edge_cases():
    out = evaluate([0.2, 0.9], [1, 2], [1, 2])  # all correct
    assert out["auac"] == 100.0 and out["aurc"] == 0.0 and np.isnan(out["auroc"])
    out = evaluate([np.nan], [0], [1])  # one sample, NaN score, wrong
    assert out["n_nan"] == 1 and out["auac"] == 0.0 and out["aurc"] == 1.0
    with pytest.raises(InputError, match="empty"):
        evaluate([], [], [])
    with pytest.raises(InputError, match="2.*3|3.*2"):
        evaluate([0.1, 0.2], [1, 2, 3], [1, 2, 3])


def frame():
    pd = pytest.importorskip("pandas")
    s, y, p = data()
    rng = np.random.default_rng(1)
    y = y.copy()
    y[:7] = -1  # unknown labels: left out and counted
    df = pd.DataFrame(
        {
            "index": np.arange(400),
            "path": [f"img{i}.png" for i in range(400)],
            "label": y,
            "prediction": p,
            "correct": y == p,
            "softmax": s,
            "gradtrust": rng.random(400),
            "nan_reason_softmax": np.where(np.isnan(s), "undefined", ""),
        }
    )
    return df


def test_evaluate_frame_rows_and_columns():
    df = frame()
    out = evaluate_frame(df)
    assert list(out.index) == ["softmax", "gradtrust"] and out.index.name == "method"
    assert list(out.columns) == ["n", "n_nan", "n_unlabeled", "accuracy", *METRICS]
    keep = df["label"].to_numpy() >= 0
    for method in ("softmax", "gradtrust"):
        want = evaluate(df[method].to_numpy()[keep], df["label"][keep], df["prediction"][keep])
        for key, value in want.items():
            assert out.loc[method, key] == pytest.approx(value, nan_ok=True), (method, key)
    assert (out["n_unlabeled"] == 7).all() and (out["n"] == 393).all()


def test_evaluate_frame_options():
    df = frame()
    out = evaluate_frame(df, ["gradtrust"], ci=True, n_resamples=50, references=True)
    assert list(out.index) == ["gradtrust", "random_reference", "oracle_reference"]
    assert "auroc_low" in out.columns and "aurc_high" in out.columns
    keep = df["label"].to_numpy() >= 0
    correct = (df["label"] == df["prediction"]).to_numpy()[keep]
    assert out.loc["random_reference", "auac"] == pytest.approx(random_reference(correct)["auac"])
    assert out.loc["oracle_reference", "aurc"] == pytest.approx(oracle_reference(correct)["aurc"])
    assert np.isnan(out.loc["oracle_reference", "aufc"])
    with pytest.raises(UnknownNameError, match="softmax"):
        evaluate_frame(df, ["nope"])
    with pytest.raises(InputError, match="label"):
        evaluate_frame(df.drop(columns=["label"]))
    with pytest.raises(InputError, match="score column"):
        evaluate_frame(df[["label", "prediction"]])


def test_trust_evaluator_accumulates_batches():
    s, y, p = data()
    ev = TrustEvaluator()
    for lo in range(0, 400, 64):
        ev.update(s[lo : lo + 64], y[lo : lo + 64], p[lo : lo + 64])
    ev.update([], [], [])
    assert ev.n_samples == 400
    assert ev.compute() == pytest.approx(evaluate(s, y, p), nan_ok=True)
    ev.reset()
    with pytest.raises(InputError, match="update"):
        ev.compute()
    with pytest.raises(InputError, match="2.*3|3.*2"):
        ev.update([0.1, 0.2], [1, 2, 3], [1, 2, 3])


def test_trust_evaluator_torch_and_ci():
    torch = pytest.importorskip("torch")
    s, y, p = data(n=200)
    ev = TrustEvaluator(ci=True, n_resamples=50, seed=1)
    ev.update(torch.tensor(s[:100]), torch.tensor(y[:100]), torch.tensor(p[:100]))
    ev.update(torch.tensor(s[100:]), torch.tensor(y[100:]), torch.tensor(p[100:]))
    assert ev.compute() == pytest.approx(
        evaluate(s, y, p, ci=True, n_resamples=50, seed=1), nan_ok=True
    )


@pytest.mark.slow
def test_evaluation_package_needs_numpy_only():
    """gradtrust.evaluation imports no torch, pandas, sklearn or scipy (the parent package may)."""
    src = Path(__file__).resolve().parents[1] / "src" / "gradtrust"
    code = f"""
import sys, types
for name in ("torch", "pandas", "sklearn", "scipy"):
    sys.modules[name] = None  # any import of them fails
pkg = types.ModuleType("gradtrust"); pkg.__path__ = [{str(src)!r}]
sys.modules["gradtrust"] = pkg  # skip gradtrust/__init__.py, which loads the torch parts
import gradtrust.evaluation as ev
print(ev.aurc([0.1, 0.5, 0.9], [0, 1, 1]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) == pytest.approx(aurc([0.1, 0.5, 0.9], [0, 1, 1]))
