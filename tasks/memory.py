"""Give a task's freed memory back to the operating system when it ends.

Workers run with glibc's malloc defaults (see flows/cluster.py): inside a task, large
buffers are reused instead of being mapped and unmapped on every allocation, which is
what keeps ANTs and the block code as fast as outside Dask.  What a task freed would
then stay with the worker and count against its memory limit until the next task;
``malloc_trim`` returns it once per task, where it costs nothing that matters.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

from scalereg.measure import release_free_memory

F = TypeVar("F", bound=Callable[..., Any])


def gives_memory_back(fn: F) -> F:
    """Run ``fn``, then release the memory it freed, whether it returned or raised."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            release_free_memory()

    return wrapper  # type: ignore[return-value]
