"""Capture what a C or C++ library prints itself while one call runs."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from typing import Iterator

_LOCK = threading.Lock()


@contextlib.contextmanager
def native_output() -> Iterator[list[str]]:
    """Within the block, what is written to file descriptors 1 and 2 (by native code:
    MetaIO's ``std::cerr``, ITK's output window) is kept instead of reaching the
    terminal; the list yielded holds its non-empty lines once the block ends.

    The descriptors are the process's: the block should be short (a header read), and
    is serialised with other such blocks."""
    lines: list[str] = []
    with _LOCK, tempfile.TemporaryFile() as capture:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, ValueError, OSError):
                pass
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(capture.fileno(), 1)
            os.dup2(capture.fileno(), 2)
            yield lines
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            capture.seek(0)
            lines.extend(line.strip() for line in capture.read().decode(errors="replace").splitlines() if line.strip())
