"""Under torchrun a silent or dead peer ends the others with one line, never a raw gloo traceback or a 6-hour
wait (issue 21): a rank alive but stalled for ``GRADTRUST_RANK_TIMEOUT`` seconds is named by the others; a rank
that dies ends the others' next collective with :class:`PeerError`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch.distributed as dist

from gradtrust.errors import GradTrustError
from gradtrust.runs import distributed
from gradtrust.runs.distributed import DistContext, PeerError, StalledError, rank_timeout
from runs_helpers import setup

STALLING = textwrap.dedent("""
    import os, sys, time
    import pyarrow as pa
    import torch
    from gradtrust.runs.task import TensorSamples, run_task

    class Stalls:
        kind, format, verb, desc, outputs = "score", "test/1", "done", "test", ()
        def identity(self): return {}
        def probe(self, inputs, index): pass
        def batch(self, batch, inputs):
            if os.environ["RANK"] == "1":
                time.sleep(600)  # alive, silent
            return batch.indices.numpy()
        def chunk(self, parts): return pa.table({"i": [int(i) for p in parts for i in p]}), {}
        def finish(self, folder, layout, metas, execution): return None

    run_task(Stalls(), TensorSamples(torch.zeros(8, 1)), sys.argv[1], batch_size=1, chunk_size=2,
             device=torch.device("cpu"), progress=False)
""")

needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)


def _env(**extra: str) -> dict:
    out = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    out.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore", **extra)
    return out


def _torchrun(*args: str, env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nnodes",
            "1",
            "--nproc_per_node",
            "2",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_rank_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("GRADTRUST_RANK_TIMEOUT", raising=False)
    monkeypatch.delenv("GRADTRUST_DIST_TIMEOUT", raising=False)
    assert rank_timeout() == 30 * 60
    monkeypatch.setenv("GRADTRUST_DIST_TIMEOUT", "90")  # the older name
    assert rank_timeout() == 90
    monkeypatch.setenv("GRADTRUST_RANK_TIMEOUT", "2.5")
    assert rank_timeout() == 2.5
    monkeypatch.setenv("GRADTRUST_RANK_TIMEOUT", "soon")
    with pytest.raises(GradTrustError, match="GRADTRUST_RANK_TIMEOUT='soon'"):
        rank_timeout()


@pytest.mark.parametrize(
    "text, error",
    [
        ("[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:3213", PeerError),
        (
            "[gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 1800000ms for recv operation to complete",
            StalledError,
        ),
    ],
)
def test_a_collective_that_fails_becomes_one_line(monkeypatch, text, error):
    import torch.distributed

    def broken(out, value):
        raise RuntimeError(text)

    monkeypatch.setattr(torch.distributed, "all_gather_object", broken)
    with pytest.raises(error) as caught:
        DistContext(rank=0, world_size=2, active=True).all_gather("x")
    assert "\n" not in str(caught.value) and "run the same command again" in str(caught.value)
    assert distributed.PeerError is PeerError


@pytest.mark.slow
@needs_gloo
def test_a_stalled_rank_ends_the_others_within_the_timeout(tmp_path):
    script = tmp_path / "stalling.py"
    script.write_text(STALLING)
    started = time.perf_counter()
    launched = _torchrun(str(script), str(tmp_path / "out"), env=_env(GRADTRUST_RANK_TIMEOUT="3"))
    elapsed = time.perf_counter() - started
    assert launched.returncode != 0
    assert elapsed < 90, elapsed  # rank 1 sleeps 600 s; rank 0 gives up 3 s after its last sign of life
    assert "rank(s) 1 of this torchrun job showed no progress for 3 s" in launched.stderr, launched.stderr[-3000:]
    assert "GRADTRUST_RANK_TIMEOUT" in launched.stderr


@pytest.mark.slow
@needs_gloo
def test_a_dead_peer_gives_no_raw_gloo_traceback(tmp_path, monkeypatch):
    spec, weights, data = setup(tmp_path, monkeypatch)
    (tmp_path / "dies.py").write_text(
        textwrap.dedent("""
        import os
        from runs_nets import build

        def on_rank_one(num_classes=2):
            if os.environ.get("RANK") == "1":
                raise RuntimeError("rank 1 cannot build its model")
            return build(num_classes)
    """)
    )
    for command in ("score", "explain"):
        launched = _torchrun(
            "-m",
            "gradtrust",
            command,
            "--model",
            "dies:on_rank_one",
            "--weights",
            str(weights),
            "--data",
            str(data),
            "--out",
            str(tmp_path / command),
            "--device",
            "cpu",
            "--no-progress",
            env=_env(PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])),
        )
        assert launched.returncode != 0
        assert "rank 1 cannot build its model" in launched.stderr, launched.stderr[-3000:]
        assert "[rank0]: Traceback" not in launched.stderr, launched.stderr[-3000:]
