"""The CLI's temporary Prefect server (flows/temporary_server.py): it answers, it is
stopped, a port taken under it is chosen again, a server that cannot start is one line
naming why, and a CLI run on it leaves no process behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
import zarr

import flows.temporary_server as temporary_server
from flows.temporary_server import TemporaryServer, port_is_free
from scalereg.errors import InputError

pytestmark = pytest.mark.integration

SCALEREG = str(Path(sys.executable).parent / "scalereg")


def _health(server: TemporaryServer) -> int:
    with urllib.request.urlopen(f"{server.api_url}/health", timeout=5) as response:
        return response.status


def test_the_server_answers_until_stopped(tmp_path):
    server = TemporaryServer({"PREFECT_HOME": str(tmp_path / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    process = server.process
    server.wait()
    assert _health(server) == 200
    server.stop()
    assert process.poll() is not None and port_is_free(server.port)
    server.stop()  # again: nothing left to do


def test_a_port_taken_before_the_server_binds_it_is_chosen_again(tmp_path, monkeypatch):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports, free_port = iter([taken.getsockname()[1]]), temporary_server.free_port
        monkeypatch.setattr(temporary_server, "free_port", lambda: next(ports, None) or free_port())
        server = TemporaryServer({"PREFECT_HOME": str(tmp_path / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
        try:
            server.wait()
            assert server.attempts == 2 and server.port != taken.getsockname()[1] and _health(server) == 200
        finally:
            server.stop()


def test_a_server_that_cannot_start_is_one_line_naming_why(tmp_path):
    unusable = "sqlite+aiosqlite:////proc/scalereg-no-such-dir/prefect.db"
    server = TemporaryServer({"PREFECT_HOME": str(tmp_path / "home"), "PREFECT_API_DATABASE_CONNECTION_URL": unusable})
    with pytest.raises(InputError) as raised:
        server.wait()
    message = str(raised.value)
    assert message.startswith("Prefect's temporary server: exited with code ") and "unable to open database file" in message
    assert "\n" not in message and "PREFECT_API_URL" in message
    server.stop()


def test_a_cli_run_on_its_temporary_server_leaves_no_process_behind(tmp_path):
    zarr.save_array(str(tmp_path / "raw.zarr"), np.arange(32**3, dtype="uint16").reshape(32, 32, 32))
    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}  # no server configured
    env["PREFECT_HOME"] = str(home)
    result = subprocess.run(
        [SCALEREG, "convert", str(tmp_path / "raw.zarr"), str(tmp_path / "out.ome.zarr"), "--spacing", "1", "1", "1"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (home / "prefect.db").exists()  # the run's records went to the profile's database, as Prefect's own server does
    left = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("PREFECT_HOME") == str(home):
                left.append(" ".join(process.cmdline()))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    assert not left, left
