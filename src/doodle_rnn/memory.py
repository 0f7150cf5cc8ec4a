"""Keep freed memory inside the process, so each training step does not fault fresh pages in.

A training step allocates tens of MB per tensor (input projections, gate activations, their
gradients) and frees them at the end of the step. glibc's malloc serves blocks that large with
`mmap` and gives them back to the kernel on `free`, so the next step gets fresh pages that the kernel
must zero and map again: on the 2-core benchmark box that page-fault work (system time) cost as much
as the arithmetic (train 458 -> 643 drawings/s on `benchmarks/bench_train.py --max-batches 25` once
freed blocks were kept, system time 7.1 s -> 1.0 s, peak RSS unchanged at ~1.4-1.5 GB because the
peak is the peak either way).

`keep_freed_memory()` raises glibc's mmap and trim thresholds with `mallopt`; elsewhere (macOS,
Windows, musl) it does nothing and returns False. It is process-wide and idempotent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_INT_MAX = 2**31 - 1  # mallopt takes a C int
_done = False


def keep_freed_memory() -> bool:
    """Ask glibc to serve big blocks from the heap and keep freed ones; True when that took effect."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, _INT_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, _INT_MAX))
    return _done
