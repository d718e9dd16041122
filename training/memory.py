"""The glibc allocator, tuned for training on CPU: activation-sized tensors served straight from
the OS, and the heap's free memory handed back after each optimiser step (peak and resident
memory stay near what a step needs instead of ratcheting up)."""

from __future__ import annotations

import ctypes
import functools


def limit_heap_fragmentation() -> None:
    """Serve allocations of 1 MiB and more straight from the OS (glibc ``M_MMAP_THRESHOLD``).

    By default glibc raises that threshold to the size of the last freed block (up to 32 MiB), so
    the many activation-sized tensors of a training step come from the heap, where freed memory
    fragments and stays resident: measured on CPU for a 2,048-token critic step, peak RSS 3.6 GB
    by default, 1.9 GB with the threshold fixed at 1 MiB.
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)


def release_freed_memory() -> None:
    """Hand the heap's free memory back to the OS after a step (glibc ``malloc_trim``), so the
    resident size does not ratchet up from step to step."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


@functools.cache
def _glibc():
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): their allocators are left alone
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
