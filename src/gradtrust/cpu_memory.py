"""Keep freed CPU memory in the heap for reuse (glibc ``malloc``): an explicit, process-wide, opt-in setting.

>>> import gradtrust
>>> gradtrust.keep_freed_memory()      # True on Linux with glibc; False where it cannot apply
True

Why, and the price: see :func:`keep_freed_memory` and ``docs/performance.md`` ("Large batches and glibc").

Only the standard library is imported here: the setting does not need torch.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable

__all__ = ["freed_memory_kept", "glibc_mallopt", "keep_freed_memory"]

# mallopt(3) parameters, from glibc's malloc/malloc.h (installed as /usr/include/malloc.h):
#   #define M_TRIM_THRESHOLD    -1
#   #define M_MMAP_MAX          -4
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

#: what keep_freed_memory() sets: no request is served by mmap, and the heap top is never trimmed
#: (2**31 - 1 is the largest value mallopt's int argument takes).
KEEP = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1}
#: glibc's documented defaults (malloc/malloc.c: DEFAULT_MMAP_MAX 65536, DEFAULT_TRIM_THRESHOLD 128 * 1024),
#: which keep_freed_memory(False) sets back.
GLIBC_DEFAULTS = {M_MMAP_MAX: 65536, M_TRIM_THRESHOLD: 128 * 1024}

# What the last successful call of keep_freed_memory() left in place. The allocator's settings are
# process-wide state that glibc cannot be asked about (mallopt has no getter): this mirrors them.
_kept = False


def glibc_mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt(param, value)`` of this process through :mod:`ctypes`, or ``None`` where the
    process does not run on glibc (not Linux, musl, ...)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"; unset (or an error) elsewhere
    except (ValueError, OSError):
        return None
    if not version or not version.startswith("glibc"):
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt


def keep_freed_memory(enable: bool = True) -> bool:
    """Keep freed memory in this process's heap for reuse, instead of giving it back to the kernel.

    What it does (Linux with glibc): ``mallopt(M_MMAP_MAX, 0)`` — no allocation is served by ``mmap`` — and
    ``mallopt(M_TRIM_THRESHOLD, 2**31 - 1)`` — the heap's free top is never returned with ``sbrk``; the same as
    ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647``, set from Python.

    Why: a gradient pass on a CPU frees and re-allocates many large buffers every batch, and memory given back
    arrives again as fresh pages the kernel zeroes on first touch; with this setting the next batch reuses
    pages already mapped (Purview on mobilenet_v3_small at batch 8: ~4.9 → ~4.2 forward passes;
    ``docs/performance.md``, "Large batches and glibc", which also gives the alternatives).

    The price: the process keeps its peak heap size until it exits, and memory can fragment. The setting is
    process-wide, which is why gradtrust's functions never call this on their own; the ``gradtrust`` command
    line does, for CPU runs, unless given ``--no-keep-freed-memory``.

    ``enable=False`` sets glibc's documented defaults back (``M_MMAP_MAX`` 65536, ``M_TRIM_THRESHOLD`` 128 KiB),
    not an exact undo: any ``mallopt`` of these parameters turns off glibc's dynamic mmap threshold, so blocks
    over the current threshold are mapped again. Calling it again with the same ``enable`` changes nothing.
    Returns ``True`` when the setting was applied; ``False`` where it cannot apply: not Linux or not glibc
    (nothing is changed), or ``mallopt`` refused a value (the other one may have been set).
    """
    global _kept
    mallopt = glibc_mallopt()
    if mallopt is None:
        return False
    values = KEEP if enable else GLIBC_DEFAULTS
    # mallopt returns 1 on success, 0 on error (mallopt(3)).
    applied = all([mallopt(param, value) == 1 for param, value in values.items()])
    if applied:
        _kept = bool(enable)
    return applied


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` is in effect in this process (its last successful call enabled it).

    Settings made another way (``GLIBC_TUNABLES``, a preloaded allocator) are not seen.
    """
    return _kept
