"""``--keep-freed-memory/--no-keep-freed-memory``: the command line's CPU memory policy. A library call must not
change the process's allocator behind its caller's back; an application (the ``gradtrust`` commands) may. Why and
at what price: :mod:`gradtrust.cpu_memory` and ``docs/performance.md``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from gradtrust.cli.options import SharedOption

__all__ = ["OPTION_NAME", "keep_freed_memory_option", "runs_on_cpu"]

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
    """Add ``--keep-freed-memory/--no-keep-freed-memory`` (default on) to a click command callback: on, and the
    command's ``device`` the CPU (no ``device`` parameter: the CPU), it calls
    :func:`gradtrust.cpu_memory.keep_freed_memory` before the command runs. Place it under ``@...command(...)``."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if kwargs.pop(OPTION_NAME) and runs_on_cpu(kwargs.get("device", "cpu")):
            from gradtrust.cpu_memory import keep_freed_memory

            keep_freed_memory()
        return command(*args, **kwargs)

    option = SharedOption(["--keep-freed-memory/--no-keep-freed-memory", OPTION_NAME], default=True,
                          show_default=True, help=HELP, section="Run")
    # click lists options in reverse order of __click_params__: at the front, this one is shown last.
    wrapper.__dict__["__click_params__"] = [option, *getattr(command, "__click_params__", [])]
    return wrapper  # type: ignore[return-value]
