"""``torchrun --nproc_per_node 2 -m gradtrust score`` (gloo, CPU) writes what one process writes.

Both runs use one thread per process (OMP_NUM_THREADS=1) and the same batches, so the scores are
bit-identical: compared exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch.distributed as dist

from gradtrust.runs.chunks import read_chunk_meta

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

ARGS = ["--model", "digits:digits_mlp", "--data", "digits:test:blur", "--methods",
        "softmax,gradtrust,gradtrust_topk,odin,mc_dropout,purview_final", "--option", "mc_samples=3",
        "--batch-size", "32", "--chunk-size", "128", "--device", "cpu", "--no-progress"]


def env() -> dict:
    out = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    out.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return out


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run([sys.executable, "-m", "gradtrust", "score", *ARGS, "--out", str(one)],
                            capture_output=True, text=True, env=env(), timeout=300)
    assert single.returncode == 0, single.stderr
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
         "-m", "gradtrust", "score", *ARGS, "--out", str(two)],
        capture_output=True, text=True, env=env(), timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stdout.count("scored 901 of 901") == 1  # only rank 0 reports

    # 901 samples in chunks of 128: 8 chunks, rank 0 scored 0, 2, 4, 6 and rank 1 scored 1, 3, 5, 7.
    chunks = sorted((two / "chunks").glob("chunk-*.parquet"))
    assert [c.name for c in chunks] == [f"chunk-{128 * k:09d}.parquet" for k in range(8)]
    assert [read_chunk_meta(c)["written_by"] for c in chunks] == [{"rank": k % 2, "world_size": 2} for k in range(8)]
    pd.testing.assert_frame_equal(pd.read_parquet(two / "scores.parquet"), pd.read_parquet(one / "scores.parquet"),
                                  check_exact=True)
    m1 = json.loads((one / "manifest.json").read_text())
    m2 = json.loads((two / "manifest.json").read_text())
    assert m1.pop("execution")["world_size"] == 1
    assert m2.pop("execution")["world_size"] == 2
    assert m1 == m2
