"""Ctrl-C at a terminal stops a run within seconds, in order: the terminal sends SIGINT to
its whole foreground process group; the command, its Dask workers and Prefect's
temporary server must all be gone soon after, the output marked incomplete, and the
same command again must resume it and finish with the bytes of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import command_session, phantom, session_processes
from scalereg.convert.run_block import PROGRESS_DIR

pytestmark = pytest.mark.integration

SCALEREG = str(Path(sys.executable).parent / "scalereg")
STOPPED_WITHIN = 10.0  # seconds from Ctrl-C to every process of the run gone


def _markers(output: Path) -> int:
    folder = output / PROGRESS_DIR / "level-0"
    return len(list(folder.iterdir())) if folder.exists() else 0


def _group_processes(group: int) -> list[int]:
    return session_processes(group, of=os.getpgid)


def _interrupt_like_a_terminal(process: subprocess.Popen, ready) -> tuple[float, int | None]:
    """Wait until ``ready()``, send SIGINT to the process's whole group (what Ctrl-C at
    a terminal does), and return how long until every process of the run was gone,
    and the session of the command it ran."""
    deadline = time.monotonic() + 240
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()[1][-3000:]
    session = command_session(process)
    assert session is not None, "the command runs in a child process of its own session"
    start = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=60)
    while (session_processes(session) or _group_processes(process.pid)) and time.monotonic() - start < 60:
        time.sleep(0.05)
    return time.monotonic() - start, session


def test_ctrl_c_stops_a_conversion_in_seconds_and_a_rerun_resumes_it(tmp_path):
    volume = phantom((192, 256, 256), "uint16")
    raw = tmp_path / "raw.zarr"
    zarr.create_array(str(raw), data=volume, chunks=(32, 64, 64))
    out = tmp_path / "brain.ome.zarr"
    command = [SCALEREG, "convert", str(raw), str(out), "--spacing", "2", "1", "1", "--chunks", "32", "--memory-budget", "4MiB"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}  # its own temporary server, as a user's
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    env["SCALEREG_LOG_DIR"] = str(tmp_path / "logs")
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seconds, session = _interrupt_like_a_terminal(process, lambda: _markers(out) >= 3)
    stderr = process.stderr.read()
    assert process.returncode == 130, stderr[-3000:]
    assert seconds < STOPPED_WITHIN, f"the run took {seconds:.1f} s to stop"
    assert not session_processes(session) and not _group_processes(process.pid), "processes of the run are still there"
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines == ["scalereg: interrupted; re-run the same command to resume"], stderr[-3000:]
    status = zarr.open_group(str(out), mode="r").attrs["scalereg"]["status"]
    assert status == "incomplete"
    assert not Path(f"{out}.lock").exists()  # released as the run stopped
    done = _markers(out)

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"wrote {out} (resume)" in again.stdout
    assert np.array_equal(zarr.open_array(str(out / "0"))[:], volume)
    from scalereg.omezarr import validate_pyramid

    assert validate_pyramid(str(out)) == []
    fresh = tmp_path / "fresh.ome.zarr"
    from scalereg.convert import convert_volume

    convert_volume(str(raw), str(fresh), spacing=(2, 1, 1), chunks=32, memory_budget="4MiB")
    ours = zarr.open_group(str(out), mode="r").attrs["scalereg"]["manifest"]["levels"]
    theirs = zarr.open_group(str(fresh), mode="r").attrs["scalereg"]["manifest"]["levels"]
    assert [level["checksum"] for level in ours] == [level["checksum"] for level in theirs]  # the bytes of a run never interrupted
    assert done >= 3


def test_ctrl_c_during_a_registration_step_stops_it_within_the_grace_period(mouse_pyramid, tmp_path):
    """ANTs runs a step in C++, where Python sees no interrupt until it returns: the
    command is killed when it has not stopped in time, and the transform directory is
    left unfinished (no manifest), resumable."""
    out = tmp_path / "transform"
    schedule = tmp_path / "slow.json"
    schedule.write_text(
        '{"steps": [{"spacing": 100, "transform": "syn", "metric": "cc", "metric_radius": 4, "iterations": [2000],'
        ' "shrink_factors": [1], "smoothing_sigmas": [0], "convergence_threshold": 1e-12}]}'
    )
    command = [SCALEREG, "register", "--fixed", str(mouse_pyramid), "--moving", str(mouse_pyramid), "--out", str(out), "--schedule", str(schedule)]
    env = {**os.environ, "SCALEREG_LOG_DIR": str(tmp_path / "logs")}
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    seconds, session = _interrupt_like_a_terminal(process, lambda: (out / "inputs_key").exists() and time.monotonic() - started > 8)
    stderr = process.stderr.read()
    assert process.returncode == 130, stderr[-3000:]
    assert seconds < STOPPED_WITHIN + 5, f"the run took {seconds:.1f} s to stop"
    assert not session_processes(session), "processes of the run are still there"
    assert "interrupted" in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert not (out / "manifest.json").exists()
