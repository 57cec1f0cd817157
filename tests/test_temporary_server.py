"""The CLI's temporary Prefect server (flows/temporary_server.py): it answers, it is
stopped, a port taken under it is chosen again, a server that cannot start is one line
naming why, and a CLI run on it leaves no process behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
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


def _processes_of(home: Path) -> dict[int, str]:
    """Processes started with PREFECT_HOME=home: pid -> command line."""
    found = {}
    for process in psutil.process_iter():
        try:
            if process.environ().get("PREFECT_HOME") == str(home):
                found[process.pid] = " ".join(process.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _without_server(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "PREFECT_PROFILE"))}  # no server configured
    env["PREFECT_HOME"] = str(home)
    return env


def test_a_cli_run_on_its_temporary_server_leaves_no_process_behind(tmp_path):
    zarr.save_array(str(tmp_path / "raw.zarr"), np.arange(32**3, dtype="uint16").reshape(32, 32, 32))
    home = tmp_path / "prefect-home"
    run = subprocess.Popen(
        [SCALEREG, "convert", str(tmp_path / "raw.zarr"), str(tmp_path / "out.ome.zarr"), "--spacing", "1", "1", "1"],
        env=_without_server(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    servers = set()
    while run.poll() is None:  # every server process the run starts, sampled until it ends
        servers |= {pid for pid, command in _processes_of(home).items() if "uvicorn" in command}
        time.sleep(0.05)
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-3000:]
    # one server: the one the CLI launched before importing Prefect is the one the flow ran on
    assert len(servers) == 1, servers
    assert (home / "prefect.db").exists()  # the run's records went to the profile's database, as Prefect's own server does
    assert not _processes_of(home)


def test_a_flow_command_refused_for_bad_input_stops_the_server_it_launched(tmp_path):
    home = tmp_path / "prefect-home"
    result = subprocess.run(
        [SCALEREG, "convert", str(tmp_path / "missing.nii.gz"), str(tmp_path / "out.ome.zarr"), "--spacing", "1", "1", "1"],
        env=_without_server(home), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.count("\n") == 1 and "missing.nii.gz" in result.stderr and "Traceback" not in result.stderr
    assert not _processes_of(home) and not (tmp_path / "out.ome.zarr").exists()


@pytest.mark.parametrize(
    "environment, files, names_one",
    [
        ({}, {}, False),
        ({"PREFECT_API_URL": "http://127.0.0.1:4200/api"}, {}, True),
        ({}, {"home/profiles.toml": 'active = "lab"\n[profiles.lab]\nPREFECT_API_URL = "http://10.0.0.5:4200/api"\n'}, True),
        ({}, {"home/profiles.toml": 'active = "lab"\n[profiles.lab]\nPREFECT_LOGGING_LEVEL = "DEBUG"\n'}, False),
        ({"PREFECT_PROFILE": "off"}, {"home/profiles.toml": '[profiles.off]\nPREFECT_SERVER_ALLOW_EPHEMERAL_MODE = "false"\n'}, True),
        ({"PREFECT_PROFILES_PATH": "{tmp}/elsewhere.toml"}, {"elsewhere.toml": '[profiles.ephemeral]\nPREFECT_API_URL = "http://h:1/api"\n'}, True),
        ({}, {"home/profiles.toml": "this is not = = toml"}, True),
        ({}, {"work/prefect.toml": '[api]\nurl = "http://h:1/api"\n'}, True),
        ({}, {"work/pyproject.toml": '[tool.prefect.api]\nurl = "http://h:1/api"\n'}, True),
        ({}, {"work/pyproject.toml": '[project]\nname = "lab"\n'}, False),
    ],
    ids=["nothing", "environment", "profile-url", "profile-other", "profile-no-ephemeral", "profiles-path", "bad-toml", "prefect-toml", "pyproject-prefect", "pyproject-other"],
)
def test_the_cli_launches_the_server_early_only_when_no_setting_may_name_one(tmp_path, monkeypatch, environment, files, names_one):
    from scalereg import cli

    for name in [k for k in os.environ if k.startswith(("PREFECT_API", "PREFECT_PROFILE", "PREFECT_SERVER_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    for name, value in environment.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "work").mkdir(exist_ok=True)
    monkeypatch.chdir(tmp_path / "work")
    assert cli._may_name_a_server() is names_one
