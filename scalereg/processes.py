"""Child processes that end with the process that started them (Linux)."""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Callable

PR_SET_PDEATHSIG = 1

# Run as ``python -c LAUNCH_DYING_WITH_PARENT PARENT_PID ARGS...``: asks the kernel for
# SIGTERM when the thread that started it ends, then becomes ``python ARGS...`` (the
# request survives exec).  For children started from a process that has other threads
# already, where a preexec_fn is not safe.
LAUNCH_DYING_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "prctl = getattr(ctypes.CDLL(None), 'prctl', None)\n"
    "if prctl is not None:\n"
    "    prctl(1, signal.SIGTERM)\n"
    "    if os.getppid() != int(sys.argv[1]): sys.exit(1)  # the parent ended before the request\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
)


def die_with_parent(signum: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` for `subprocess.Popen` that has the kernel send ``signum`` to the
    child when the thread that started it ends (None where there is no prctl: not Linux).
    Only for a parent with one thread (a preexec_fn is not safe beside other threads)."""
    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None) if sys.platform.startswith("linux") else None
    if prctl is None:
        return None
    parent = os.getpid()

    def request() -> None:
        prctl(PR_SET_PDEATHSIG, signum)
        if os.getppid() != parent:  # the parent ended before the request was made
            os._exit(1)

    return request
