"""Process-level settings for long CPU runs.

glibc serves large allocations (PyTorch's activations and masks) with ``mmap`` and hands
them back to the system when freed, so every iteration of an optimisation page-faults its
buffers in again: on the extremal-perturbation loop that costs as much system time as the
arithmetic (measured: 34 s system of 89 s wall, 1 thread). ``retain_freed_memory()`` tells
the allocator to keep freed memory for reuse instead (the same as setting
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_``). The command line and the
experiment scripts call it; a library user may call it once at the start of a script.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def retain_freed_memory(mmap_threshold: int = 1 << 30, trim_threshold: int = 1 << 34) -> bool:
    """Keep freed heap memory for reuse (glibc only; elsewhere nothing happens).

    Allocations below ``mmap_threshold`` bytes come from the heap, and the heap is returned
    to the system only when more than ``trim_threshold`` bytes are free at its top. Returns
    whether the settings took effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, min(mmap_threshold, 2**31 - 1)) == 1
    return mallopt(_M_TRIM_THRESHOLD, min(trim_threshold, 2**31 - 1)) == 1 and ok
