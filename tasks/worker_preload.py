"""Imported by each Dask worker of a local cluster as it starts (the ``preload`` of
``infra/clusters/local.yaml``): what every block task needs -- Prefect's task engine,
zarr and the conversion core -- so that the first task a worker runs does not wait
seconds for these imports.  A run started from the CLI starts its cluster while
Prefect's temporary server comes up, so the imports happen on a core that would
otherwise wait.  ANTs is not among them: the first registration step imports it, on
the workers that run one (a conversion alone never needs its ~100 MB).

Log records are masked (`scalereg.logs.install_masking`), and a worker started by the
CLI prints to its terminal as the CLI does: warnings as single lines, no tracebacks.
Ctrl-C at the terminal is for the CLI, which stops the run and its cluster in order: a
worker ignores it (its nanny's SIGTERM still ends it)."""

import os
import signal
import threading

import prefect.task_engine  # noqa: F401
import zarr  # noqa: F401

import scalereg.convert.run_block  # noqa: F401
import scalereg.pyramid.stream_block  # noqa: F401
import tasks.convert  # noqa: F401
from pathlib import Path

from scalereg.logs import CONSOLE_VARIABLE, LOG_FILE_VARIABLE, install_masking, log_to_file, one_line_console

install_masking()
if os.environ.get(CONSOLE_VARIABLE) == "one-line":  # a worker of a CLI command: its terminal shows what the command's does
    one_line_console()
if os.environ.get(LOG_FILE_VARIABLE):  # and its records go to the command's log file
    log_to_file(Path(os.environ[LOG_FILE_VARIABLE]))
if threading.current_thread() is threading.main_thread():  # where a signal's handler can be set
    signal.signal(signal.SIGINT, signal.SIG_IGN)
