"""The C allocator's trade-off between speed and peak memory (`train.reuse_freed_memory`)."""

from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's malloc.h


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

    By default, blocks over 32 MiB are mapped anew and unmapped when freed, so each training
    step page-faults them in again: about 25,000 faults per step on TensorFlow on CPU, 16% of
    the step in the kernel (BENCHMARKS.md). With this, those blocks come from the heap, which
    is kept: faster steps, at the price of a higher peak (fragmentation). Returns False where
    the C library is not glibc (nothing changed).
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt(_M_MMAP_MAX, 0)  # no mmap: large blocks come from the heap
    mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)  # keep up to 2 GiB of free heap
    return True
