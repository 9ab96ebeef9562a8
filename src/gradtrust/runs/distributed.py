"""``torch.distributed`` for the run engine: one process per device, chunks shared round-robin.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the engine initialises the default
process group (``gloo`` on CPU, ``nccl`` on CUDA, device ``cuda:LOCAL_RANK``), unless the caller already
did; it destroys only a group it created. Collectives carry only small Python objects (statuses, counts,
the summary): the scores themselves go through the shared output folder, which every process must see
(a local disk on one machine; a shared file system across machines).

Launching on one or several machines: README, "Several GPUs, several machines".
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from gradtrust.errors import GradTrustError

#: How long a process waits for another that shows no sign of life (seconds; ``GRADTRUST_RANK_TIMEOUT``, or its
#: older name ``GRADTRUST_DIST_TIMEOUT``): the collectives' timeout, and the longest a rank may go without
#: finishing a batch while the others wait for it (:func:`gradtrust.runs.task.run_task`).
DEFAULT_RANK_TIMEOUT_S = 30 * 60
RANK_TIMEOUT_ENV = "GRADTRUST_RANK_TIMEOUT"


class PeerError(GradTrustError):
    """Under torchrun: another rank failed (that rank reports the cause); raised on the other ranks."""


class StalledError(GradTrustError):
    """Under torchrun: another rank showed no sign of life for :func:`rank_timeout` seconds (raised on the
    ranks that waited for it, each of which says so: the stalled one cannot)."""


def rank_timeout() -> float:
    """Seconds a process waits for a silent peer (:data:`DEFAULT_RANK_TIMEOUT_S` unless the environment says)."""
    for name in (RANK_TIMEOUT_ENV, "GRADTRUST_DIST_TIMEOUT"):
        text = os.environ.get(name)
        if text:
            try:
                value = float(text)
            except ValueError:
                value = -1.0
            if not value > 0:
                raise GradTrustError(f"environment variable {name}={text!r} must be a number of seconds > 0.")
            return value
    return float(DEFAULT_RANK_TIMEOUT_S)


def stalled_message(ranks: list[int], seconds: float) -> str:
    """The message the waiting ranks end with when others show no sign of life."""
    return (f"rank(s) {', '.join(map(str, ranks))} of this torchrun job showed no progress for {seconds:g} s "
            f"({RANK_TIMEOUT_ENV}, default {DEFAULT_RANK_TIMEOUT_S} s): a stalled process (a hung file system, "
            f"device or data loader?). Stopping; complete chunks are kept: run the same command again to resume "
            f"(set {RANK_TIMEOUT_ENV} higher if one batch may take longer).")


def env_world() -> tuple[int, int, int]:
    """``(world_size, rank, local_rank)`` from the environment torchrun sets (``1, 0, 0`` otherwise)."""
    def read(name: str, default: int) -> int:
        try:
            return int(os.environ.get(name, default))
        except ValueError:
            raise GradTrustError(f"environment variable {name}={os.environ.get(name)!r} is not an integer") from None

    return read("WORLD_SIZE", 1), read("RANK", 0), read("LOCAL_RANK", 0)


def resolve_device(device: str | torch.device | None, fallback: torch.device | None = None) -> torch.device:
    """The device this process scores on.

    ``None``: under torchrun ``cuda:LOCAL_RANK`` when CUDA is available, else CPU; in one process the
    model's own device (``fallback``), else CPU. ``"cuda"`` under torchrun means ``cuda:LOCAL_RANK``.
    """
    world, _, local_rank = env_world()
    if device is None:
        if world > 1:
            return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        return fallback if fallback is not None else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise GradTrustError(f"invalid device {device!r}: {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise GradTrustError(f"device {device!r} asked for, but CUDA is not available; use --device cpu.")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank if world > 1 else torch.cuda.current_device()}")
        if dev.index >= torch.cuda.device_count():
            raise GradTrustError(f"device {dev} does not exist: {torch.cuda.device_count()} CUDA devices visible.")
    return dev


@dataclass
class DistContext:
    """Rank and world of this process; collectives that are no-ops in a single process."""

    rank: int = 0
    world_size: int = 1
    active: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_gather(self, value: Any) -> list[Any]:
        if not self.active:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        try:
            dist.all_gather_object(out, value)
        except RuntimeError as exc:  # gloo/NCCL: a peer died (its own output says why) or stayed silent
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "timed out" in text.lower() or "timeout" in text.lower():
                raise StalledError(stalled_message([r for r in range(self.world_size) if r != self.rank],
                                                     rank_timeout()) + f" ({text[:200]})") from None
            raise PeerError(f"another process of this torchrun job stopped ({text[:200]}); its output says why. "
                            "Complete chunks are kept: run the same command again to resume.") from None
        return out


@contextlib.contextmanager
def distributed_session(device: torch.device | None = None) -> Iterator[DistContext]:
    """Join (or create, under torchrun) the default process group for the duration of the block."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        yield DistContext(rank=dist.get_rank(), world_size=world, active=world > 1)
        return
    world, rank, _ = env_world()
    if world <= 1:
        yield DistContext()
        return
    if not dist.is_available():
        raise GradTrustError(f"WORLD_SIZE={world} but this PyTorch build has no torch.distributed.")
    dev = device if device is not None else resolve_device(None)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    timeout = datetime.timedelta(seconds=rank_timeout())
    try:
        dist.init_process_group(backend=backend, timeout=timeout)
    except (RuntimeError, ValueError) as exc:
        raise GradTrustError(
            f"cannot initialise torch.distributed (backend {backend}, WORLD_SIZE={world}, RANK={rank}): "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}. Launch with "
            "torchrun (it sets MASTER_ADDR, MASTER_PORT, RANK, LOCAL_RANK, WORLD_SIZE)."
        ) from None
    try:
        yield DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), active=True)
    finally:
        dist.destroy_process_group()
