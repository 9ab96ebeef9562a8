"""Every dataset-scale kind under ``torchrun --nproc_per_node 2`` (gloo, CPU) writes what one process writes, and
a failure on one rank ends both ranks promptly with a clear message.

One script (written below) runs explain, introspection's feature cache, detection's sets and GradCON scoring
through their APIs with chunks of 4 samples, so that both ranks get chunks; it runs once alone and once under
torchrun, one thread per process, and the outputs are compared exactly. (``score`` has its own test:
``tests/test_runner_distributed.py``.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
import torch.distributed as dist

from gradtrust.runs.chunks import read_chunk_meta
from runs_helpers import setup

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                                   reason="torch.distributed with gloo is not available")]

KINDS = textwrap.dedent("""
    import sys
    from pathlib import Path

    import numpy as np
    import torch

    from gradtrust.data.classes import resolve_class_indices
    from gradtrust.data.open import open_dataset
    from gradtrust.detection.challenges import Challenge
    from gradtrust.detection.experiment import DetectionSettings, KnownData, run_detection
    from gradtrust.explanations.run import explain_dataset
    from gradtrust.gradcon import GradCON
    from gradtrust.gradcon.data import load_labelled
    from gradtrust.gradcon.scoring import score_to_run
    from gradtrust.introspection.cache import cached_features
    from gradtrust.models import load_model
    from gradtrust.runs.distributed import distributed_session
    from gradtrust.runs.task import env_rank

    spec, weights, data, out = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    model = load_model(spec, weights, 2)
    dataset = open_dataset(data, model)
    with distributed_session(torch.device("cpu")):
        explain_dataset(model, dataset, out / "explain", batch_size=2, chunk_size=4, progress=False)
        class_map = resolve_class_indices(dataset.classes, model.class_names, 2)
        feats = cached_features(model, dataset, class_map, out / "features", chunk_size=4, batch_size=2,
                                progress=False)
        # Detection's per-sample convolution norms pick their kernel by timing it in each process ("auto"), so
        # two processes may differ in the last bits through a convolution: detection runs on an MLP.
        torch.manual_seed(0)
        model = load_model("runs_nets:build_mlp", None, 2)
        batch = [dataset[i] for i in range(len(dataset))]
        known = KnownData(torch.stack([s.input for s in batch]), torch.tensor([s.label for s in batch]))
        settings = DetectionSettings([Challenge("corruption", "gaussian_noise", 1)], detectors=("logistic",),
                                     baselines=("softmax",), n_bootstrap=5, batch_size=2)
        table = run_detection(model, known, settings, out / "detect", show_progress=False, chunk_size=4).table
        torch.manual_seed(0)
        images = load_labelled(data)
        detector = GradCON(epochs=1, chunk_size=1).fit(images.of_class(0))
        score_to_run(detector, images, 0, out / "gradcon", resamples=0, chunk_size=4)
    if env_rank() == 0:
        np.savez(out / "features.npz", **{k: feats[k].numpy() for k in ("a", "h", "y", "logits")})
        table.to_csv(out / "detect.csv", index=False)
""")

FAILING = textwrap.dedent("""
    import os, sys, time
    import pyarrow as pa
    import torch
    from gradtrust.runs.task import TensorSamples, run_task

    class Slow:
        kind, format, verb, desc, outputs = "score", "test/1", "done", "test", ()
        def identity(self): return {}
        def probe(self, inputs, index): pass
        def batch(self, batch, inputs):
            if os.environ["RANK"] == "1":
                raise ValueError("broken on purpose")
            time.sleep(0.5)
            return batch.indices.numpy()
        def chunk(self, parts): return pa.table({"i": [int(i) for p in parts for i in p]}), {}
        def finish(self, folder, layout, metas, execution): return None

    run_task(Slow(), TensorSamples(torch.zeros(200, 1)), sys.argv[1], batch_size=1, chunk_size=2,
             device=torch.device("cpu"), progress=False)
""")


def _env() -> dict:
    out = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    out.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return out


def _torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                           "--nproc_per_node", "2", *args], capture_output=True, text=True, env=_env(),
                          timeout=timeout)


def test_every_kind_under_torchrun_equals_one_process(tmp_path, monkeypatch):
    spec, weights, data = setup(tmp_path, monkeypatch)
    script = tmp_path / "kinds.py"
    script.write_text(KINDS)
    args = [str(script), spec, str(weights), str(data)]
    single = subprocess.run([sys.executable, *args, str(tmp_path / "one")], capture_output=True, text=True,
                            env=_env(), timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    launched = _torchrun(*args, str(tmp_path / "two"))
    assert launched.returncode == 0, launched.stderr[-3000:]
    one, two = tmp_path / "one", tmp_path / "two"

    # 8 samples in chunks of 4: rank 0 wrote chunk 0, rank 1 chunk 1, for every kind
    for folder in ("explain", "features", "gradcon", "detect/sets/known", "detect/sets/gaussian_noise_1"):
        chunks = sorted((two / folder / "chunks").glob("chunk-*.parquet"))
        assert [read_chunk_meta(c)["written_by"] for c in chunks] == [{"rank": k, "world_size": 2} for k in (0, 1)]
    assert (one / "explain" / "explanations.parquet").read_bytes() == (two / "explain" / "explanations.parquet").read_bytes()
    with np.load(one / "features.npz") as a, np.load(two / "features.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files)
    for name in ("known", "gaussian_noise_1"):
        pd.testing.assert_frame_equal(pd.read_parquet(one / "detect" / "sets" / name / "set.parquet"),
                                      pd.read_parquet(two / "detect" / "sets" / name / "set.parquet"), check_exact=True)
    assert (one / "detect.csv").read_text() == (two / "detect.csv").read_text()
    pd.testing.assert_frame_equal(pd.read_parquet(one / "gradcon" / "anomaly_scores.parquet"),
                                  pd.read_parquet(two / "gradcon" / "anomaly_scores.parquet"), check_exact=True)


def test_a_failure_on_one_rank_ends_both_promptly(tmp_path):
    script = tmp_path / "failing.py"
    script.write_text(FAILING)
    started = time.perf_counter()
    launched = _torchrun(str(script), str(tmp_path / "out"), timeout=120)
    elapsed = time.perf_counter() - started
    assert launched.returncode != 0
    # rank 0 alone would sleep 50 s through its 100 batches; it stops after its next batch instead
    assert elapsed < 40, elapsed
    assert "ValueError: broken on purpose" in launched.stderr
    assert "PeerError" in launched.stderr and "rank 1 failed: ValueError: broken on purpose" in launched.stderr
