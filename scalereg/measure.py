"""Wall time and peak memory of a piece of work, for QC tables and the planner."""

from __future__ import annotations

import threading
import time
from types import TracebackType

import psutil


class Measured:
    """Context manager: ``seconds`` and ``peak_rss`` (bytes, this process and its
    children, sampled every ``interval`` seconds) of the enclosed block."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.seconds = 0.0
        self.peak_rss = 0
        self.start_rss = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rss(self) -> int:
        process = psutil.Process()
        total = process.memory_info().rss
        for child in process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss = max(self.peak_rss, self._rss())

    def __enter__(self) -> "Measured":
        self.start_rss = self.peak_rss = self._rss()
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.peak_rss = max(self.peak_rss, self._rss())
        self.seconds = time.perf_counter() - self._start

    @property
    def added_rss(self) -> int:
        """Peak memory above what the process held when the block started."""
        return max(0, self.peak_rss - self.start_rss)
