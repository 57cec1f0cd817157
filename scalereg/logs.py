"""Where scalereg's log records go, masked: a log file per command, a quiet console.

- `install_masking`: every log record of the process, its exception text included, has
  its secrets masked as it is made (`scalereg.redact.mask_secrets`), whichever handler
  sends it on (console, file, Prefect's API).
- `log_to_file`: a command's records (INFO and up, tracebacks included) and Python's
  warnings go to a file of its own, `new_log_file`, under `log_directory` (the newest
  `KEEP_LOG_FILES` are kept).
- `one_line_console`: handlers that write to the terminal print warnings as single lines:
  no tracebacks, and no errors (the command reports its error itself, once, and says
  where the log is).  The CLI's local Dask workers do the same (``SCALEREG_CONSOLE``)
  and add their records to the command's log file (``SCALEREG_LOG_FILE``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from scalereg.redact import mask_secrets

CONSOLE_VARIABLE = "SCALEREG_CONSOLE"  # "one-line": processes started by the CLI print as it does
LOG_FILE_VARIABLE = "SCALEREG_LOG_FILE"  # the command's log file, which the processes it starts add to
KEEP_LOG_FILES = 100
_FORMAT = "%(asctime)s %(levelname)-7s %(name)s %(processName)s: %(message)s"


def install_masking() -> None:
    """Mask secrets in every log record made from now on in this process (idempotent)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "scalereg_masking", False):
        return

    def make_record(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            record.msg, record.args = mask_secrets(record.getMessage()), ()
            if record.exc_info and record.exc_info[0] is not None:
                record.exc_text = mask_secrets("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is logging's to report
            pass
        return record

    make_record.scalereg_masking = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_record)


def log_directory() -> Path:
    """``$SCALEREG_LOG_DIR``, else ``$XDG_CACHE_HOME/scalereg/logs`` (``~/.cache/scalereg/logs``)."""
    if os.environ.get("SCALEREG_LOG_DIR"):
        return Path(os.environ["SCALEREG_LOG_DIR"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "scalereg" / "logs"


def new_log_file(command: str) -> Path:
    """A new log file's path for one run of ``command`` (the directory is made, old files pruned)."""
    directory = log_directory()
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    path = directory / f"scalereg-{command}-{stamp}-{os.getpid()}.log"
    old = sorted(directory.glob("scalereg-*.log"), key=lambda p: p.stat().st_mtime)
    for stale in old[: max(0, len(old) - KEEP_LOG_FILES + 1)]:
        stale.unlink(missing_ok=True)
    return path


def log_to_file(path: Path, level: int = logging.INFO) -> Callable[[], None]:
    """Send the process's log records at ``level`` and up, and Python's warnings, to
    ``path`` (created on the first record); returns what undoes it."""
    handler = logging.FileHandler(path, delay=True, encoding="utf-8")
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    root_level = root.level
    root.addHandler(handler)
    if root.level > level or root.level == logging.NOTSET:
        root.setLevel(level)
    attached = [root]
    for name in ("prefect", "distributed"):  # loggers that may not pass records up to the root
        logger = logging.getLogger(name)
        if not logger.propagate:
            logger.addHandler(handler)
            attached.append(logger)
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.addHandler(handler)
    warnings_propagate, warnings_logger.propagate = warnings_logger.propagate, False  # into the file, not onto the terminal

    def undo() -> None:
        for logger in [*attached, warnings_logger]:
            logger.removeHandler(handler)
        warnings_logger.propagate = warnings_propagate
        logging.captureWarnings(False)
        root.setLevel(root_level)
        handler.close()

    return undo


class _OneLine(logging.Formatter):
    """Another formatter's output without exception text or stack, masked."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        plain = logging.makeLogRecord(record.__dict__)
        plain.exc_info = plain.exc_text = plain.stack_info = None
        return mask_secrets(self.inner.format(plain).splitlines()[0] if record.getMessage() else "")


# Loggers whose records the terminal of a command does not show (they go to its log file):
# Dask's own bookkeeping ("task cancelled", "worker closed") means nothing to a user.
QUIET_ON_CONSOLE = ("distributed",)


def _for_the_console(record: logging.LogRecord) -> bool:
    return record.levelno < logging.ERROR and not record.name.startswith(QUIET_ON_CONSOLE)


def one_line_console() -> Callable[[], None]:
    """Have every handler now installed that writes to the terminal print one line per
    record, without tracebacks, and leave errors to the command and Dask's records to
    the log file (idempotent); returns what undoes it."""
    changed: list[logging.Handler] = []
    for logger in [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]:
        for handler in getattr(logger, "handlers", []):
            if not _writes_to_terminal(handler) or isinstance(handler.formatter, _OneLine):
                continue
            handler.setFormatter(_OneLine(handler.formatter))
            handler.addFilter(_for_the_console)
            changed.append(handler)

    def undo() -> None:
        for handler in changed:
            if isinstance(handler.formatter, _OneLine):
                handler.setFormatter(handler.formatter.inner)
            handler.removeFilter(_for_the_console)

    return undo


def _writes_to_terminal(handler: logging.Handler) -> bool:
    if type(handler).__name__ == "PrefectConsoleHandler":
        return True
    if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
        return getattr(handler, "stream", None) in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    return False
