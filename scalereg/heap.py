"""glibc malloc settings around work whose allocations they make slow or fat.

Dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536`` (freed memory
goes back to the system at once), and any explicit malloc setting switches off
glibc's adaptive mmap threshold: every allocation over 128 KiB is then mapped afresh
(mmap, a page fault per 4 KiB, munmap).  Block tasks are fine with that: their large
arrays are mapped anyway, and the setting keeps their workers small.  ANTs is not:
SyN allocates and frees images of a few MiB every iteration, and one step of
benchmarks/overhead.py took 77.8 s in a worker against 70.4 s in a plain process.
`heap_for_mid_size_allocations` serves such allocations from the heap and keeps them
there for the duration of a step, then restores the process's settings and returns
the freed heap.
Elsewhere than glibc these are no-ops.
"""

from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager
from typing import Iterator

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
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
