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
