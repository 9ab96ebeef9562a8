"""``--keep-freed-memory/--no-keep-freed-memory`` and ``--threads``: the command line's CPU policy. A library call must not
change the process's allocator behind its caller's back; an application (the ``gradtrust`` commands) may. Why and
at what price: :mod:`gradtrust.cpu_memory` and ``docs/performance.md``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from gradtrust.cli.options import DEFINITIONS, SharedOption
from gradtrust.errors import InputError

__all__ = ["OPTION_NAME", "available_memory", "check_batch_memory", "keep_freed_memory_option", "runs_on_cpu"]

F = TypeVar("F", bound=Callable[..., Any])

OPTION_NAME = "keep_freed_memory"
HELP = "On a CPU, keep freed memory for reuse (glibc mallopt): fewer page faults; the process keeps its peak memory."


def runs_on_cpu(device: Any) -> bool:
    """Whether a command given ``--device device`` runs on the CPU: ``None`` (the commands' default) means CUDA
    when it is available; a device the command will reject counts as not CPU (nothing is changed)."""
    import torch

    if device is None:
        return not torch.cuda.is_available()
    try:
        return torch.device(str(device)).type == "cpu"
    except (RuntimeError, ValueError):
        return False


def keep_freed_memory_option(command: F) -> F:
    """Add ``--keep-freed-memory/--no-keep-freed-memory`` (default on) and the shared ``--threads`` to a click
    command callback: on, and the command's ``device`` the CPU (no ``device`` parameter: the CPU), it calls
    :func:`gradtrust.cpu_memory.keep_freed_memory` before the command runs; ``--threads N`` (or
    ``GRADTRUST_THREADS``) calls ``torch.set_num_threads(N)`` first, unless the callback takes ``threads``
    itself (``gradtrust gradcon benchmark``: one thread unless told). Place it under ``@...command(...)``."""
    own_threads = "threads" in inspect.signature(command).parameters

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        threads = kwargs["threads"] if own_threads else kwargs.pop("threads")
        if threads is not None and not own_threads:
            import torch

            torch.set_num_threads(threads)
        if kwargs.pop(OPTION_NAME) and runs_on_cpu(kwargs.get("device", "cpu")):
            from gradtrust.cpu_memory import keep_freed_memory

            keep_freed_memory()
        return command(*args, **kwargs)

    option = SharedOption(["--keep-freed-memory/--no-keep-freed-memory", OPTION_NAME], default=True,
                          show_default=True, help=HELP, section="Run")
    section, spec = DEFINITIONS["threads"]
    spec = dict(spec)
    threads = SharedOption(spec.pop("param_decls"), section=section, definition="threads", **spec)
    # click lists options in reverse order of __click_params__: at the front, these are shown last.
    wrapper.__dict__["__click_params__"] = [option, threads, *getattr(command, "__click_params__", [])]
    return wrapper  # type: ignore[return-value]


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (``MemAvailable`` of ``/proc/meminfo``, else free physical
    pages by ``os.sysconf``); ``None`` where neither says."""
    import os

    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def batch_memory(preprocessing: dict[str, Any], batch_size: int, channels: int = 3) -> int | None:
    """A lower bound of the bytes one batch takes on the host before the model runs: one image resized (8-bit,
    then float32) plus the batch of float32 inputs, twice (the collated batch and its copy for the model);
    ``None`` when the preprocessing fixes no size. A one-number resize (the shorter side) counts as a square."""
    def area(size: Any) -> int | None:
        if not isinstance(size, (list, tuple)) or not size:
            return None
        sides = [int(v) for v in size]
        return sides[0] * sides[-1]

    resized, final = area(preprocessing.get("resize")), area(preprocessing.get("crop"))
    final = final or resized
    if final is None:
        return None
    return channels * ((resized or final) * (1 + 4) + 2 * batch_size * final * 4)


def check_batch_memory(model: Any, batch_size: int, available: int | None = None) -> None:
    """Refuse, before any image is read, a preprocessing whose batches cannot fit in memory (e.g. --input-size
    100000: 120 GB per image), with the figure — rather than let the kernel's out-of-memory killer end the
    process without a word."""
    pre = model.meta.get("preprocessing") if isinstance(getattr(model, "meta", None), dict) else None
    need = batch_memory(pre, batch_size) if isinstance(pre, dict) else None
    have = available_memory() if available is None else available
    if need is None or have is None or need <= have or not isinstance(pre, dict):
        return
    size = "x".join(str(v) for v in (pre.get("crop") or pre.get("resize") or []))
    given = ", ".join(f"{k} {v}" for k, v in pre.items() if k in ("resize", "crop") and v)
    raise InputError(f"the preprocessing ({given}) makes inputs of {size} pixels: a batch of {batch_size} needs at "
                     f"least {need / 1e9:,.1f} GB "
                     f"before the model runs, and this machine has {have / 1e9:,.1f} GB available. Use a smaller "
                     "--input-size (or --resize/--crop) or --batch-size.")
