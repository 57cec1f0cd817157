"""Deadlines for tasks that may hang (a stuck read from a network filesystem or a bucket).

Prefect cannot enforce ``timeout_seconds`` on a synchronous task that runs in a Dask
worker thread: it only logs a warning.  `deadline` does it here: when the time is up it
raises `TaskTimeout` (a TimeoutError, so `retry_transient` retries it) in the thread
that runs the task, the next time that thread executes Python code.  A hang inside one
long C call (an ANTs registration) is not interruptible this way; such tasks get no
deadline and are bounded by the batch job's walltime instead.
"""

from __future__ import annotations

import ctypes
import os
import threading
from contextlib import contextmanager
from typing import Iterator

# Seconds a task may take per block it writes; several minutes even on slow storage.
BLOCK_SECONDS_ENV = "SCALEREG_BLOCK_TIMEOUT_SECONDS"
DEFAULT_BLOCK_SECONDS = 600.0


class TaskTimeout(TimeoutError):
    """A task ran past its deadline (raised in the task's own thread)."""


def block_deadline(blocks: int) -> float:
    """Seconds allowed for a task that writes ``blocks`` blocks (settable per
    deployment through SCALEREG_BLOCK_TIMEOUT_SECONDS, seconds per block)."""
    per_block = float(os.environ.get(BLOCK_SECONDS_ENV) or DEFAULT_BLOCK_SECONDS)
    return per_block * max(1, blocks)


@contextmanager
def deadline(seconds: float | None, what: str) -> Iterator[None]:
    """Raise `TaskTimeout` naming ``what`` in this thread if the body is still running
    after ``seconds`` (None: no deadline)."""
    if seconds is None:
        yield
        return
    thread_id = threading.get_ident()
    lock = threading.Lock()
    state = {"done": False, "fired": False}

    def fire() -> None:
        with lock:
            if state["done"]:
                return
            state["fired"] = True
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(TaskTimeout))

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except TaskTimeout:
        if not state["fired"]:
            raise
        # the bare class delivered by fire(), re-raised with what timed out
        raise TaskTimeout(f"{what}: no result after {seconds:g} s (a retry may succeed)") from None
    finally:
        with lock:
            state["done"] = True
            timer.cancel()
            if state["fired"]:
                # the body may have finished just before the exception was delivered:
                # clear it, so that it cannot surface later in unrelated code
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
