"""Prefect's temporary API server for one CLI run, started the moment the CLI knows it
needs one.

With no Prefect server configured, Prefect starts a temporary one for the first flow
run of a process (`prefect.server.api.server.SubprocessASGIServer`): a uvicorn
subprocess serving the API with the UI off and only the services an ephemeral server
runs, on the profile's database.  Doing it through that class costs the CLI about
1.5 s of its own CPU to import the server's application (FastAPI, SQLAlchemy, every
API route) before the subprocess is even launched, on a machine where the Dask workers
and the server's own imports want the same cores.  `TemporaryServer` launches the same
subprocess with the same settings without that import, and this process (and every
process it starts: the Dask workers) talks to it as to any configured server through
PREFECT_API_URL.  It is stopped when the process exits, after Prefect has sent its
last logs and events.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from scalereg.errors import InputError
from scalereg.processes import LAUNCH_DYING_WITH_PARENT

STARTUP_TIMEOUT = 120.0  # seconds; a cold first start migrates a new database
STARTUP_FAILURE = 3  # uvicorn's exit code when it cannot bind its port or its application fails to start
ATTEMPTS = 5
STOP_TIMEOUT = 5.0
SUBJECT = "Prefect's temporary server"
ADVICE = " (check the Prefect profile's settings, e.g. its database, or set PREFECT_API_URL to a running server)"


def free_port() -> int:
    """A loopback port nothing listens on now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether a server could bind ``port`` on loopback now, as uvicorn binds (with
    SO_REUSEADDR: a connection of a stopped server lingering in TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class TemporaryServer:
    """A Prefect API server in a subprocess on a free loopback port, launched on
    construction; `wait` until it answers, `stop` (also at exit) to end it.

    ``settings_environment`` is this process's Prefect settings as environment
    variables (what Prefect hands its own temporary server: a profile's database URL,
    PREFECT_HOME, ...)."""

    def __init__(self, settings_environment: dict[str, str]) -> None:
        # found without importing Prefect (1.3-1.8 s): the CLI launches this before that import
        spec = importlib.util.find_spec("prefect")
        assert spec is not None and spec.submodule_search_locations, "prefect is not installed"
        self._app_dir = str(Path(spec.submodule_search_locations[0]))
        self._environment = {
            **os.environ,
            **settings_environment,
            # as Prefect's own temporary server: no UI, the ephemeral server's services only
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
        }
        self._environment.pop("PREFECT_API_URL", None)
        self.attempts = 0
        # its output goes to a file, read when it fails (a pipe nobody reads would fill and block it)
        self._output = tempfile.TemporaryFile()
        self.process: subprocess.Popen[bytes] | None = None
        self._ready = False
        self._launch()
        atexit.register(self.stop)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _launch(self) -> None:
        self.attempts += 1
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                # ends with this process even when it is killed (a plain child would be left serving)
                sys.executable, "-c", LAUNCH_DYING_WITH_PARENT, str(os.getpid()), "-m", "uvicorn", "--app-dir", self._app_dir, "--factory", "prefect.server.api.server:create_app",
                "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error", "--lifespan", "on",
            ],
            env=self._environment,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            # a session of its own: Ctrl-C at the terminal reaches the CLI, which stops this server last
            start_new_session=True,
        )  # fmt: skip

    def wait(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Return once the API answers its health check; raise `InputError` with the
        server's own words if it exits or does not answer within ``timeout`` seconds.
        A port taken between choosing it and binding it is chosen again (the URL
        changes: read `api_url` after this)."""
        deadline = time.monotonic() + timeout
        while not self._ready:
            assert self.process is not None, "the server was stopped"
            code = self.process.poll()
            # uvicorn's startup failure: a port taken since it was chosen (then again on
            # another), or a server that cannot start (reported below)
            if code == STARTUP_FAILURE and not port_is_free(self.port) and self.attempts < ATTEMPTS:
                self._launch()
                continue
            if code is not None:
                raise InputError(SUBJECT, f"exited with code {code} as it started: {self._last_words()}{ADVICE}")
            if time.monotonic() > deadline:
                self.stop()
                raise InputError(SUBJECT, f"did not answer on {self.api_url} within {timeout:.0f} s{ADVICE}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    self._ready = response.status == 200
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if not self._ready:
                time.sleep(0.05)

    def _last_words(self) -> str:
        """The exception the server died of (its last line naming one), else its last line."""
        self._output.seek(0)
        lines = [line.strip() for line in self._output.read().decode(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
        return (errors or lines or ["no output"])[-1]

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after a few seconds); idempotent."""
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._output.close()
