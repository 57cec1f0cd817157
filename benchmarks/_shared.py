"""What the benchmarks share: the upsampled sample mouse brain, running a command while
sampling the memory of its process tree, a Prefect server started before the timed
rows (as a deployment has one), and running a row in a child process of the script.

Scripts in benchmarks/ run as `python benchmarks/NAME.py`, so this module is found
next to them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GIB = 1024**3
SAMPLE_SPACING_UM = 50.0
SAMPLE_SECONDS = 0.1
SERVER_PORT = 4291


def _role(process, root_pid: int) -> str:
    if process.pid == root_pid:
        return "driver"
    try:
        command = " ".join(process.cmdline())
    except Exception:
        return "?"
    if "forkserver" in command:  # the fork server itself, or a pool worker it forked
        return "other" if process.ppid() == root_pid else "worker"
    for key, role in (("uvicorn", "prefect server"), ("prefect.server", "prefect server"), ("resource_tracker", "other")):
        if key in command:
            return role
    return "worker"  # dask workers (spawned) and process-pool workers


def measure(command: list[str], log: Path, env: dict[str, str]) -> dict:
    """Wall time, peak RSS of the process tree, of the driver and of the largest worker,
    and the CPU seconds each role used (user + system, last sample of each process)."""
    import psutil

    peaks: dict[int, int] = {}
    cpu: dict[int, float] = {}
    roles: dict[int, str] = {}
    tree_peak = 0
    start = time.perf_counter()
    with open(log, "w") as out:
        process = psutil.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        while True:
            finished = process.poll() is not None
            try:
                members = [process, *process.children(recursive=True)]
            except psutil.NoSuchProcess:
                members = []
            total = 0
            for member in members:
                try:
                    rss = member.memory_info().rss
                    times = member.cpu_times()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                roles.setdefault(member.pid, _role(member, process.pid))
                peaks[member.pid] = max(peaks.get(member.pid, 0), rss)
                cpu[member.pid] = times.user + times.system
                total += rss
            tree_peak = max(tree_peak, total)
            if finished:
                break
            time.sleep(SAMPLE_SECONDS)
    seconds = time.perf_counter() - start
    if process.returncode:
        raise SystemExit(f"benchmark row failed (exit {process.returncode}): {' '.join(command)}; see {log}")
    by_role = lambda role: max((p for pid, p in peaks.items() if roles[pid] == role), default=0)  # noqa: E731
    cpu_by_role: dict[str, float] = {}
    for pid, seconds_used in cpu.items():
        cpu_by_role[roles[pid]] = cpu_by_role.get(roles[pid], 0.0) + seconds_used
    return {
        "seconds": seconds, "tree_peak": tree_peak, "driver_peak": by_role("driver"), "worker_peak": by_role("worker"),
        "server_peak": by_role("prefect server"), "cpu": cpu_by_role,
    }  # fmt: skip


def start_server(workdir: Path, env: dict[str, str]) -> subprocess.Popen:
    """A Prefect server on loopback, as a deployment has one running (not timed)."""
    import urllib.request

    home = workdir / "prefect-home"
    home.mkdir(exist_ok=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(SERVER_PORT)],
        env={**env, "PREFECT_HOME": str(home)},
        stdout=open(workdir / "prefect-server.log", "w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{SERVER_PORT}/api/health", timeout=2)
            server.api_url = f"http://127.0.0.1:{SERVER_PORT}/api"  # type: ignore[attr-defined]
            return server
        except Exception:
            time.sleep(0.5)
    server.terminate()
    raise SystemExit(f"the Prefect server did not start; see {workdir / 'prefect-server.log'}")


def streamed_ncc(reference, other, slab: int = 128) -> tuple[float, float]:
    """NCC and largest absolute difference of two equally shaped arrays (zarr or
    numpy), read ``slab`` planes at a time."""
    import numpy as np

    sums = np.zeros(5)
    worst = 0.0
    for z in range(0, reference.shape[0], slab):
        a = reference[z : z + slab].astype(np.float64).ravel()
        b = other[z : z + slab].astype(np.float64).ravel()
        sums += [a.sum(), b.sum(), (a * a).sum(), (b * b).sum(), (a * b).sum()]
        worst = max(worst, float(np.abs(a - b).max()))
    n = reference.size
    cov = sums[4] / n - sums[0] * sums[1] / n**2
    var = (sums[2] / n - (sums[0] / n) ** 2) * (sums[3] / n - (sums[1] / n) ** 2)
    return float(cov / np.sqrt(var)), worst


def upsampled_sample_mouse(zoom: float):
    """The sample mouse brain (50 um) and the same brain upsampled ``zoom`` times per
    axis (trilinear, float32), with the upsampled spacing and the sample's record."""
    import numpy as np
    import tifffile
    from scipy import ndimage

    from scalereg.sample_data import fetch_sample_data

    mouse = fetch_sample_data(["mouse"])["mouse"]
    source = tifffile.imread(mouse.path).astype(np.float32)
    volume = ndimage.zoom(source, zoom, order=1, grid_mode=True, mode="nearest").astype(np.float32)
    spacing = [SAMPLE_SPACING_UM * n / m for n, m in zip(source.shape, volume.shape)]
    return source, volume, spacing, mouse


def child_row(arguments: list[str]) -> tuple[dict | None, str]:
    """Run ``python ARGUMENTS... WORKDIR`` (a fresh temporary directory, removed after):
    the JSON object its last stdout line holds, or None and its last stderr line."""
    workdir = tempfile.mkdtemp(prefix="scalereg-benchmark-")
    try:
        done = subprocess.run([sys.executable, *arguments, workdir], capture_output=True, text=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if done.returncode != 0:
        return None, (done.stderr.strip().splitlines() or ["?"])[-1]
    return json.loads(done.stdout.strip().splitlines()[-1]), ""
