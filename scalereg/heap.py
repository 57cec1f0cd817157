"""glibc malloc settings around work whose allocations they make slow or fat.

Dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536`` (freed memory
goes back to the system at once), and any explicit malloc setting switches off
glibc's adaptive mmap threshold: every allocation over 128 KiB is then mapped afresh
(mmap, a page fault per 4 KiB, munmap).  Work that allocates and frees buffers of a
few MiB over and over pays for that: SyN's images (one step of benchmarks/overhead.py
took 77.8 s in a worker against 70.4 s in a plain process) and a block task's zarr
chunk buffers (the overhead benchmark's fixed-image conversion: 7.8-8.2 s on two
workers against 4.6-4.9 s in a process pool).  `heap_for_mid_size_allocations`
serves such allocations from the heap and keeps them there for the duration of a step
or a task, then restores the process's settings and returns the freed heap.  Each
thread's heap (arena) keeps what it frees, so `share_malloc_arenas` makes the threads
a worker starts (zarr's codec threads) share a few: the conversion above peaked at
0.48-0.57 GiB per worker with an arena per thread, 0.37-0.39 GiB with two.
Elsewhere than glibc these are no-ops.
"""

from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager
from typing import Iterator

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # mallopt parameters (malloc.h)
GLIBC_DEFAULT_MMAP_THRESHOLD = 128 * 1024
GLIBC_DEFAULT_TRIM_THRESHOLD = 128 * 1024
# glibc's adaptive threshold grows up to this (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit)
ADAPTIVE_MMAP_THRESHOLD_MAX = 32 * 2**20
# variables after which glibc's threshold is fixed rather than adaptive
_FIXING_VARIABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both must exist (glibc)
        return libc
    except (OSError, AttributeError):  # not glibc (macOS, musl)
        return None


_libc = _load_libc()


def release_free_memory() -> None:
    """Hand memory this process has freed back to the system (glibc keeps it otherwise)."""
    if _libc is not None:
        _libc.malloc_trim(0)


def _fixed_thresholds() -> tuple[int, int] | None:
    """The (mmap, trim) thresholds this process was started with when the environment
    fixed them (see the module's docstring), else None (glibc's adaptive ones are on)."""
    if not any(name in os.environ for name in _FIXING_VARIABLES):
        return None
    return (
        _integer("MALLOC_MMAP_THRESHOLD_", GLIBC_DEFAULT_MMAP_THRESHOLD),
        _integer("MALLOC_TRIM_THRESHOLD_", GLIBC_DEFAULT_TRIM_THRESHOLD),
    )


def _integer(variable: str, default: int) -> int:
    try:
        return int(os.environ.get(variable, default))
    except ValueError:  # glibc ignores what it cannot parse
        return default


def share_malloc_arenas(limit: int) -> None:
    """Threads that start from now on share at most ``limit`` malloc arenas (the main
    thread's included) instead of getting one each, in a process whose malloc
    thresholds are fixed (a Dask worker; elsewhere a no-op).  glibc fixes the limit the
    next time it needs a new arena, for the rest of the process, and not at all if the
    process already had more than 8: call it early, in a process you own."""
    if _libc is not None and _fixed_thresholds() is not None:
        _libc.mallopt(M_ARENA_MAX, max(1, limit))


@contextmanager
def heap_for_mid_size_allocations() -> Iterator[None]:
    """Within the block, allocations up to 32 MiB come from the heap and stay there once
    freed (up to twice that at the heap's top), as glibc's adaptive thresholds would
    have it; after it, the process's own thresholds are back and the freed heap goes
    back to the system.  Process-wide: meant for a worker that runs one task at a time
    (a concurrent task only changes speed, not results)."""
    fixed = _fixed_thresholds()
    if _libc is None or fixed is None or fixed[0] >= ADAPTIVE_MMAP_THRESHOLD_MAX:
        yield
        return
    _libc.mallopt(M_MMAP_THRESHOLD, ADAPTIVE_MMAP_THRESHOLD_MAX)
    _libc.mallopt(M_TRIM_THRESHOLD, 2 * ADAPTIVE_MMAP_THRESHOLD_MAX)
    try:
        yield
    finally:
        _libc.mallopt(M_MMAP_THRESHOLD, fixed[0])
        _libc.mallopt(M_TRIM_THRESHOLD, fixed[1])
        release_free_memory()
